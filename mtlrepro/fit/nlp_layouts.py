"""ETR-NLP's primitive layout: which (E, groups) gives the published 8.0M parameters.

The ETR-NLP paper prints the ETR-NLP ResNet18's size (Table 4: 8.0M for 8 and 40 CelebA tasks)
but not its primitive layout. The parameter count depends on the layout only through ``E`` (the
primitive outputs per input channel, :func:`~mtlrepro.models.primitives.prims_expansion`) and the
1x1 recombination's ``groups``; :func:`search_nlp_layouts` counts one model per distinct pair over
the candidates the paper's Sec. 5 summary allows and ranks them by distance to the print. The
``etr_nlp`` scheme's default primitives are its nearest layout
(:mod:`mtlrepro.models.sharing.etr_nlp`). It reads published numbers, so it lives here and not in
``models/``.
"""
from __future__ import annotations

from typing import Sequence

from mtlrepro.models import build_model
from mtlrepro.models.primitives import prims_expansion

__all__ = ["search_nlp_layouts"]


def _candidate_layouts() -> list[tuple[tuple[str, ...], int]]:
    """Layouts following the Sec. 5 summary: avg pools with large / mixed kernels, depth-wise
    binary 3x3 fixed convs (1-3 filters per channel), perturbation (1-2 masks per channel),
    optionally max pooling and shift (Table 1's other types); groups 1 or 2."""
    avg_sets = [("avg:k=9",), ("avg:k=5", "avg:k=9"), ("avg:k=3", "avg:k=5", "avg:k=7", "avg:k=9")]
    extras = [(), ("max:k=3",), ("shift",)]
    out = []
    for avg in avg_sets:
        for ce in (1, 2, 3):
            for ne in (1, 2):
                for extra in extras:
                    prims = avg + (f"conv:k=3,e={ce},sparsity=0.5", f"noise:level=0.1,e={ne}") + extra
                    for g in (1, 2):
                        out.append((prims, g))
    return out


def search_nlp_layouts(target: float = 8.0e6, out_dims: Sequence[int] = (9, 5, 9, 4, 2, 5, 2, 4),
                       gamma: float = 0.9, backbone: str = "resnet18", candidates=None,
                       task: int = 0, **kwargs) -> list[dict]:
    """Count ``active_parameter_count(task)`` of ETR-NLP for candidate primitive layouts.

    Returns one dict per candidate ``{"prims", "groups", "E", "ratio", "params", "gap"}`` sorted
    by ``|params - target|`` (``ratio`` = E / requested groups). The count depends on the layout
    only through ``(E, groups)``, so one model is built per distinct pair. Default target: the
    published ETR-NLP ResNet18 #P (Table 4: 8.0M, for 8 and 40 tasks).

    ``groups`` falls back to ``gcd(groups, C_in, C_out)`` per layer, so with ``gamma = 0.9`` a
    requested 2 only applies where the shared width is even (58 and 230 channels).

    Result with the defaults (8 groups, task 0; 40 attributes is 4,104 lower), nearest first::

        E  groups  params      gap
        6  1       7,885,449   -0.115M   <- chosen (avg5, avg9, conv3 x2, noise x2)
        7  2       8,210,761   +0.211M
        6  2       7,222,665   -0.777M
        7  1       8,984,009   +0.984M
        8  2       9,198,857   +1.199M
        5  1       6,786,889   -1.213M
    """
    cache: dict[tuple[int, int], int] = {}
    rows = []
    for prims, groups in (candidates or _candidate_layouts()):
        E = prims_expansion(prims)
        key = (E, groups)
        if key not in cache:
            model = build_model(backbone, "etr_nlp", list(out_dims), gamma=gamma, prims=prims,
                                groups=groups, **kwargs)
            cache[key] = model.active_parameter_count(task)
        n = cache[key]
        rows.append({"prims": tuple(prims), "groups": groups, "E": E, "ratio": E / groups,
                     "params": n, "gap": n - target})
    rows.sort(key=lambda r: (abs(r["gap"]), r["E"], r["groups"]))
    return rows
