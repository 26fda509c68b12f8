"""``mtlrepro status``: every table's rows, runs, verdicts and what is left to run, on one screen."""
from __future__ import annotations

import argparse
import json

from .common import add_profile_argument

NAME = "status"
HELP = ("the whole reproduction at a glance: per table its rows (ready / not implemented / ambiguous), "
        "stored runs, verdict tally, jobs still to run and their estimated GPU-hours")
EPILOG = ("examples:\n  mtlrepro status\n  mtlrepro status --profile all\n  mtlrepro status --profile tiny --json\n"
          "  mtlrepro status --calibration cpu          # cost estimate from reproduce/calibration/cpu.yaml\n\n"
          "A table whose table or recipe file is broken shows the error on its line; the exit code is then 2\n"
          "(0 otherwise). Nothing is trained or built; `mtlrepro report --all` writes the same numbers to\n"
          "results/README.md (results/tiny/README.md for the tiny profile).")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_profile_argument(p, extra=("all",), help="full: runs on the real data; subset: on other split "
                         "sizes; tiny: synthetic runs; all: each, one section each")
    p.add_argument("--json", action="store_true", help="the same data as JSON")
    p.add_argument("--calibration", default="h100",
                   help="timing file under reproduce/calibration/ used for the GPU-hour estimate")


def _section(status, profile: str) -> str:
    from tabulate import tabulate

    from ..profiles import PROFILES
    from ..status import hours_text, runs_text, seeds_text, verdict_text

    prof = PROFILES[profile]
    lines = [f"profile {profile}: {prof.description}"]
    if prof.synthetic:
        lines.append("SYNTHETIC DATA (profile tiny): not comparable with the paper")
    elif prof.banner:
        lines.append(f"{prof.banner} (profile {profile})")
    body = []
    for t in status.tables:
        ps = t.profiles.get(profile)
        if ps is None or ps.error:
            body.append([t.id, t.rows or "-", "", "", "", "", "", "", "", f"error: {ps.error if ps else t.error}"])
            continue
        note = "" if t.in_scope else f" (out of scope: {t.out_of_scope_reason[:60]})"
        body.append([t.id, t.rows, t.ready, len(t.not_implemented), len(t.ambiguous), runs_text(ps),
                     seeds_text(ps, t.ready, t.paper_seeds),
                     f"{ps.to_run}" + (f" ({ps.waiting} waiting)" if ps.waiting else ""),
                     hours_text(ps.gpu_hours, ps.hours_known, ps.to_run), verdict_text(ps.verdicts) + note])
    tot = status.totals(profile)
    body.append(["total", tot["rows"], tot["ready"], tot["not_implemented"], tot["ambiguous"],
                 f"{tot['runs']} (+{tot['failed']} failed)" if tot["failed"] else str(tot["runs"]), "",
                 f"{tot['to_run']}" + (f" ({tot['waiting']} waiting)" if tot["waiting"] else ""),
                 hours_text(tot["gpu_hours"], tot["hours_known"], tot["to_run"]), verdict_text(tot["verdicts"])])
    lines.append(tabulate(body, headers=["table", "rows", "ready", "n/i", "amb.", "runs", "complete × seeds",
                                         "to run", "GPU-h", "verdicts (cells) / error"]))
    lines.append(f"\nruns: finished records of the ready rows / runs their recipes ask for; to run: jobs of the "
                 f"recipe files with no record (waiting for an upstream run included; shared jobs counted once "
                 f"in the total); GPU-h on {status.device} (reproduce/calibration/{status.calibration}.yaml)")
    return "\n".join(lines)


def _not_run(status) -> str:
    from ..status import group_notes

    out = []
    for kind, attr in (("not implemented", "not_implemented"), ("ambiguous", "ambiguous")):
        for t in status.tables:
            for reason, notes in group_notes(getattr(t, attr)):
                rows = ", ".join(n.row for n in notes[:6]) + (f", ... ({len(notes)} rows)" if len(notes) > 6 else "")
                out.append(f"  {t.id} {kind}: {rows} — {reason[:160]}")
    return ("rows not run:\n" + "\n".join(out)) if out else ""


def run(args: argparse.Namespace) -> int:
    from ..status import collect_status, profiles_of

    status = collect_status(profiles_of(args.profile), calibration=args.calibration)
    if args.json:
        print(json.dumps(status.to_dict(), indent=1, ensure_ascii=False))
    else:
        print("\n\n".join([_section(status, p) for p in status.profiles] + [s for s in [_not_run(status)] if s]))
    return 2 if any(t.error for t in status.tables) else 0
