"""A report's opening: the table, the profile's banner, and where its runs came from (devices,
code, precision and layout options, epoch selection, the data checksums)."""
from __future__ import annotations

from .compare import TableDiff
from .profiles import PROFILES
from .schema import PAPERS
from .store import git_sha


def speed_options(records) -> str:
    """Which stored runs used the non-default precision or speed options (bf16 autocast, TF32
    matmuls on a GPU, channels-last): they change float rounding, so a report says so whenever one
    was on. TF32 counts as on when the run's environment says it was in force."""
    used = {}
    for r in records:
        prec = (r.environment or {}).get("precision") or {}
        opts = [name for key, name in (("amp", "bf16 autocast"), ("channels_last", "channels-last"))
                if (r.recipe or {}).get(key)]
        if prec.get("tf32"):
            opts.append("TF32")
        if opts:
            used.setdefault(", ".join(opts), set()).add(r.recipe_id)
    if not used:
        return "float32 (no TF32), default memory layout in every run (amp, tf32 and channels_last off)"
    return "; ".join(f"**{opts}** in {', '.join(f'`{i}`' for i in sorted(ids))}"
                     for opts, ids in sorted(used.items()))


def header(td: TableDiff) -> list[str]:
    table, profile = td.table, td.profile
    prof = PROFILES[profile]
    records = td.records()
    devices = sorted({str(r.environment.get("device") or r.environment.get("gpu") or "cpu") for r in records})
    torches = sorted({str(r.environment.get("torch")) for r in records})
    shas = sorted({str(r.environment.get("git_sha")) for r in records})
    found = sorted({r.seed for r in records})
    asked = "each recipe's own" if td.seeds is None else ", ".join(map(str, td.seeds))
    lines = [f"# {table.id} — {table.title}", ""]
    if prof.synthetic:
        lines += ["> **SYNTHETIC DATA — NOT COMPARABLE WITH THE PAPER.** These numbers come from the "
                  f"`{profile}` profile ({prof.description}). They show that the pipeline runs end to "
                  "end; they say nothing about whether the published numbers hold.", ""]
    elif prof.banner:
        lines += [f"> **{prof.banner}.** These numbers come from the `{profile}` profile ({prof.description}); "
                  "the split sizes each run trained and was evaluated on are under **Data** below.", ""]
    return lines + [
        f"- **Paper:** {PAPERS[table.paper]}",
        f"- **Caption:** {table.caption}",
        f"- **Dataset:** {table.dataset} — {table.dataset_variant}",
        f"- **Profile:** `{profile}` ({prof.description})",
        f"- **Seeds:** {asked}; runs found for {', '.join(map(str, found)) or 'none'} "
        f"(paper: {table.seeds or 'not stated'})",
        f"- **Devices:** {', '.join(devices) or '—'}; torch {', '.join(torches) or '—'}",
        f"- **Code:** runs from git {', '.join(shas) or '—'}; report from git {git_sha()}",
        f"- **Precision / layout:** {speed_options(records)}",
        f"- **Epoch selection:** {selection_rules(records)}",
        f"- **Data:** {data_checksums(records)}",
        "",
    ]


def selection_rules(records) -> str:
    """Which epoch each run reports (``record.final["selection"]``); a rule that picks the epoch by
    its score on the test set is named test-set selection, in bold."""
    from .train.selection import is_test_set_selection, selection_label
    used: dict[str, set[str]] = {}
    for r in records:
        rule = str((r.final or {}).get("selection") or (r.recipe or {}).get("selection") or "last")
        ds, split = (r.recipe or {}).get("dataset", ""), (r.recipe or {}).get("eval_split", "")
        label = selection_label(rule, ds, split) if ds else rule
        if ds and is_test_set_selection(rule, ds, split):
            label = f"**{label}**"
        used.setdefault(label, set()).add(r.recipe_id)
    if not used:
        return "—"
    if len(used) == 1:
        return f"{next(iter(used))} in every run"
    return "; ".join(f"{label} in {', '.join(f'`{i}`' for i in sorted(ids))}" for label, ids in sorted(used.items()))


def data_checksums(records) -> str:
    """The checksums of the tensors the runs trained and evaluated on (``record.data``)."""
    seen: dict[str, int] = {}
    for r in records:
        key = str((r.data or {}).get("checksum") or "not recorded")
        seen[key] = seen.get(key, 0) + 1
    if not seen:
        return "—"
    parts = [f"`{k[:12]}` ({n} run{'s' if n > 1 else ''})" for k, n in sorted(seen.items())]
    if len(seen) == 1:
        return f"checksum {parts[0]} of the tensors trained and evaluated on"
    return (f"{len(seen)} different data checksums: " + ", ".join(parts) +
            " (rows at different input sizes, or data that changed between runs)")
