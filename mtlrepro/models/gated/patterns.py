"""Gates as data: what a trained GatedMTL model stores in its run record, and Figure 3's patterns.

``export_gating(model)`` -> ``{"units": [...], "tasks": T}``; per gated unit (forward order):
``index`` / ``role`` / ``channels`` (the gate's width: a conv unit's input channels, a ViT layer's
outputs), ``gates`` (per task a string of ``0`` / ``1``, one per channel: 1 = the task's own
feature, Eq. 2 / 7-9) and ``mix`` (per task the mean of
``softmax_t(beta)`` over channels). :func:`apply_gating` sets a model's gates back from it (a model
rebuilt at another input size for counting: pruning needs the gates only).

Figure 3 / 4's two quantities per task and layer (Sec. 4.3.2):

* ``selected``: the share of channels where the task picks its own feature (``mean_c G_t``);
* ``max_contribution``: the share of channels for which the task has the largest mix weight
  ``softmax_t(beta)`` ("proportions of maximum contributions to the shared branch"; a tie of ``k``
  tasks counts ``1/k`` for each).
"""
from __future__ import annotations

import torch

__all__ = ["export_gating", "apply_gating", "gating_patterns", "GATE_LOGIT"]

#: the alpha written back for a stored gate: sigmoid(+-4) = 0.982 / 0.018, far from the threshold
GATE_LOGIT = 4.0


def _units_with_gates(model):
    return [u for u in model.gated_units() if u.mix is not None]


def export_gating(model) -> dict:
    units = []
    with torch.no_grad():
        for u in _units_with_gates(model):
            g = u.mix.gates().to(torch.int64).cpu()
            w = u.mix.mix_weights().float().cpu()
            top = (w == w.max(dim=0, keepdim=True).values).float()
            top = top / top.sum(dim=0, keepdim=True)       # ties (e.g. beta at its init 0) split evenly
            units.append({
                "index": int(u.spec.index), "role": u.spec.role, "channels": int(u.mix.channels),
                "gates": ["".join("1" if v else "0" for v in row.tolist()) for row in g],
                "mix": [round(float(v), 6) for v in w.mean(dim=1)],
                "max_contribution": [round(float(top[t].mean()), 6) for t in range(model.n_tasks)],
            })
    return {"tasks": model.n_tasks, "units": units}


def apply_gating(model, gating: dict) -> None:
    """Set ``model``'s gates to the stored ones (``alpha = +-GATE_LOGIT``); beta is left as is (it
    changes values, not which channels exist)."""
    units = _units_with_gates(model)
    stored = gating.get("units") or []
    if len(stored) != len(units) or int(gating.get("tasks", -1)) != model.n_tasks:
        raise ValueError(f"stored gating has {len(stored)} gated layers for {gating.get('tasks')} tasks; the model "
                         f"{len(units)} for {model.n_tasks}: not the same architecture")
    with torch.no_grad():
        for u, s in zip(units, stored):
            if int(s["channels"]) != u.mix.channels or int(s["index"]) != u.spec.index:
                raise ValueError(f"stored gating unit {s['index']} ({s['channels']} channels) does not match "
                                 f"unit {u.spec.index} ({u.mix.channels})")
            bits = torch.tensor([[c == "1" for c in row] for row in s["gates"]], dtype=torch.bool)
            u.mix.alpha.copy_(torch.where(bits, GATE_LOGIT, -GATE_LOGIT).to(u.mix.alpha))


def gating_patterns(gating: dict, task_names: list[str] | None = None) -> list[dict]:
    """Per gated layer: ``selected`` and ``max_contribution`` per task (Figure 3's two panels)."""
    rows = []
    for s in gating.get("units") or []:
        names = task_names or [f"task{t}" for t in range(len(s["gates"]))]
        rows.append({"index": s["index"], "role": s["role"], "channels": s["channels"],
                     "selected": {n: row.count("1") / max(len(row), 1) for n, row in zip(names, s["gates"])},
                     "max_contribution": dict(zip(names, s["max_contribution"]))})
    return rows
