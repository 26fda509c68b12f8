r"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, Sec. 3.3 "Dynamic Weight Average")."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from mtlrepro.methods.weightings.base import LossWeighting

__all__ = ["DynamicWeightAverage"]


class DynamicWeightAverage(LossWeighting):
    r"""DWA: per-epoch task weights from the rate at which each task's training loss falls.

    With :math:`\bar L_t(k)` the mean over epoch :math:`k`'s training steps of task ``t``'s
    (unweighted) loss, the weights of epoch :math:`k` (0-based) are

    .. math::
        r_t(k-1) = \frac{\bar L_t(k-1)}{\bar L_t(k-2)}, \qquad
        \lambda_t(k) = \frac{T \exp\bigl(r_t(k-1)/\tau\bigr)}{\sum_i \exp\bigl(r_i(k-1)/\tau\bigr)}
        \quad (k \ge 2), \qquad \lambda_t(0) = \lambda_t(1) = 1,

    and every step of epoch :math:`k` backpropagates :math:`\sum_t \lambda_t(k) L_t`
    (``task_weights`` = :math:`\lambda(k)`, summing to :math:`T`). This is Liu et al.'s Eq. 7
    ("w_k(t)", initialised to 1 for t = 1, 2) as the MTAN repository computes it
    (``im2im_pred/utils.py``: ``avg_cost[index - 1] / avg_cost[index - 2]`` of the per-batch
    loss values averaged over the epoch; weights 1 for ``index`` 0 and 1) and LibMTL's
    ``weighting/DWA.py`` (``train_loss_buffer`` of epoch means, ``if self.epoch > 1``).

    Hyper-parameters: ``temperature`` :math:`\tau` = 2 (Liu et al. 2019, "we set T = 2"; the
    MTAN and Auto-λ repositories' default ``T = 2.0``, LibMTL's ``--T`` default 2.0).

    How the epoch means are collected (the trainer only calls the epoch hooks): every
    :meth:`task_objective` / :meth:`objective` call adds the detached loss values to device-side
    running sums (no host sync); :meth:`on_epoch_end` turns them into the epoch's means and keeps
    the last two epochs in the ``loss_history`` buffer; :meth:`on_epoch_start` computes the epoch's
    weights. The history, the number of epochs recorded and the weights are in ``state_dict()``,
    so a run resumed at an epoch boundary uses the same weights. Separable: the weights are fixed
    for the whole epoch, so the one-task-per-forward schemes apply task ``t``'s
    :math:`\lambda_t L_t` (the loss recorded is then the one of task ``t``'s own forward).

    Example::

        >>> import torch
        >>> w = DynamicWeightAverage(2)
        >>> for epoch, (a, b) in enumerate([(4.0, 1.0), (2.0, 1.0), (1.0, 1.0)]):
        ...     w.on_epoch_start(epoch)
        ...     p = torch.nn.Parameter(torch.tensor([a, b]))
        ...     logs = w.backward(p * 1.0)
        ...     w.on_epoch_end(epoch)
        ...     print([round(v, 4) for v in logs["task_weights"].tolist()])
        [1.0, 1.0]
        [1.0, 1.0]
        [0.8756, 1.1244]
    """

    name: ClassVar[str] = "dwa"
    separable: ClassVar[bool] = True

    def __init__(self, n_tasks: int, temperature: float = 2.0, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        self.temperature = float(temperature)
        if not self.temperature > 0:
            raise ValueError(f"dwa: temperature must be > 0, got {temperature}")
        self.register_buffer("weights", torch.ones(self.n_tasks))
        #: rows: mean training losses of epochs k-2 and k-1 (valid rows: ``epochs_recorded``)
        self.register_buffer("loss_history", torch.ones(2, self.n_tasks))
        self.epochs_recorded = 0
        self._sums: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None

    # ------------------------------------------------------------------ state (resumable)
    def get_extra_state(self) -> dict[str, Any]:
        return {"epochs_recorded": self.epochs_recorded}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.epochs_recorded = int(state.get("epochs_recorded", 0))

    # ------------------------------------------------------------------ epoch hooks
    def on_epoch_start(self, epoch: int) -> None:
        self._sums = self._counts = None
        if self.epochs_recorded < 2:
            self.weights.fill_(1.0)
            return
        with torch.no_grad():
            ratio = self.loss_history[1] / self.loss_history[0].clamp_min(torch.finfo(self.loss_history.dtype).tiny)
            self.weights.copy_(self.n_tasks * torch.softmax(ratio / self.temperature, dim=0))

    def on_epoch_end(self, epoch: int) -> None:
        if self._sums is None:
            return  # no training step in this epoch: nothing to record
        with torch.no_grad():
            means = (self._sums / self._counts.clamp_min(1)).to(self.loss_history)
            self.loss_history[0].copy_(self.loss_history[1])
            self.loss_history[1].copy_(means)
        self.epochs_recorded += 1
        self._sums = self._counts = None

    def epoch_mean_losses(self) -> torch.Tensor | None:
        """The running mean of this epoch's task losses so far, ``(T,)`` (None before any step)."""
        return None if self._sums is None else self._sums / self._counts.clamp_min(1)

    # ------------------------------------------------------------------ the objective
    def _record(self, values: torch.Tensor, index: int | None = None) -> None:
        if self._sums is None:
            acc = torch.float32 if values.device.type == "mps" else torch.float64
            self._sums = torch.zeros(self.n_tasks, dtype=acc, device=values.device)
            self._counts = torch.zeros(self.n_tasks, dtype=acc, device=values.device)
        v = values.detach().to(self._sums.dtype)
        if index is None:
            self._sums += v
            self._counts += 1
        else:
            self._sums[index] += v
            self._counts[index] += 1

    def task_objective(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        self._record(loss, t)
        return self.weights[t].to(loss.dtype) * loss

    def objective(self, losses: torch.Tensor) -> torch.Tensor:
        self._record(losses)
        return (self.weights.to(losses.dtype) * losses).sum()

    def current_task_weights(self, like: torch.Tensor) -> torch.Tensor:
        return self.weights.detach().to(dtype=like.dtype, device=like.device).clone()

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, temperature={self.temperature}"
