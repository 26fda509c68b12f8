r"""Auto-λ (Liu, James, Davison & Johns, TMLR 2022): task weights meta-learned on held-out batches."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn
from torch.func import functional_call

from mtlrepro.methods.gradients import task_gradients
from mtlrepro.methods.weightings.base import LossWeighting

__all__ = ["AutoLambda", "HYPERGRADIENTS"]

#: how :math:`J\,d` is computed (see :class:`AutoLambda`)
HYPERGRADIENTS = ("double_backward", "jacobian")

TaskLoss = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


class AutoLambda(LossWeighting):
    r"""Auto-λ: learn the task weights :math:`\lambda` by a one-step-unrolled bilevel update
    (registered as ``auto_lambda``).

    Every training step, with training losses :math:`L_t(\theta)` of the batch, a validation
    batch, the model optimizer's learning rate :math:`\alpha` and weight decay :math:`\mu`:

    .. math::
        g_t &= \nabla_\theta L_t(\theta), \qquad
        \theta' = \theta - \alpha\Bigl(\textstyle\sum_t \lambda_t g_t + \mu\,\theta + m\Bigr)
        \quad\text{(virtual step)},

        d &= \nabla_{\theta'} \textstyle\sum_{t \in P} L^\text{val}_t(\theta'), \qquad
        \frac{\partial}{\partial\lambda_t} \sum_{t \in P} L^\text{val}_t(\theta') = -\alpha\,\langle g_t, d\rangle ,

        \lambda &\leftarrow \operatorname{Adam}_{\eta}\bigl(\lambda, -\alpha\, J d\bigr), \qquad
        \text{model} \leftarrow \nabla_\theta \textstyle\sum_t \lambda_t L_t(\theta)
        \text{ with the updated } \lambda ,

    where :math:`m` is the SGD momentum buffer times the momentum (0 for Adam), :math:`P` the
    primary tasks and :math:`J` the ``T x D`` Jacobian of the training losses. This is the
    official code (``lorenmt/auto-lambda``, ``auto_lambda.py``: ``virtual_step`` and
    ``unrolled_backward``; ``trainer_dense.py`` for the order: meta step first, then the model's
    step on the same training batch with the new weights). The weights are not normalised or
    clipped (as in the official code).

    "First-order": only one virtual step is unrolled and :math:`\partial\theta'/\partial\lambda_t
    = -\alpha g_t` is exact, because :math:`\lambda` enters the inner gradient linearly -- so
    no Hessian is involved. (DARTS' "first-order" variant, which drops the unrolled step, would
    give a zero gradient for loss weights.) The official code approximates
    :math:`\langle g_t, d\rangle` by a central finite difference of the training losses at
    :math:`\theta \pm \epsilon d`, :math:`\epsilon = 0.01/\lVert d\rVert` (its
    ``compute_hessian``); here it is computed exactly, as ``hypergradient``:

    * ``"double_backward"`` (default): :math:`J d = \nabla_v \langle \nabla_\theta \sum_t v_t
      L_t, d\rangle` at :math:`v = \lambda` (the first gradient is taken with
      ``create_graph=True``); cost independent of ``T``;
    * ``"jacobian"``: the ``T`` per-task gradients from the engine
      (:func:`~mtlrepro.methods.gradients.task_gradients`), then :math:`J d`; memory ``T x D``.

    The tests compare both with a finite-difference derivative of :math:`\lambda \mapsto
    L^\text{val}(\theta'(\lambda))` and with a hand-derived one-step case.

    Hyper-parameters (defaults from the official repository):

    * ``init`` = 0.1: ``--autol_init`` default (all weights start at 0.1);
    * ``meta_lr`` = 1e-4: ``--autol_lr``, the README's value for NYUv2 (3e-5 for CityScapes,
      3e-4 in ``trainer_cifar.py``); the meta optimizer is Adam (torch defaults otherwise);
    * ``virtual_lr`` = None: :math:`\alpha` is the model optimizer's current learning rate
      (official: ``scheduler.get_last_lr()[0]``), read from the optimizer given to
      :meth:`bind_training`, as are the weight decay and the SGD momentum buffers (official:
      ``param_groups[0]``); a number overrides the learning rate (without a bound optimizer it
      is required, and :math:`\mu = m = 0`);
    * ``primary_tasks`` = None: every task is primary (the multi-task setting, ``--task all``);
      a list of task indices gives the auxiliary-learning setting.

    Validation data: the batches come from :meth:`bind_validation`. **The official code draws
    them from the training set** -- a second, independently shuffled loader over ``train_set``
    ("a copy of train_loader with different data order, used for Auto-Lambda meta-update",
    ``trainer_dense.py``; the same in ``trainer_cifar.py``) -- not from a held-out split.
    (LibMTL's re-implementation also splits training batches, and parameterises
    :math:`\lambda` by a softmax; that variant is not this one.)

    The trainer must also bind the problem's task loss and the model optimizer
    (:meth:`bind_training`). The validation forward is ``model(x)`` at :math:`\theta'` through
    :func:`torch.func.functional_call`, with copies of the model's buffers (BatchNorm running
    statistics of the real model are not updated by validation batches; the official code's
    virtual model is a separate copy too). Not separable: the update needs every task's loss at
    the same parameters and a whole-model virtual step.

    Example::

        >>> import torch
        >>> from torch import nn
        >>> class Toy(nn.Module):                      # two tasks predict the same scalar theta
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.theta = nn.Parameter(torch.tensor([1.0]))
        ...     def forward(self, x): return [self.theta, self.theta]
        >>> loss = lambda t, out, y: 0.5 * ((out - y) ** 2).sum()
        >>> model, w = Toy(), AutoLambda(2, init=0.1, meta_lr=0.01, virtual_lr=0.1)
        >>> w.bind_training(loss)
        >>> w.bind_validation(lambda: (None, [torch.tensor([2.0]), torch.tensor([2.0])]))
        >>> train = [torch.tensor([0.0]), torch.tensor([3.0])]
        >>> losses = torch.stack([loss(t, o, y) for t, (o, y) in enumerate(zip(model(None), train))])
        >>> logs = w.backward(losses, model)
        >>> [round(v, 4) for v in logs["hypergradient"].tolist()]    # -0.1 * g_t * d
        [0.198, -0.396]
        >>> [round(v, 4) for v in logs["task_weights"].tolist()]     # one Adam step of 0.01
        [0.09, 0.11]
    """

    name: ClassVar[str] = "auto_lambda"
    separable: ClassVar[bool] = False
    needs_validation_batches: ClassVar[bool] = True
    not_separable_because: ClassVar[str] = (
        "its weight update needs every task's training loss at the same parameters (one joint "
        "forward), a virtual step of the whole model and a validation forward")

    def __init__(
        self,
        n_tasks: int,
        init: float = 0.1,
        meta_lr: float = 1e-4,
        virtual_lr: float | None = None,
        primary_tasks: Sequence[int] | None = None,
        hypergradient: str = "double_backward",
        **kwargs: Any,
    ):
        super().__init__(n_tasks, **kwargs)
        if hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"auto_lambda: hypergradient must be one of {HYPERGRADIENTS}, got {hypergradient!r}")
        self.init = float(init)
        self.meta_lr = float(meta_lr)
        self.virtual_lr = None if virtual_lr is None else float(virtual_lr)
        self.hypergradient = hypergradient
        primary = list(range(self.n_tasks)) if primary_tasks is None else [int(t) for t in primary_tasks]
        if not primary or any(not 0 <= t < self.n_tasks for t in primary):
            raise ValueError(f"auto_lambda: primary_tasks must be task indices in [0, {self.n_tasks}), "
                             f"got {primary_tasks}")
        self.primary_tasks = tuple(sorted(set(primary)))
        mask = torch.zeros(self.n_tasks)
        mask[list(self.primary_tasks)] = 1.0
        self.register_buffer("primary_mask", mask, persistent=False)
        self.task_weights = nn.Parameter(torch.full((self.n_tasks,), self.init))
        self._optimizer = torch.optim.Adam([self.task_weights], lr=self.meta_lr)
        self._task_loss: TaskLoss | None = None
        self._model_optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ wiring and state
    def bind_training(self, task_loss: TaskLoss, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Give the method the problem's ``task_loss(t, output, target)`` (for the validation
        losses) and the model optimizer (learning rate, weight decay, momentum of the virtual
        step)."""
        self._task_loss = task_loss
        self._model_optimizer = optimizer

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.task_weights]

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self._optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if "optimizer" in state:
            self._optimizer.load_state_dict(state["optimizer"])

    # ------------------------------------------------------------------ the update
    def _virtual_settings(self, params: Sequence[nn.Parameter]) -> list[tuple[float, float, torch.Tensor | None]]:
        """Per parameter: (learning rate, weight decay, momentum term or None) of the virtual step."""
        opt = self._model_optimizer
        if opt is None:
            if self.virtual_lr is None:
                raise RuntimeError("auto_lambda: no model optimizer bound (bind_training(task_loss, optimizer)) "
                                   "and no virtual_lr given: the virtual step has no learning rate")
            return [(self.virtual_lr, 0.0, None)] * len(params)
        group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
        out = []
        for p in params:
            g = group_of.get(id(p), opt.param_groups[0])
            lr = self.virtual_lr if self.virtual_lr is not None else float(g["lr"])
            m = None
            if float(g.get("momentum", 0.0) or 0.0) > 0:
                buf = opt.state.get(p, {}).get("momentum_buffer")
                m = None if buf is None else buf * float(g["momentum"])
            out.append((lr, float(g.get("weight_decay", 0.0) or 0.0), m))
        return out

    def backward(
        self, losses: torch.Tensor, model: nn.Module | None = None, z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        if model is None:
            raise ValueError("auto_lambda: backward needs the model (virtual step and validation forward)")
        if self._task_loss is None:
            raise RuntimeError("auto_lambda needs the problem's task loss: the trainer must call "
                               "bind_training(problem.task_loss, optimizer) before training")
        x_val, y_val = self.validation_batch()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        names, params = [n for n, _ in named], [p for _, p in named]
        settings = self._virtual_settings(params)
        lam = self.task_weights.detach().clone().to(losses.dtype)  # this step's weights (a copy)
        exact = self.hypergradient == "double_backward"

        # 1. gradients of the weighted training loss (with a graph to lambda for J d, or per task)
        if exact:
            v = lam.clone().requires_grad_(True)
            grads = list(torch.autograd.grad((v * losses).sum(), params, retain_graph=True,
                                             create_graph=True, allow_unused=True))
            per_task = None
        else:
            per_task, _ = task_gradients(losses, params)
            grads = [torch.tensordot(lam.to(G.dtype), G, dims=1) for G in per_task]

        # 2. virtual step theta' = theta - lr * (grad + wd * theta + momentum term)
        virtual: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for n, p, g, (lr, wd, m) in zip(names, params, grads, settings):
                step = torch.zeros_like(p) if g is None else g.detach().clone()
                if wd:
                    step += wd * p
                if m is not None:
                    step += m
                virtual[n] = (p - lr * step).requires_grad_(True)

        # 3. validation losses at theta' and d = their gradient
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        outs = functional_call(model, {**buffers, **virtual}, (x_val,))
        val_losses = torch.stack([self._task_loss(t, outs[t], y_val[t]) for t in range(self.n_tasks)])
        meta_objective = (self.primary_mask.to(val_losses.dtype) * val_losses).sum()
        d = torch.autograd.grad(meta_objective, list(virtual.values()), allow_unused=True)
        scaled = [None if di is None else lr * di for di, (lr, _, _) in zip(d, settings)]  # alpha * d

        # 4. hypergradient dL_val/dlambda_t = -<g_t, alpha d>
        if exact:
            terms = [(g * s).sum() for g, s in zip(grads, scaled) if g is not None and s is not None]
            inner = torch.stack(terms).sum() if terms else None
            if inner is not None and inner.requires_grad:
                jd = torch.autograd.grad(inner, v, retain_graph=True, allow_unused=True)[0]
            else:
                jd = None
            jd = torch.zeros_like(lam) if jd is None else jd
            del terms, inner, v                      # free the double-backward graph now
        else:
            jd = torch.zeros_like(lam)
            for G, s in zip(per_task, scaled):
                if s is not None:
                    jd = jd + G.reshape(self.n_tasks, -1).to(lam.dtype) @ s.reshape(-1).to(lam.dtype)
        hyper = -jd.detach()
        del grads, per_task, virtual, outs, d, scaled

        # 5. meta step on lambda, then the model's gradients with the updated weights
        self.task_weights.grad = hyper.to(self.task_weights.dtype)
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        coeffs = self.task_weights.detach().clone()
        total = (coeffs.to(losses.dtype) * losses).sum()
        total.backward()
        return {"task_weights": coeffs, "total_loss": total.detach(), "hypergradient": hyper,
                "validation_losses": val_losses.detach()}

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, init={self.init}, meta_lr={self.meta_lr}, "
                f"virtual_lr={self.virtual_lr}, primary_tasks={list(self.primary_tasks)}, "
                f"hypergradient={self.hypergradient!r}")
