"""Table 2 of ETR-NLP: every candidate layout of each conv alternative, counted and ranked.

The ``conv_alt`` scheme (:mod:`mtlrepro.models.sharing.conv_alternatives`) leaves open
hyper-parameters the paper does not print (LBConv's intermediate maps, the Shift layout, the
depth-wise depth, Ghost's ratio and kernel, stems and strides). :func:`search_table2_layouts`
builds every candidate of a small grid per alternative (:func:`_grid`), counts
``active_parameter_count(0)`` with the 8 CelebA groups (40 outputs) and fvcore MACs for one 64x64
image, and ranks them by distance to the printed #P / #F of the ``etr_nlp/table2`` registry
entry; the scheme's defaults are the result (the table of measured gaps is in the scheme's
docstring). It reads the registry, so it lives here and not in ``models/``. Nothing is fitted:
the counts are what the modules give.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

import torch

from mtlrepro.complexity import count
from mtlrepro.models import build_model
from mtlrepro.models.sharing.conv_alternatives import TABLE2_DEFAULTS, ConvAlternatives
from mtlrepro.tables import get_table

__all__ = ["search_table2_layouts", "TABLE2_METHODS"]

# Table 2 "method" -> conv_alt kwargs
TABLE2_METHODS: dict[str, dict[str, Any]] = {
    "conv": {"conv": "conv"},
    "lbconv": {"conv": "lbconv"},
    "shift": {"conv": "shift"},
    "depthwise_conv": {"conv": "depthwise"},
    "ghost": {"conv": "ghost"},
    "nlps": {"conv": "nlp"},
    "nlps_2x": {"conv": "nlp", "width_mult": 2},
}


def _grid(conv: str, backbone: str) -> list[dict]:
    """Candidate kwargs for one alternative (small: only what the counts can depend on).

    ResNet18 also varies ``replace_stem`` and ``stride_mode`` (VGG16 has neither a stem nor a
    strided conv); VGG16 also varies ``batch_norm`` (the paper does not say whether its VGG16
    has BN)."""
    if backbone == "resnet18":
        common = [{"replace_stem": r, "stride_mode": m} for r in (False, True)
                  for m in (("after", "in") if conv == "nlp" else ("in", "after"))]
    else:
        common = [{"batch_norm": b} for b in (False, True)]
    if conv == "conv":
        return [{}] if backbone == "resnet18" else common
    if conv == "lbconv":
        own = [{"lb_maps_of": of, "lb_maps": m} for of in ("out", "in") for m in (0.5, 1.0, 2.0)]
    elif conv == "shift":
        own = [{"shift_layout": "shift_conv"}] + [{"shift_layout": "csc", "shift_mid": m} for m in (0.5, 1.0)]
    elif conv == "depthwise":
        own = [{"dw_layers": n, "dw_multiplier": m} for n in (1, 2) for m in (1, 2)]
    elif conv == "ghost":
        own = [{"ghost_ratio": s, "ghost_kernel": k} for s in (2, 4) for k in (None, 1)]
    elif conv == "nlp":
        own = [{}]
    else:
        raise ValueError(conv)
    return [{**o, **c} for o in own for c in common]


def _published(cell) -> float:
    scale = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}[cell.suffix]
    return float(round(cell.value * scale, 3))  # 2.05 * 1e6 -> 2050000.0, not 2049999.99...


def _rounds_to(measured: float, cell) -> bool:
    scale = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}[cell.suffix]
    return round(measured / scale, cell.decimals) == round(cell.value, cell.decimals)


def search_table2_layouts(backbones: Sequence[str] = ("resnet18", "vgg16"),
                          methods: Sequence[str] | None = None,
                          out_dims: Sequence[int] = (9, 5, 9, 4, 2, 5, 2, 4),
                          input_size: int = 64, top: int | None = None,
                          grid: dict[str, list[dict]] | None = None) -> list[dict]:
    """Count every candidate layout of every Table 2 row and rank it against the print.

    For each row of ``etr_nlp/table2`` (method in :data:`TABLE2_METHODS`, backbone in
    ``backbones``) and each candidate kwargs of :func:`_grid` (or ``grid[conv]``), builds
    ``conv_alt`` with ``out_dims`` (default: the 8 CelebA groups, 40 outputs), counts
    ``active_parameter_count(0)`` and fvcore MACs for one ``3 x input_size x input_size`` image
    (:func:`mtlrepro.complexity.count`), and compares with the published ``params`` / ``flops``
    cells. Returns one dict per (row, candidate)::

        {"row", "backbone", "method", "kwargs", "params", "macs", "published_params",
         "published_macs", "gap_params", "gap_macs", "rel_params", "rel_macs",
         "params_as_printed", "macs_as_printed", "score", "rank", "is_default"}

    sorted by row (table order) then ``score = |log(params / pub)| + |log(macs / pub)|``; ``rank``
    0 is the nearest candidate of its row, ``is_default`` marks the scheme's defaults. ``top``
    keeps the ``top`` nearest per row. Nothing is fitted: the counts are what the modules give.
    """
    table = get_table("etr_nlp/table2")
    out: list[dict] = []
    for row in table.rows:
        backbone = row.attrs.get("backbone")
        if backbone not in backbones or row.method not in TABLE2_METHODS:
            continue
        if methods is not None and row.method not in methods:
            continue
        base = TABLE2_METHODS[row.method]
        conv = base["conv"]
        pub_p, pub_f = _published(row.cells["params"]), _published(row.cells["flops"])
        cands = (grid or {}).get(conv) or _grid(conv, backbone)
        rows = []
        for kw in cands:
            torch.manual_seed(0)
            model = build_model(backbone, "conv_alt", list(out_dims), **base, **kw)
            c = count(model, (3, input_size, input_size))
            p, f = model.active_parameter_count(0), c.flops
            rows.append({
                "row": row.key, "backbone": backbone, "method": row.method, "kwargs": dict(kw),
                "params": p, "macs": f, "published_params": pub_p, "published_macs": pub_f,
                "gap_params": p - pub_p, "gap_macs": f - pub_f,
                "rel_params": p / pub_p - 1.0, "rel_macs": f / pub_f - 1.0,
                "params_as_printed": _rounds_to(p, row.cells["params"]),
                "macs_as_printed": _rounds_to(f, row.cells["flops"]),
                "score": abs(math.log(p / pub_p)) + abs(math.log(f / pub_f)),
                "is_default": _is_default(backbone, conv, kw),
            })
        rows.sort(key=lambda r: r["score"])
        for i, r in enumerate(rows):
            r["rank"] = i
        out.extend(rows[:top] if top else rows)
    return out


_BACKBONE_DEFAULTS = {"batch_norm": False, "width_mult": 1, "track_running_stats": True}


def _is_default(backbone: str, conv: str, kw: dict) -> bool:
    """Whether candidate ``kw`` is what ``conv_alt`` builds with no kwargs but ``conv``."""
    sig = inspect.signature(ConvAlternatives.__init__).parameters
    defaults = TABLE2_DEFAULTS.get(backbone, TABLE2_DEFAULTS["*"])
    for k, v in kw.items():
        d = sig[k].default if k in sig else _BACKBONE_DEFAULTS.get(k)
        if d is None and k in defaults:
            d = defaults[k]
        if k == "stride_mode" and d is None:
            d = "after" if conv == "nlp" else "in"
        if v != d:
            return False
    return True
