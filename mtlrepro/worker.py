"""Runs one job described by a JSON file: ``python -m mtlrepro.worker JOB.json``.

The local-multi launcher starts one of these per job, so a worker runs exactly the recipe it was
given (profile overrides included) and writes the same record the in-process launcher would.
Exit code: 0 finished, 1 the run failed (its record says why), 2 bad or missing data, 3 a fault
of the machine (nothing stored: the job stays runnable).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str) -> int:
    from .launch import Job, run_job
    from .recipe import Recipe

    spec = json.loads(Path(path).read_text())
    r = dict(spec["recipe"])
    r["seeds"] = tuple(r["seeds"])
    job = Job(Recipe(**r), spec["seed"], spec["profile"])
    root = Path(spec["results_root"]) if spec.get("results_root") else None
    from .data.errors import DataError
    from .train import EnvironmentFault
    try:
        rec = run_job(job, spec.get("data_root"), spec.get("device"), root, progress=False)
    except DataError as e:
        print(f"mtlrepro worker: {e}", file=sys.stderr)
        return 2
    except EnvironmentFault as e:
        print(f"mtlrepro worker: {e}", file=sys.stderr)
        return 3
    return 0 if rec is not None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
