r"""The one per-task-gradient engine: every method that needs the tasks' separate gradients uses it.

* :func:`task_gradients` -- :math:`\partial L_t/\partial x_i` for all tasks ``t`` and inputs ``x_i``
  (parameters or activations such as the shared representation ``z``), stacked on a leading
  task dim: ONE ``torch.autograd.grad`` call with the ``T`` one-hot ``grad_outputs``
  (``is_grads_batched=True``, a vmap over the backward pass), or ``T`` calls when some op in
  the graph has no batching rule (or ``batched=False``).
* :func:`task_jacobian` -- the same, flattened and concatenated: the ``T x D`` Jacobian
  :math:`J_{t,:} = \operatorname{vec}(\partial L_t/\partial x)` an aggregator works on.
* :func:`write_update` -- apply an aggregated update: the shared inputs receive it (into
  ``.grad`` for parameters, backpropagated for a representation ``z``), every other trainable
  parameter of the model (the task-specific ones) receives
  :math:`\nabla \sum_t s_t L_t`, i.e. its own task's gradient scaled by ``s_t``.

The graph is always retained by the first two (the caller's final backward reuses it); no graph is
built for the gradients themselves. Inputs the losses do not depend on get zero gradients.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["task_gradients", "task_jacobian", "private_parameters", "write_update"]


def task_gradients(
    losses: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    *,
    batched: bool = True,
) -> tuple[list[torch.Tensor], bool]:
    """Per-task gradients ``d losses[t] / d inputs`` for every ``t``, stacked on a leading dim.

    Returns ``([g_1, ..., g_k], used_batched)`` where ``g_i`` has shape ``(T, *inputs[i].shape)``
    and ``used_batched`` says whether the single batched call worked (a ``RuntimeError`` /
    ``NotImplementedError`` from a missing batching rule falls back to the loop).
    """
    inputs = list(inputs)
    T = losses.shape[0]
    if batched:
        eye = torch.eye(T, dtype=losses.dtype, device=losses.device)
        try:
            grads = torch.autograd.grad(
                losses, inputs, grad_outputs=eye, retain_graph=True,
                is_grads_batched=True, allow_unused=True,
            )
            return [
                g if g is not None else torch.zeros((T, *x.shape), dtype=x.dtype, device=x.device)
                for g, x in zip(grads, inputs)
            ], True
        except (RuntimeError, NotImplementedError):
            pass  # no batching rule for some op: use the loop below
    per_task: list[list[torch.Tensor]] = [[] for _ in inputs]
    for t in range(T):
        grads = torch.autograd.grad(losses[t], inputs, retain_graph=True, allow_unused=True)
        for i, (g, x) in enumerate(zip(grads, inputs)):
            per_task[i].append(g if g is not None else torch.zeros_like(x))
    return [torch.stack(gs) for gs in per_task], False


def task_jacobian(
    losses: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    *,
    batched: bool = True,
) -> tuple[torch.Tensor, bool]:
    """The ``T x D`` Jacobian (``D = sum_i inputs[i].numel()``, inputs in order, each flattened
    row-major), detached; and whether the batched call was used. See :func:`task_gradients`."""
    grads, used = task_gradients(losses, inputs, batched=batched)
    T = losses.shape[0]
    flat = [g.reshape(T, -1) for g in grads]
    J = flat[0] if len(flat) == 1 else torch.cat(flat, dim=1)
    return J.detach(), used


def private_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The trainable parameters of ``model`` that are not in ``model.shared_parameters()``."""
    shared = {id(p) for p in model.shared_parameters()}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in shared]


def _accumulate(p: torch.Tensor, g: torch.Tensor) -> None:
    g = g.reshape(p.shape).to(p.dtype)
    if p.grad is None:
        p.grad = g.clone(memory_format=torch.contiguous_format)
    else:
        p.grad.add_(g)


def write_update(
    model: nn.Module,
    losses: torch.Tensor,
    shared: Sequence[torch.Tensor],
    update: torch.Tensor,
    task_scale: torch.Tensor | None = None,
) -> None:
    r"""Give the model the gradients of an aggregated update, accumulating like ``backward``.

    ``shared``: the inputs the Jacobian was taken w.r.t. -- ``model.shared_parameters()`` (then
    ``update`` of length ``sum numel`` is split into their ``.grad``) or ``[z]``, the shared
    representation (then ``z.backward(update)`` carries it into the encoder's parameters).
    The model's :func:`private_parameters` receive :math:`\nabla \sum_t s_t L_t` with
    ``s = task_scale`` (default all ones: each task's own gradient, torchjd's and LibMTL's
    convention). The forward graph is consumed.
    """
    shared = list(shared)
    private = private_parameters(model)
    T = losses.shape[0]
    s = torch.ones(T, dtype=losses.dtype, device=losses.device) if task_scale is None else task_scale
    if private:
        head_total = (s.detach().to(losses.dtype) * losses).sum()
        grads = torch.autograd.grad(head_total, private, retain_graph=True, allow_unused=True)
        for p, g in zip(private, grads):
            if g is not None:
                _accumulate(p, g)
    sizes = [x.numel() for x in shared]
    if sum(sizes) != update.numel():
        raise ValueError(f"update has {update.numel()} elements, the shared inputs {sum(sizes)}")
    pieces = update.split(sizes)
    params = [x for x in shared if isinstance(x, nn.Parameter) or x.is_leaf]
    if len(params) == len(shared):
        for p, g in zip(shared, pieces):
            _accumulate(p, g)
    else:
        torch.autograd.backward(shared, [g.reshape(x.shape).to(x.dtype) for g, x in zip(pieces, shared)])
