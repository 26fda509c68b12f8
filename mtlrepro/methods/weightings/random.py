r"""Random loss weighting (Lin, Ye, Zhang & Tsang, TMLR 2022, "Reasonable effectiveness of random
weighting"); CoNAL's retraining objective (Eq. 3) and GatedMTL's "RDW" baseline."""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from mtlrepro.methods.weightings.base import WeightedSumWeighting

__all__ = ["RandomLossWeighting", "DISTRIBUTIONS", "SEED_OFFSET"]

#: the weight distributions offered (see :class:`RandomLossWeighting`)
DISTRIBUTIONS = ("normal", "uniform")
#: added to the run seed to seed RLW's own generator (a stream apart from the model's init draws)
SEED_OFFSET = 0x524C57  # "RLW"


class RandomLossWeighting(WeightedSumWeighting):
    r"""RLW: fresh random task weights at every training step (registered as ``rlw`` and ``rdw``).

    Every step (:meth:`start_step`, before the batch's forwards) draws new weights and the step
    backpropagates :math:`\sum_t \lambda_t L_t` (``task_weights`` = :math:`\lambda`,
    :math:`\lambda_t \ge 0`, :math:`\sum_t \lambda_t = 1`):

    * ``distribution="normal"`` (default): :math:`\lambda = \operatorname{softmax}(z)`,
      :math:`z \sim \mathcal N(0, I_T)` -- Lin et al.'s recommended RLW(Normal), and what LibMTL's
      ``weighting/RLW.py`` does (``F.softmax(torch.randn(task_num))``); GatedMTL cites Lin et al.
      for "RDW" without more detail, so this default is our reading of it.
    * ``distribution="uniform"``: :math:`u \sim U[0,1]^T`, :math:`\lambda = u / \sum_t u_t` --
      CoNAL's Eq. 3 as its text states it ("sampled ... from the uniform distribution over
      [0, 1] ... after normalizing to satisfy :math:`w_t \ge 0` and :math:`\sum_t w_t = 1`").
      Note that LibMTL's older ``dist='Uniform'`` option applied a softmax to the uniform draws
      instead (weights much closer to 1/T); a CoNAL recipe must choose and say which.

    Randomness: the draws come from the method's own CPU ``torch.Generator`` (so they are the
    same on every device and neither disturb nor depend on the model's random stream), seeded
    at construction with ``seed`` when given, otherwise with the **run seed** + ``SEED_OFFSET``:
    the run seed is read as ``torch.initial_seed()``, which the trainer has just set with
    ``torch.manual_seed(seed)`` before building the model and the weighting. The generator's
    state is in ``state_dict()`` (extra state), so a resumed run continues the same sequence.
    Draws are in float64 and copied to the device (a ``T``-element host-to-device copy per step).

    Separable: the weights are drawn before the batch's forwards, so the one-task-per-forward
    schemes apply task ``t``'s :math:`\lambda_t L_t` with the step's draw.

    Example::

        >>> import torch
        >>> w = RandomLossWeighting(3, seed=0)
        >>> p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
        >>> logs = w.backward(p * 1.0)
        >>> torch.equal(p.grad, logs["task_weights"]), round(float(logs["task_weights"].sum()), 6)
        (True, 1.0)
    """

    name: ClassVar[str] = "rlw"
    separable: ClassVar[bool] = True

    def __init__(self, n_tasks: int, distribution: str = "normal", seed: int | None = None, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"rlw: distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        self.distribution = distribution
        self.seed = None if seed is None else int(seed)
        self.stream_seed = (torch.initial_seed() + SEED_OFFSET if seed is None else int(seed)) % 2**64
        self._generator = torch.Generator(device="cpu").manual_seed(self.stream_seed)
        # the current step's weights (equal until the first draw); redrawn by every start_step
        self.register_buffer("weights", torch.full((self.n_tasks,), 1.0 / self.n_tasks), persistent=False)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self._generator.get_state(), "stream_seed": self.stream_seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self._generator.set_state(state["generator"].cpu())
        self.stream_seed = int(state.get("stream_seed", self.stream_seed))

    def draw(self) -> torch.Tensor:
        """The next weights from the generator, ``(T,)`` float64 on the CPU (advances the stream)."""
        if self.distribution == "normal":
            return torch.softmax(torch.randn(self.n_tasks, generator=self._generator, dtype=torch.float64), dim=0)
        u = torch.rand(self.n_tasks, generator=self._generator, dtype=torch.float64)
        return u / u.sum()

    def start_step(self) -> None:
        self.weights.copy_(self.draw())

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, distribution={self.distribution!r}, stream_seed={self.stream_seed}"
