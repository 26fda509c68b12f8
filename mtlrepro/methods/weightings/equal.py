"""Equal weighting: the plain sum of the task losses (hard sharing's usual objective)."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from mtlrepro.methods.weightings.base import LossWeighting

__all__ = ["EqualWeighting"]


class EqualWeighting(LossWeighting):
    r"""Fixed, equal task weights (registered as ``equal`` and ``hard_sharing``).

    .. math::  L = \sum_{t=1}^{T} L_t \quad(\texttt{reduction="sum"}, \text{default}),
               \qquad L = \tfrac{1}{T}\sum_t L_t \quad(\texttt{reduction="mean"}).

    ``"sum"`` is the hard-sharing baseline of ETR-NLP Table 4; ``"mean"`` only rescales the
    gradient (equivalent to a learning rate divided by ``T`` for SGD; for Adam it differs only
    through ``eps``) and is offered for recipes that state the mean (e.g. Sener & Koltun's CelebA
    baseline config uses scales of 1/40). Separable: with one task per forward, task ``t``'s
    backward is on :math:`c\,L_t`, :math:`c \in \{1, 1/T\}`.

    Example::

        >>> import torch
        >>> w = EqualWeighting(2)
        >>> p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> logs = w.backward(torch.stack([p.sum(), (p ** 2).sum()]), model=None)
        >>> p.grad
        tensor([3., 5.])
        >>> logs["task_weights"]
        tensor([1., 1.])
    """

    name: ClassVar[str] = "equal"
    separable: ClassVar[bool] = True

    def __init__(self, n_tasks: int, reduction: str = "sum", **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        if reduction not in ("sum", "mean"):
            raise ValueError(f"equal: reduction must be 'sum' or 'mean', got {reduction!r}")
        self.reduction = reduction
        self.coefficient = 1.0 if reduction == "sum" else 1.0 / self.n_tasks

    def task_objective(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.reduction == "sum" else loss * self.coefficient

    def objective(self, losses: torch.Tensor) -> torch.Tensor:
        return losses.sum() * self.coefficient

    def current_task_weights(self, like: torch.Tensor) -> torch.Tensor:
        return torch.full((self.n_tasks,), self.coefficient, dtype=like.dtype, device=like.device)

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, reduction={self.reduction!r}"
