r"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018): learned homoscedastic task noise."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mtlrepro.methods.weightings.base import LossWeighting

__all__ = ["UncertaintyWeighting"]


class UncertaintyWeighting(LossWeighting):
    r"""Uncertainty weighting (registered as ``uw`` and ``uncertainty``; CoNAL "UW", GatedMTL
    "Uncertainty").

    Each task has a learnable log-variance :math:`s_t = \log\sigma_t^2`; the objective is

    .. math::
        F(L, s) = \sum_t f_t(L_t), \qquad
        f_t(L_t) = \tfrac12 e^{-s_t} L_t + \tfrac12 s_t
                 \;=\; \frac{L_t}{2\sigma_t^2} + \log\sigma_t ,

    Kendall et al.'s Eq. 7 (the regression form) written in :math:`s_t` for numerical stability
    (their Sec. 3.2). The model's update is :math:`\sum_t c_t \nabla L_t` with
    ``task_weights`` :math:`c_t = \tfrac12 e^{-s_t}`; the log-variances receive
    :math:`\partial F/\partial s_t = \tfrac12 - \tfrac12 e^{-s_t} L_t`, which vanishes at
    :math:`s_t = \log L_t` (the weight :math:`c_t = 1/(2L_t)` then equalises the tasks' scaled
    losses).

    The log-variances are ``nn.Parameter`` s of this module and are trained by the **model's
    optimizer** (:meth:`parameters_for_model_optimizer`), with its learning rate and weight
    decay, as in LibMTL (``weighting/UW.py``: ``loss_scale`` is a parameter of the model) and
    the MTAN repository (``logsigma`` is a model parameter).

    Hyper-parameters:

    * ``init`` = -0.5: the initial :math:`s_t` of LibMTL's ``UW.py`` (the code CoNAL's
      baselines run) and of the MTAN repository (``im2im_pred/model_segnet_*.py``). The
      Auto-λ repository's dense trainer uses -0.7; pass ``init=-0.7`` to match it.
    * The same form (factor 1/2 on both terms) is used by LibMTL, MTAN and Auto-λ; Kendall's
      classification form :math:`e^{-s}L + s/2` differs by the factor on :math:`L` and is not
      offered.

    Separable: with one task per forward, task ``t``'s backward is on :math:`f_t(L_t)`, which
    gives both the model's and :math:`s_t`'s gradients.

    Example::

        >>> import torch
        >>> w = UncertaintyWeighting(2, init=0.0)
        >>> p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> logs = w.backward(torch.stack([p.sum(), (p ** 2).sum()]))   # L = (3, 5)
        >>> p.grad                                   # 0.5 * grad L_1 + 0.5 * grad L_2
        tensor([1.5000, 2.5000])
        >>> w.log_variances.grad                     # 1/2 - L_t / 2
        tensor([-1., -2.])
        >>> logs["task_weights"]
        tensor([0.5000, 0.5000])
    """

    name: ClassVar[str] = "uw"
    separable: ClassVar[bool] = True

    def __init__(self, n_tasks: int, init: float = -0.5, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        self.init = float(init)
        self.log_variances = nn.Parameter(torch.full((self.n_tasks,), self.init))

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.log_variances]

    def parameters_for_model_optimizer(self) -> list[nn.Parameter]:
        return [self.log_variances]

    def task_objective(self, t: int, loss: torch.Tensor) -> torch.Tensor:
        s = self.log_variances[t]
        return 0.5 * torch.exp(-s) * loss + 0.5 * s

    def objective(self, losses: torch.Tensor) -> torch.Tensor:
        s = self.log_variances
        return (0.5 * torch.exp(-s) * losses + 0.5 * s).sum()

    def current_task_weights(self, like: torch.Tensor) -> torch.Tensor:
        return (0.5 * torch.exp(-self.log_variances.detach())).to(dtype=like.dtype, device=like.device)

    def backward(
        self, losses: torch.Tensor, model: nn.Module | None = None, z: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        logs = super().backward(losses, model, z)
        logs["log_variances"] = self.log_variances.detach().clone()
        return logs

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, init={self.init}"
