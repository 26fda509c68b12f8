"""Complexity of every row's model next to the published #P / #F of the table."""
from __future__ import annotations

from dataclasses import dataclass

from .compare import flops_key, params_key
from .complexity import count, count_pruned
from .recipe import recipe_sets
from .schema import Table


@dataclass
class RowProfile:
    row: str
    label: str
    group: str | None
    recipe: str | None
    params: int | None
    flops: int | None
    flops_unit: str | None
    input_shape: list[int] | None
    published: dict
    unsupported_ops: dict
    scope: str = ""
    note: str = ""
    flops_conv: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _published(table: Table, row) -> dict:
    out = {}
    for col in table.columns:
        if col.kind != "complexity" or col.key not in row.cells:
            continue
        cell = row.cells[col.key]
        if cell.value is None:
            continue
        scale = (cell.suffix or col.scale or "").upper()
        mult = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(scale, 1.0)
        out[col.key] = {"text": cell.text, "value": cell.value * mult, "unit": col.unit,
                        "input_shape": list(col.input_shape) if col.input_shape else None}
    return out


def profile_table(table: Table, results_root=None, search_profile: str = "full") -> list[RowProfile]:
    """One :class:`RowProfile` per row of ``table`` (counted on the row's recipe, at the paper's size),
    then one per ``extra`` recipe of its recipe set (documented variants that are not printed rows).
    A row that retrains a searched architecture is counted on the architecture its stored search of
    ``search_profile`` exported (``"tiny"``: the tree a tiny search found, counted at full size; the
    note says so), or noted as waiting for that search. A GatedMTL row is counted on the pruned network
    of the gates its stored run of ``search_profile`` (seed 0) learned, at the paper's size."""
    import dataclasses
    from .pipeline import Waiting, resolve_upstream
    from .profiles import apply_profile

    rs = recipe_sets().get(table.id)
    by_row = {r.row: r for r in rs.recipes} if rs else {}
    cache: dict[str, tuple] = {}
    out = []
    items = [(row.key, row.label, row.group, by_row.get(row.key), _published(table, row)) for row in table.rows]
    items += [(r.row, f"{r.row} (not a printed row)", None, r, {}) for r in (rs.recipes if rs else ()) if r.extra]
    for key_, label, group, recipe, pub in items:
        if recipe is None or recipe.status != "ready":
            out.append(RowProfile(key_, label, group, recipe.id if recipe else None, None, None,
                                  None, None, pub, {}, note="ambiguous" if recipe and recipe.status == "ambiguous"
                                  else "not implemented"))
            continue
        try:
            found = resolve_upstream(apply_profile(recipe, search_profile), search_profile, results_root)
        except Waiting as w:
            out.append(RowProfile(key_, label, group, recipe.id, None, None, None, None, pub, {},
                                  note=f"waiting for {w.upstream.row} ({search_profile} profile)"))
            continue
        concrete = dataclasses.replace(recipe, sharing_kwargs=found.sharing_kwargs)
        if _exports_gating(recipe.sharing):   # the pruned network of the gates a stored run learned
            row = _count_gated_row(table, key_, label, group, concrete, found, pub, search_profile, results_root)
            out.append(row)
            continue
        row = _count_row(table, key_, label, group, concrete, pub, cache)
        if recipe.architecture_from and search_profile != "full":
            row.scope = f"{row.scope}; architecture from the {search_profile}-profile search".lstrip("; ")
        out.append(row)
    return out


def _exports_gating(sharing: str) -> bool:
    """Whether the scheme learns gates its run stores (``export_gating``, GatedMTL): such a row's
    inference network, and so its count, comes from a stored run, not from the recipe alone."""
    from .models.registries import SHARING   # importing mtlrepro.models registers every scheme
    return hasattr(SHARING.get(sharing), "export_gating")


def _count_gated_row(table: Table, key_: str, label: str, group, recipe, found, pub: dict, profile: str,
                     results_root) -> RowProfile:
    """GatedMTL: the stored gates applied to the model built at the paper's size, pruned, counted."""
    import torch

    from .models import build_model
    from .models.gated.patterns import apply_gating
    from .problems import problem_shape
    from .store import find_run

    rec = find_run(profile, found.id, found.fingerprint, 0, results_root)
    gating = (rec.artifacts or {}).get("gating") if rec is not None and rec.status == "finished" else None
    if gating is None:
        return RowProfile(key_, label, group, recipe.id, None, None, None, None, pub, {},
                          note=f"no gates yet: its {profile}-profile run (seed 0) is not stored")
    out_dims, shape = problem_shape(recipe)
    torch.manual_seed(0)
    model = build_model(recipe.backbone, recipe.sharing, out_dims, **recipe.model_kwargs(weights=False))
    apply_gating(model, gating)
    c = count_pruned(model, shape)
    scope = f"pruned network of the gates of its {profile}-profile run (seed 0), all task heads"
    return RowProfile(key_, label, group, recipe.id, c.params_total, c.flops, c.flops_unit, list(c.input_shape), pub,
                      c.unsupported_ops, scope, flops_conv=c.flops_conv)


def _count_row(table: Table, key_: str, label: str, group, recipe, pub: dict, cache: dict) -> RowProfile:
    from .models import build_model
    from .problems import problem_shape

    out_dims, shape = problem_shape(recipe)
    key = repr((recipe.backbone, recipe.sharing, sorted(recipe.model_kwargs(weights=False).items()), out_dims, shape))
    if key not in cache:
        import torch
        torch.manual_seed(0)
        model = build_model(recipe.backbone, recipe.sharing, out_dims, **recipe.model_kwargs(weights=False))
        cache[key] = count(model, shape)
    c = cache[key]
    # the paper's #P scope: one task's forward (ETR-NLP, task routing) or the whole model (CoNAL, GatedMTL)
    params = c.params_total if params_key(table) == "params_total" else c.params
    flops, conv, scope = c.flops, c.flops_conv, c.scope
    if flops_key(table) == "flops_all_tasks" and c.flops_all_tasks != c.flops:
        flops, conv = c.flops_all_tasks, c.flops_conv_all_tasks
        scope = "one image, every task's network (sum of the one-task passes)"
    return RowProfile(key_, label, group, recipe.id, params, flops, c.flops_unit, list(c.input_shape), pub,
                      c.unsupported_ops, scope, flops_conv=conv)
