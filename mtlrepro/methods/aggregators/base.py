r"""Gradient aggregators: a ``T x D`` Jacobian of the task losses in, one update out.

An :class:`Aggregator` takes :math:`J_{t,:} = \operatorname{vec}(\partial L_t/\partial x)` from the
per-task-gradient engine (:func:`~mtlrepro.methods.gradients.task_jacobian`), where ``x`` is

* ``jacobian_of = "shared_parameters"`` (default): all trainable ``model.shared_parameters()``
  (MGDA, PCGrad, CAGrad, ...; ``needs_shared_jacobian``), or
* ``jacobian_of = "representation"``: the shared representation ``z = model.encode(x)`` the
  heads were applied to (MGDA-UB; ``needs_representation``),

and returns one update. A new aggregator implements ONE pure method:

* :meth:`Aggregator.coefficients` ``(J, losses) -> (c, extra_logs)`` when the update is a
  combination :math:`\sum_t c_t J_{t,:}` (MGDA, PCGrad, CAGrad, GradVac, Nash-MTL, IMTL-G all
  are: torchjd writes them as weightings of the Gramian); :meth:`Aggregator.aggregate` is then
  ``c @ J`` and ``task_weights = c``;
* or, with ``linear = False``, :meth:`Aggregator.aggregate` ``(J, losses) -> update (D,)`` itself
  (``task_weights`` are then NaN: no such coefficients exist; ``total_loss`` is
  :math:`\sum_t L_t`).

:meth:`Aggregator.backward` applies the update (:func:`~mtlrepro.methods.gradients.write_update`):
the shared inputs receive it; the task-specific parameters receive their own task's gradient
scaled by ``s_t``: ``task_gradient_scale = "own"`` (``s_t = 1``; torchjd's ``mtl_backward`` and
LibMTL) or ``"weights"`` (``s_t = c_t``: the backward of :math:`\sum_t c_t L_t`, Sener & Koltun's
MGDA-UB; with a representation Jacobian this is ONE ordinary backward, no update is formed).
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from mtlrepro.methods.base import Weighting
from mtlrepro.methods.gradients import task_jacobian, write_update

__all__ = ["Aggregator"]

JACOBIAN_OF = ("shared_parameters", "representation")
TASK_GRADIENT_SCALES = ("own", "weights")


class Aggregator(Weighting):
    """Base of the gradient aggregators (see the module docstring).

    Option ``batched`` (default True): the per-task gradients in one batched ``autograd.grad``
    call; False forces ``T`` calls. ``last_used_batched`` records what the last step did.
    """

    jacobian_of: ClassVar[str] = "shared_parameters"
    needs_shared_jacobian: ClassVar[bool] = True  # both derived from jacobian_of in subclasses
    needs_representation: ClassVar[bool] = False
    task_gradient_scale: ClassVar[str] = "own"
    linear: ClassVar[bool] = True
    not_separable_because: ClassVar[str] = (
        "it aggregates every task's gradient taken at the same point, i.e. all tasks on one joint forward")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.jacobian_of not in JACOBIAN_OF:
            raise TypeError(f"{cls.__name__}.jacobian_of must be one of {JACOBIAN_OF}, got {cls.jacobian_of!r}")
        if cls.task_gradient_scale not in TASK_GRADIENT_SCALES:
            raise TypeError(f"{cls.__name__}.task_gradient_scale must be one of {TASK_GRADIENT_SCALES}")
        if cls.task_gradient_scale == "weights" and not cls.linear:
            raise TypeError(f"{cls.__name__}: task_gradient_scale='weights' needs a linear aggregator")
        cls.needs_representation = cls.jacobian_of == "representation"
        cls.needs_shared_jacobian = cls.jacobian_of == "shared_parameters"

    def __init__(self, n_tasks: int, batched: bool = True, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        self.batched = bool(batched)
        self.last_used_batched: bool | None = None

    # ------------------------------------------------------------------ what a method implements
    def coefficients(self, J: torch.Tensor, losses: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(c, extra_logs)``: the ``(T,)`` coefficients of the update ``c @ J`` for the detached
        Jacobian ``J`` ``(T, D)`` and detached ``losses`` (methods that do not use them accept None)."""
        raise NotImplementedError

    def aggregate(self, J: torch.Tensor, losses: torch.Tensor | None = None) -> torch.Tensor:
        """The update ``(D,)`` for the Jacobian ``J`` ``(T, D)``: ``coefficients(J) @ J``. Pure."""
        c, _ = self.coefficients(J, losses)
        return c.to(J.dtype) @ J

    # ------------------------------------------------------------------ the shared engine
    def jacobian_inputs(self, model: nn.Module | None, z: torch.Tensor | None) -> list[torch.Tensor]:
        """``[z]`` or the model's trainable shared parameters."""
        if self.jacobian_of == "representation":
            if z is None or not z.requires_grad:
                raise ValueError(f"{self.name} needs z: the shared representation (model.encode(x)) "
                                 f"the heads were applied to, attached to the graph")
            return [z]
        if model is None or not hasattr(model, "shared_parameters"):
            raise ValueError(f"{self.name} needs a model with shared_parameters()")
        params = [p for p in model.shared_parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{self.name}: the model has no trainable shared parameters")
        return params

    def jacobian(self, losses: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The detached ``(T, D)`` Jacobian of ``losses`` w.r.t. ``inputs`` (graph retained)."""
        J, used = task_jacobian(losses, inputs, batched=self.batched)
        self.last_used_batched = used
        return J

    def backward(
        self, losses: torch.Tensor, model: nn.Module | None = None, z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        self._check_losses(losses)
        inputs = self.jacobian_inputs(model, z)
        J = self.jacobian(losses, inputs)
        if not self.linear:
            write_update(model, losses, inputs, self.aggregate(J, losses.detach()))
            nan = torch.full((self.n_tasks,), float("nan"), dtype=losses.dtype, device=losses.device)
            return {"task_weights": nan, "total_loss": losses.detach().sum()}
        c, extra = self.coefficients(J, losses.detach())
        c = c.to(losses.dtype)
        if self.jacobian_of == "representation" and self.task_gradient_scale == "weights":
            total = (c * losses).sum()
            total.backward()  # = z.backward(c @ J) plus c_t * grad L_t into the heads, one pass
        else:
            write_update(model, losses, inputs, c.to(J.dtype) @ J,
                         task_scale=c if self.task_gradient_scale == "weights" else None)
            total = (c * losses.detach()).sum()
        return {"task_weights": c.detach(), "total_loss": total.detach(), **extra}
