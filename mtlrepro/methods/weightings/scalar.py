r"""Fixed scalarisation: hand-set task weights (GatedMTL's "MTL (Scalar)", Maninis et al. 2019)."""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, Sequence

import torch

from mtlrepro.methods.weightings.base import WeightedSumWeighting

__all__ = ["ScalarWeighting", "MANINIS_WEIGHTS", "maninis_weights"]

#: Loss weights of Maninis et al. (CVPR 2019, ASTMT) as the Vandenhende et al. code ships them
#: (``configs/pascal/*/multi_task_baseline.yml`` and ``configs/nyud/*``: ``loss_weights``), per
#: dataset and task name. GatedMTL (appendix, "The choice of ω_t") uses these for PASCAL-Context
#: and uniform weights for NYUD-v2 ("as suggested in Maninis et al. (2019); Vandenhende et al.").
MANINIS_WEIGHTS: dict[str, dict[str, float]] = {
    "pascal_context": {"semseg": 1.0, "human_parts": 2.0, "sal": 5.0, "edge": 50.0, "normals": 10.0},
    "nyud": {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0},
}


def maninis_weights(dataset: str, task_names: Sequence[str],
                    aliases: Mapping[str, str] | None = None) -> list[float]:
    """Maninis et al.'s weights for ``task_names`` in that order (the list a recipe passes as
    ``weighting_kwargs: {weights: [...]}``). ``aliases`` maps this project's task names to
    Vandenhende's (e.g. ``{"saliency": "sal"}``). Unknown datasets or tasks raise ``KeyError``."""
    if dataset not in MANINIS_WEIGHTS:
        raise KeyError(f"no Maninis et al. weights for dataset {dataset!r}; known: {sorted(MANINIS_WEIGHTS)}")
    table, aliases = MANINIS_WEIGHTS[dataset], dict(aliases or {})
    out = []
    for name in task_names:
        key = aliases.get(name, name)
        if key not in table:
            raise KeyError(f"no Maninis et al. weight for task {name!r} on {dataset!r}; known: {sorted(table)}")
        out.append(table[key])
    return out


class ScalarWeighting(WeightedSumWeighting):
    r"""Fixed scalarisation :math:`L = \sum_t \omega_t L_t` with weights set in the recipe
    (registered as ``scalar``).

    ``weights``: one non-negative finite number per task, in the task order of the recipe's task
    set; ``task_weights`` = :math:`\omega`. ``None`` (default) means :math:`\omega_t = 1` --
    uniform scalarisation, GatedMTL's "MTL (uniform)" and its NYUD-v2 choice. For GatedMTL's
    PASCAL-Context "MTL (Scalar)" row pass Maninis et al.'s weights,
    ``maninis_weights("pascal_context", task_names)`` = semseg 1, human parts 2, saliency 5,
    edge 50, normals 10 (see :data:`MANINIS_WEIGHTS` and ``/work/shared/REFERENCE.md``).

    Separable: task ``t``'s backward is on :math:`\omega_t L_t`.

    Example::

        >>> import torch
        >>> w = ScalarWeighting(2, weights=[1.0, 10.0])
        >>> p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> logs = w.backward(torch.stack([p.sum(), (p ** 2).sum()]))
        >>> p.grad                                   # 1 * (1, 1) + 10 * (2, 4)
        tensor([21., 41.])
    """

    name: ClassVar[str] = "scalar"
    separable: ClassVar[bool] = True

    def __init__(self, n_tasks: int, weights: Sequence[float] | None = None, **kwargs: Any):
        super().__init__(n_tasks, **kwargs)
        if weights is None:
            values = [1.0] * self.n_tasks
        else:
            values = [float(v) for v in weights]
            if len(values) != self.n_tasks:
                raise ValueError(f"scalar: {len(values)} weights for {self.n_tasks} tasks")
            bad = [v for v in values if not (math.isfinite(v) and v >= 0)]
            if bad:
                raise ValueError(f"scalar: weights must be finite and >= 0, got {bad}")
        self.weight_values = tuple(values)
        self.register_buffer("weights", torch.tensor(values), persistent=False)

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, weights={list(self.weight_values)}"
