"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mtlrepro.methods.gradients import task_gradients
from mtlrepro.methods.weightings.base import LossWeighting

__all__ = ["GradNorm", "last_shared_weights"]


def last_shared_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights ``W`` GradNorm measures gradient norms on.

    ``model.last_shared_layer()`` is a module; its ``weight`` is used when it has one (a conv /
    linear kernel, or a BatchNorm's scale), otherwise all of its parameters (the norm is then taken
    over their concatenation).
    """
    layer = model.last_shared_layer()
    if isinstance(layer, nn.Parameter):
        return [layer]
    weight = getattr(layer, "weight", None)
    if isinstance(weight, nn.Parameter) and weight.requires_grad:
        return [weight]
    params = [p for p in layer.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"last_shared_layer() {type(layer).__name__} has no trainable parameters")
    return params


class GradNorm(LossWeighting):
    r"""GradNorm: learn task weights that balance the tasks' gradient norms and training rates.

    With learnable weights :math:`w_t` (initialised to 1) and the weights :math:`W` of the last
    shared layer, every step:

    .. math::
        L = \sum_t w_t L_t, \qquad
        G_t = \lVert \nabla_W\, w_t L_t \rVert_2 = |w_t|\,\lVert \nabla_W L_t \rVert_2, \qquad
        \bar G = \tfrac1T \textstyle\sum_t G_t,

        \tilde L_t = L_t / L_t(0), \qquad r_t = \tilde L_t \big/ \tfrac1T \textstyle\sum_s \tilde L_s,
        \qquad L_\text{grad} = \sum_t \bigl| G_t - \operatorname{sg}\bigl[\bar G\, r_t^{\alpha}\bigr] \bigr|.

    * the model parameters receive :math:`\nabla L` (computed with the weights *before* this
      step's update);
    * the weights receive :math:`\nabla_w L_\text{grad}` only, and are stepped by the weighting's
      own Adam (``weight_lr``), then renormalised to :math:`\sum_t w_t = T`;
    * :math:`L_t(0)` are the losses of the first call to :meth:`backward` (kept in the
      ``initial_losses`` buffer, so a resumed run keeps them);
    * ``sg`` = stop-gradient: the target is a constant, as in the paper.

    Gradient norms: the per-task gradients :math:`\nabla_W L_t` come from the engine
    (:func:`~mtlrepro.methods.gradients.task_gradients`) in ONE batched
    ``torch.autograd.grad`` call (``is_grads_batched=True`` over the ``T`` one-hot
    ``grad_outputs``), falling back to a loop over tasks when some op has no batching rule
    (``batched=False`` forces the loop). Because :math:`G_t = |w_t|\,\lVert\nabla_W L_t\rVert`,
    the norms themselves are constants w.r.t. :math:`w`, so no double-backward graph
    (``create_graph=True``) is needed: :math:`\partial L_\text{grad}/\partial w_t =
    \operatorname{sign}(G_t - \text{target}_t)\operatorname{sign}(w_t)\lVert\nabla_W L_t\rVert`
    exactly as the ``create_graph=True`` formulation gives (the model parameters never receive
    :math:`L_\text{grad}`'s gradient). The tests check this against a naive
    ``create_graph=True`` loop.

    Options: ``alpha`` (default 0.5, ETR-NLP Table 4's "GradNorm (α = 0.5)"), ``weight_lr``
    (default 0.025, the learning rate the GradNorm paper's experiments use for the weights; some
    reimplementations reuse the model's learning rate instead -- pass it explicitly to match them),
    ``batched`` (default True), ``eps`` (guards ``L_t(0) = 0``).

    Example::

        >>> import torch
        >>> from torch import nn
        >>> class Toy(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.enc, self.heads = nn.Linear(3, 4), nn.ModuleList(nn.Linear(4, 1) for _ in range(2))
        ...     def encode(self, x): return self.enc(x)
        ...     def decode(self, z, t): return self.heads[t](z)
        ...     def last_shared_layer(self): return self.enc
        >>> _ = torch.manual_seed(0); model, gn = Toy(), GradNorm(2, alpha=0.5)
        >>> x = torch.randn(8, 3); z = model.encode(x)
        >>> losses = torch.stack([model.decode(z, t).pow(2).mean() for t in range(2)])
        >>> logs = gn.backward(losses, model)          # fills p.grad, steps the task weights
        >>> round(float(gn.task_weights.detach().sum()), 5)   # renormalised to T
        2.0
    """

    name: ClassVar[str] = "gradnorm"
    separable: ClassVar[bool] = False
    not_separable_because: ClassVar[str] = (
        "its weight update couples all tasks (every task's loss ratio and gradient norm on the last "
        "shared layer at the same parameters, from one joint forward)")

    def __init__(
        self,
        n_tasks: int,
        alpha: float = 0.5,
        weight_lr: float = 0.025,
        batched: bool = True,
        eps: float = 1e-12,
        **kwargs: Any,
    ):
        super().__init__(n_tasks, **kwargs)
        self.alpha = float(alpha)
        self.weight_lr = float(weight_lr)
        self.batched = bool(batched)
        self.eps = float(eps)
        self.task_weights = nn.Parameter(torch.ones(n_tasks))
        self.register_buffer("initial_losses", torch.ones(n_tasks))
        self._initialized = False
        self.last_used_batched: bool | None = None  # what the last call actually did (for tests/logs)
        self._optimizer = torch.optim.Adam([self.task_weights], lr=self.weight_lr)

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.task_weights]

    # The inner optimizer's state and the "initial losses recorded" flag travel in state_dict().
    def get_extra_state(self) -> dict[str, Any]:
        return {"initialized": self._initialized, "optimizer": self._optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._initialized = bool(state.get("initialized", False))
        if "optimizer" in state:
            self._optimizer.load_state_dict(state["optimizer"])

    def reset_initial_losses(self) -> None:
        """Record ``L_t(0)`` again on the next call (e.g. after a warm-up phase)."""
        self._initialized = False

    def task_gradient_norms(self, losses: torch.Tensor, model: nn.Module) -> torch.Tensor:
        """``||grad_W L_t||`` for every task, shape ``(T,)``, detached (graph retained)."""
        weights = last_shared_weights(model)
        grads, used = task_gradients(losses, weights, batched=self.batched)
        self.last_used_batched = used
        sq = sum(g.flatten(1).pow(2).sum(1) for g in grads)
        return sq.sqrt().detach()

    def backward(
        self, losses: torch.Tensor, model: nn.Module, z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        w = self.task_weights
        loss_values = losses.detach()
        if not self._initialized:
            self.initial_losses.copy_(loss_values.to(self.initial_losses))
            self._initialized = True

        # 1. per-task gradient norms on W (one batched autograd.grad call), graph kept for step 2.
        norms = self.task_gradient_norms(losses, model).to(w.dtype)

        # 2. GradNorm loss; its gradient reaches w only (norms and target are constants).
        G = w.abs() * norms
        with torch.no_grad():
            ratio = loss_values.to(w.dtype) / self.initial_losses.clamp_min(self.eps)
            rel_rate = ratio / ratio.mean().clamp_min(self.eps)
            target = G.mean() * rel_rate.pow(self.alpha)
        grad_loss = (G - target).abs().sum()
        (w_grad,) = torch.autograd.grad(grad_loss, w)

        # 3. model gradients of sum_t w_t L_t with the current weights.
        coeffs = w.detach().clone()
        total = (coeffs.to(losses.dtype) * losses).sum()
        total.backward()

        # 4. step the weights with their own optimizer, then renormalise to sum T.
        w.grad = w_grad
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            w.mul_(self.n_tasks / w.sum())

        return {
            "task_weights": coeffs,
            "total_loss": total.detach(),
            "gradnorm_loss": grad_loss.detach(),
            "grad_norms": G.detach(),
            "loss_ratios": ratio,
        }

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, alpha={self.alpha}, weight_lr={self.weight_lr}, "
                f"batched={self.batched}")
