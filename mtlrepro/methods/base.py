"""The ``Weighting`` contract shared by every multi-task method, and the ``WEIGHTINGS`` registry.

A method turns this batch's task losses into gradients on the model; the trainer then steps its
optimizer. There are two families, split by what they need (as torchjd splits them):

* **loss weightings** (:class:`~mtlrepro.methods.weightings.base.LossWeighting`: equal, GradNorm;
  later fixed scalarisation, uncertainty, DWA, RLW, Auto-λ) choose coefficients ``c_t`` and
  backpropagate ``sum_t c_t L_t`` (plus their own terms);
* **gradient aggregators** (:class:`~mtlrepro.methods.aggregators.base.Aggregator`: MGDA-UB;
  later MGDA, PCGrad, CAGrad, ...) take the ``T x D`` Jacobian of the task losses w.r.t. the
  shared parameters (or the shared representation ``z``) from the one per-task-gradient engine
  (:mod:`mtlrepro.methods.gradients`) and turn it into one update.

Contract (the trainer and the update schemes rely on it)::

    logs = weighting.backward(losses, model, z=z)   # fills p.grad; the trainer zeroed it before
    optimizer.step()

* ``losses``: 1-D tensor ``(T,)``, attached to the autograd graph. ``backward`` *accumulates*
  into ``p.grad`` like ``loss.backward()``; auxiliary gradients (per-task gradients, norms) are
  taken with ``torch.autograd.grad`` and never touch ``p.grad``.
* ``logs``: detached tensors, no ``.item()`` (no host sync on the hot path). Always
  ``"task_weights"`` ``(T,)`` (the ``c_t`` such that the model's update is ``sum_t c_t grad L_t``;
  NaN for an aggregator whose update is not such a combination) and ``"total_loss"`` (scalar).
* What a method needs, as class attributes (read before any model is built):
  ``needs_representation`` (the joint step passes ``z = model.encode(x)``, the tensor the heads
  were applied to), ``needs_shared_jacobian`` (every task's gradient w.r.t. all shared parameters
  at one point), ``needs_validation_batches`` (the trainer calls :meth:`bind_validation`), and
  ``separable`` (the objective is ``sum_t f_t(L_t)`` with every ``f_t`` fixed before the batch's
  forwards, so a scheme with one task per forward can apply it task by task; see
  :mod:`mtlrepro.train.steps` for the table of update scheme x weighting pairs).
* Epoch hooks :meth:`on_epoch_start` / :meth:`on_epoch_end` (the trainer calls them around each
  training epoch; no-ops by default).
* Own state is ``nn.Parameter`` / buffers / ``get_extra_state`` of the module, so it is in
  ``state_dict()`` and checkpoints. :meth:`extra_parameters` lists all the method's parameters;
  :meth:`parameters_for_model_optimizer` the subset the trainer must add to the model's optimizer
  (e.g. uncertainty weighting's log-variances); the rest the method steps itself (GradNorm).
* Unknown constructor options raise ``TypeError`` naming the method (a recipe typo fails loudly).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from mtlrepro.registry import Registry

__all__ = ["WEIGHTINGS", "Weighting", "MTLModelLike", "ValidationBatch"]

#: name -> Weighting subclass; the names and their lazy "module:attr" targets are listed in
#: ``mtlrepro/methods/__init__.py`` (the modules themselves do not register).
WEIGHTINGS: Registry[type["Weighting"]] = Registry("weighting")

#: ``() -> (x, targets)``: the next validation batch (Auto-λ-style methods).
ValidationBatch = Callable[[], tuple[torch.Tensor, list[torch.Tensor]]]


@runtime_checkable
class MTLModelLike(Protocol):
    """The part of ``MTLModel`` (hard-sharing family) that weightings use."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor, t: int) -> torch.Tensor: ...
    def shared_parameters(self) -> list[nn.Parameter]: ...
    def last_shared_layer(self) -> nn.Module: ...
    def task_parameters(self, t: int) -> list[nn.Parameter]: ...


class Weighting(nn.Module):
    """Base class: combine ``T`` task losses into the model's gradients (see the module docstring).

    Subclasses set ``name`` and the ``needs_*`` / ``separable`` attributes and implement
    :meth:`backward` (the two family bases implement it generically).
    """

    name: ClassVar[str] = "base"
    needs_representation: ClassVar[bool] = False
    needs_shared_jacobian: ClassVar[bool] = False
    needs_validation_batches: ClassVar[bool] = False
    separable: ClassVar[bool] = False
    #: why the method is not separable, for the error of a one-task-per-forward update scheme
    not_separable_because: ClassVar[str] = "it combines the task losses of one forward pass"

    def __init__(self, n_tasks: int, **kwargs: Any):
        super().__init__()
        if kwargs:
            raise TypeError(f"weighting {self.name!r} got unknown option(s): {', '.join(sorted(kwargs))}")
        if int(n_tasks) < 1:
            raise ValueError(f"n_tasks must be >= 1, got {n_tasks}")
        self.n_tasks = int(n_tasks)
        self._next_validation_batch: ValidationBatch | None = None

    def backward(
        self, losses: torch.Tensor, model: nn.Module | None = None, z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # ------------------------------------------------------------------ trainer hooks
    def on_epoch_start(self, epoch: int) -> None:
        """Called before training epoch ``epoch`` (0-based). No-op by default."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after training epoch ``epoch`` (0-based), before evaluation. No-op by default."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """All parameters owned by the method (in ``state_dict``; none of them is the model's)."""
        return []

    def parameters_for_model_optimizer(self) -> list[nn.Parameter]:
        """The method's parameters the trainer adds to the model's optimizer (default: none; the
        others, e.g. GradNorm's task weights, are stepped by the method itself)."""
        return []

    def before_step(self, model: nn.Module) -> None:
        """Called by the ``joint`` step before the batch's forward pass (CoNAL's architecture step
        on a validation batch). No-op by default."""

    def bind_schedule(self, epochs: int, steps_per_epoch: int) -> None:
        """Called by the trainer once with the run's length (BMTAS's warm-up and temperature
        schedule depend on it). No-op by default."""

    def bind_batch(self, x: torch.Tensor, targets: list[torch.Tensor]) -> None:
        """Called by the ``joint`` step with the batch right before :meth:`backward` (TAG's look-ahead
        evaluates the losses again on it). No-op by default."""

    def model_parameters_it_steps(self, model: nn.Module) -> list[nn.Parameter]:
        """Parameters of ``model`` that the method steps with its own optimizer (RotoGrad's
        rotations); the trainer leaves them out of the model's optimizer. Called once, after the
        model is built and before that optimizer exists. Default: none."""
        return []

    def bind_training(self, task_loss, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Called by the trainer once the model's optimizer exists: the problem's per-task loss
        ``task_loss(t, output, target)`` and that optimizer, for methods that take virtual steps
        (Auto-λ). No-op by default."""

    def bind_validation(self, next_batch: ValidationBatch) -> None:
        """Give a ``needs_validation_batches`` method its source of validation batches."""
        self._next_validation_batch = next_batch

    def validation_batch(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The next validation batch; raises when the trainer did not :meth:`bind_validation`."""
        if self._next_validation_batch is None:
            raise RuntimeError(f"weighting {self.name!r} needs validation batches: the trainer must "
                               f"call bind_validation(next_batch) before training")
        return self._next_validation_batch()

    # ------------------------------------------------------------------ helpers for subclasses
    def _check_losses(self, losses: torch.Tensor) -> None:
        if losses.dim() != 1 or losses.shape[0] != self.n_tasks:
            raise ValueError(
                f"{self.name}: expected losses of shape ({self.n_tasks},), got {tuple(losses.shape)}"
            )
        if not losses.requires_grad:
            raise ValueError(f"{self.name}: losses must be attached to the autograd graph")

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}"
