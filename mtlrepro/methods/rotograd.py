r"""RotoGrad (Javaloy & Valera, "RotoGrad: Gradient Homogenization in Multitask Learning", ICLR 2022).

Needs a model whose head ``t`` reads a rotated representation :math:`r_t = R_t z` with a detached
:math:`R_t` (the sharing scheme ``rotograd``, :mod:`mtlrepro.models.sharing.rotograd`); it refuses
any other model. One step, with :math:`s_t = 1` (or :math:`1/L_t^0` with ``normalize_losses``):

1. **Heads**: head ``t`` receives :math:`\nabla s_t L_t` (its own task's gradient).
2. **Per-task gradients** w.r.t. the shared representation (one backward through each head):
   :math:`G_t = \partial (s_t L_t)/\partial z = R_t^\top \tilde G_t` with
   :math:`\tilde G_t = \partial (s_t L_t)/\partial r_t` (so :math:`\tilde G_t = R_t G_t`).
3. **Magnitudes** (the paper's homogenisation of the gradient magnitudes; the package's
   ``RotoGrad._rep_grad``), Frobenius norms over the whole batch tensor:

   .. math::
       \alpha_t = \frac{\lVert G_t\rVert / \lVert G_t^0\rVert}{\sum_k \lVert G_k\rVert / \lVert G_k^0\rVert},
       \qquad C = \sum_t \alpha_t \lVert G_t\rVert,
       \qquad \text{backbone} \leftarrow z.\mathrm{backward}\Bigl(C \sum_t G_t / \lVert G_t\rVert\Bigr).

   :math:`G^0` (and :math:`L^0`) are recorded at the first step and again at step
   ``burn_in_period`` (0-based; the package's counters). ``scale_gradients=False`` is the
   package's ``RotateOnly``: the backbone receives :math:`\sum_t G_t`.
4. **Rotations** (the package's ``RotateOnly._rep_grad``): the target
   :math:`V = \frac1T \sum_t G_t \lVert \bar G\rVert / \lVert G_t\rVert` (every task's gradient
   rescaled to the norm of their mean :math:`\bar G`, then averaged), and per task

   .. math::
       \mathcal L^t_{rot}(R_t) = \frac1B \sum_{n} \bigl\lVert R_t V_n - \tilde G_{t,n}\bigr\rVert^2
       = \text{const} - \frac2B \sum_n \langle R_t^\top \tilde G_{t,n}, V_n\rangle

   (:math:`n` runs over the batch; each :math:`V_n` is a ``C``-vector or a ``C x H x W`` map rotated
   pixel by pixel; constants are w.r.t. :math:`R_t`, which is orthogonal). This is the paper's
   :math:`-\sum_n\langle R_t^\top \tilde g_{n,t}, v_n\rangle` with :math:`v_n` built from the
   normalised :math:`U_t = G_t/\lVert G_t\rVert`, times the positive factor
   :math:`2\lVert\bar G\rVert/B`. Its gradient w.r.t. the rotation's parameter (through the
   exponential map) is stepped by the method's own optimizer; the model optimizer never sees
   the rotations (:meth:`RotoGrad.model_parameters_it_steps`). The rotations are stepped at
   their pre-step value's gradients, as the package's two optimizers are.

Options (defaults):

* ``rotation_lr`` (5e-5) and ``rotation_optimizer`` (``"adam"``; or ``"sgd"``): the paper asks
  for a rotation learning rate slower than the network's (Stackelberg game,
  :math:`\eta_{rot} = o(\eta)`), the package's README a smaller one; 5e-5 against the model's Adam 1e-4
  is what a public NYUv2 trainer of the ``rotograd`` package uses (``--method-params-lr``). CoNAL
  prints none of these: a documented choice.
* ``follow_lr_schedule`` (True): the rotation learning rate follows the model optimizer's
  schedule (``rotation_lr * lr_now / lr_initial`` of its first group), as one scheduler over the
  README's single optimizer, or that trainer's identical StepLR on both, does.
* ``burn_in_period`` (20, the package's default), ``normalize_losses`` (False, the package's
  default; True divides every loss by :math:`L_t^0` for the heads and the backbone alike, as the
  package does), ``scale_gradients`` (True: RotoGrad; False: RotateOnly), ``learn_rotations``
  (True; False keeps the rotations fixed), ``eps`` (1e-15, the package's clamp).
* No weight decay on the rotations (the method's optimizer has none; the model optimizer's
  would pull the skew generator, i.e. ``R_t``, back towards its initial value).

Logs: ``task_weights`` :math:`c_t = s_t C / \lVert G_t\rVert` (the shared parameters' update is
:math:`\sum_t c_t \nabla L_t`; the heads get :math:`s_t \nabla L_t`), ``total_loss``
:math:`\sum_t c_t L_t`, ``grad_norms`` :math:`\lVert G_t\rVert`, ``alpha``, ``rotation_loss``.
State (``state_dict``): :math:`L^0`, :math:`G^0`, the step counter and the rotation optimizer.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mtlrepro.methods.base import Weighting

__all__ = ["RotoGrad", "model_rotations"]

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def model_rotations(model: nn.Module | None, n_tasks: int) -> list[nn.Module]:
    """``model.rotations`` (one module per task with ``weight``, ``matrix()`` and ``rotate(x, R)``),
    or a ``TypeError`` saying which sharing scheme RotoGrad needs."""
    rotations = getattr(model, "rotations", None)
    ok = rotations is not None and len(rotations) == n_tasks and all(
        callable(getattr(r, "matrix", None)) and callable(getattr(r, "rotate", None))
        and isinstance(getattr(r, "weight", None), nn.Parameter) for r in rotations)
    if not ok:
        raise TypeError(f"weighting 'rotograd' needs a model with one rotation per task of its shared "
                        f"representation (sharing: rotograd); got {type(model).__name__}, which has "
                        f"{'no' if rotations is None else len(rotations)} rotations for {n_tasks} tasks")
    return list(rotations)


class RotoGrad(Weighting):
    """RotoGrad's backward: homogenised gradient magnitudes for the backbone, rotations stepped
    towards a common gradient direction (see the module docstring).

    Example::

        >>> import torch
        >>> from mtlrepro.models import build_model
        >>> _ = torch.manual_seed(0)
        >>> model = build_model("resnet18", "rotograd", [2, 3], width_mult=0.25)
        >>> rg = RotoGrad(2)
        >>> steps = rg.model_parameters_it_steps(model)   # the trainer leaves these to the method
        >>> z = model.encode(torch.randn(4, 3, 32, 32))
        >>> losses = torch.stack([model.decode(z, t).square().mean() for t in range(2)])
        >>> logs = rg.backward(losses, model, z)          # fills .grad, steps the rotations
        >>> sorted(logs)
        ['alpha', 'grad_norms', 'rotation_loss', 'task_weights', 'total_loss']
        >>> R = model.rotations[0].matrix().detach()
        >>> bool(torch.allclose(R.T @ R, torch.eye(128), atol=1e-5))
        True
    """

    name: ClassVar[str] = "rotograd"
    needs_representation: ClassVar[bool] = True
    separable: ClassVar[bool] = False
    not_separable_because: ClassVar[str] = (
        "it rescales and aligns every task's gradient w.r.t. the shared representation z of ONE "
        "forward for all tasks")

    def __init__(self, n_tasks: int, rotation_lr: float = 5e-5, rotation_optimizer: str = "adam",
                 burn_in_period: int = 20, normalize_losses: bool = False, scale_gradients: bool = True,
                 learn_rotations: bool = True, follow_lr_schedule: bool = True, eps: float = 1e-15,
                 **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        if rotation_optimizer not in OPTIMIZERS:
            raise ValueError(f"rotograd: rotation_optimizer must be one of {sorted(OPTIMIZERS)}, "
                             f"got {rotation_optimizer!r}")
        self.rotation_lr = float(rotation_lr)
        self.rotation_optimizer = rotation_optimizer
        self.burn_in_period = int(burn_in_period)
        self.normalize_losses = bool(normalize_losses)
        self.scale_gradients = bool(scale_gradients)
        self.learn_rotations = bool(learn_rotations)
        self.follow_lr_schedule = bool(follow_lr_schedule)
        self.eps = float(eps)
        self.register_buffer("initial_losses", torch.ones(n_tasks))
        self.register_buffer("initial_grad_norms", torch.ones(n_tasks))
        self.step_count = 0
        # plain attributes (not submodules): the rotations are the model's, saved with the model
        self._params: list[nn.Parameter] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending_optimizer_state: dict | None = None
        self._model_optimizer: torch.optim.Optimizer | None = None
        self._base_lr: float | None = None

    # ------------------------------------------------------------------ trainer hooks / state
    def _bind(self, model: nn.Module) -> list[nn.Module]:
        rotations = model_rotations(model, self.n_tasks)
        params = [r.weight for r in rotations]
        if [id(p) for p in params] != [id(p) for p in self._params]:
            self._params = params
            self._optimizer = OPTIMIZERS[self.rotation_optimizer](params, lr=self.rotation_lr)
            if self._pending_optimizer_state is not None:
                self._optimizer.load_state_dict(self._pending_optimizer_state)
                self._pending_optimizer_state = None
        return rotations

    def model_parameters_it_steps(self, model: nn.Module) -> list[nn.Parameter]:
        self._bind(model)
        return list(self._params)

    def bind_training(self, task_loss, optimizer: torch.optim.Optimizer | None = None) -> None:
        self._model_optimizer = optimizer
        if optimizer is not None and optimizer.param_groups:
            group = optimizer.param_groups[0]
            self._base_lr = float(group.get("initial_lr", group["lr"]))

    def get_extra_state(self) -> dict[str, Any]:
        opt = self._optimizer.state_dict() if self._optimizer is not None else self._pending_optimizer_state
        return {"step_count": self.step_count, "optimizer": opt}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.step_count = int(state.get("step_count", 0))
        opt = state.get("optimizer")
        if opt is None:
            return
        if self._optimizer is not None:
            self._optimizer.load_state_dict(opt)
        else:
            self._pending_optimizer_state = opt   # loaded when the model is bound

    def _rotation_lr_now(self) -> float:
        if not self.follow_lr_schedule or self._model_optimizer is None or not self._base_lr:
            return self.rotation_lr
        return self.rotation_lr * float(self._model_optimizer.param_groups[0]["lr"]) / self._base_lr

    # ------------------------------------------------------------------ the step
    def _head_gradients(self, losses: torch.Tensor, s: torch.Tensor, model: nn.Module, z: torch.Tensor,
                        rotations: list[nn.Module]) -> torch.Tensor:
        """Heads receive grad(s_t L_t); returns G = (T, *z.shape), G_t = d(s_t L_t)/dz."""
        rot_ids = {id(r.weight) for r in rotations}
        grads = []
        for t in range(self.n_tasks):
            params = [p for p in model.task_parameters(t) if p.requires_grad and id(p) not in rot_ids]
            out = torch.autograd.grad(losses[t] * s[t], [z, *params], retain_graph=True, allow_unused=True)
            grads.append(out[0] if out[0] is not None else torch.zeros_like(z))
            for p, g in zip(params, out[1:]):
                if g is not None:
                    p.grad = g.clone() if p.grad is None else p.grad.add_(g)
        return torch.stack(grads)

    def _rotation_step(self, G: torch.Tensor, norms: torch.Tensor, rotations: list[nn.Module]) -> torch.Tensor:
        """One step of every R_t on L_rot^t (module docstring, item 4); returns the losses (T,)."""
        T, B = G.shape[0], G.shape[1]
        shape = (T,) + (1,) * (G.dim() - 1)
        mean_norm = G.mean(0).norm()
        V = (G * (mean_norm / norms).view(shape)).mean(0)
        lr = self._rotation_lr_now()
        for group in self._optimizer.param_groups:
            group["lr"] = lr
        values = []
        with torch.autocast(G.device.type, enabled=False):           # the rotation maths in full precision
            for t, rot in enumerate(rotations):
                R = rot.matrix()
                g_rot = rot.rotate(G[t].to(R.dtype), R.detach())      # d(s_t L_t)/dr_t = R_t G_t
                loss = (rot.rotate(V.to(R.dtype), R) - g_rot).pow(2).sum() / B
                (rot.weight.grad,) = torch.autograd.grad(loss, rot.weight)
                values.append(loss.detach())
        self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        return torch.stack(values)

    def backward(self, losses: torch.Tensor, model: nn.Module | None = None, z: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        rotations = self._bind(model)
        if z is None or not z.requires_grad:
            raise ValueError("rotograd needs z: the shared representation (model.encode(x)) the heads "
                             "were applied to, attached to the graph")
        T = self.n_tasks
        record = self.step_count == 0 or self.step_count == self.burn_in_period
        if record:
            self.initial_losses.copy_(losses.detach().to(self.initial_losses))
        s = (1.0 / self.initial_losses.clamp_min(self.eps) if self.normalize_losses
             else torch.ones_like(self.initial_losses)).to(losses.dtype)

        G_raw = self._head_gradients(losses, s, model, z, rotations)
        G = G_raw.float() if G_raw.dtype in (torch.float16, torch.bfloat16) else G_raw
        norms = G.flatten(1).norm(dim=1).clamp_min(self.eps)
        if record:
            self.initial_grad_norms.copy_(norms.detach().to(self.initial_grad_norms))
        ratios = norms / self.initial_grad_norms.to(norms)
        alpha = ratios / ratios.sum().clamp_min(self.eps)
        C = (alpha * norms).sum()
        coef = C / norms if self.scale_gradients else torch.ones_like(norms)

        rotation_loss = torch.full((T,), float("nan"), dtype=G.dtype, device=G.device)
        if self.learn_rotations:
            rotation_loss = self._rotation_step(G.detach(), norms, rotations)
        update = (coef.view((T,) + (1,) * z.dim()) * G).sum(0)
        z.backward(update.to(z.dtype))
        self.step_count += 1

        c = (coef.to(losses.dtype) * s).detach()
        return {"task_weights": c, "total_loss": (c * losses.detach()).sum(),
                "grad_norms": norms.detach(), "alpha": alpha.detach(), "rotation_loss": rotation_loss}

    def extra_repr(self) -> str:
        return (f"n_tasks={self.n_tasks}, rotation_lr={self.rotation_lr}, rotation_optimizer="
                f"{self.rotation_optimizer!r}, burn_in_period={self.burn_in_period}, normalize_losses="
                f"{self.normalize_losses}, scale_gradients={self.scale_gradients}, "
                f"learn_rotations={self.learn_rotations}")
