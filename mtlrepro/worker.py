"""Runs one job described by a JSON file: ``python -m mtlrepro.worker JOB.json``.

The local-multi launcher starts one of these per job, so a worker runs exactly the recipe it was
given (profile overrides included) and writes the same record the in-process launcher would. It
claims the job first (:func:`mtlrepro.launch.run_claimed`), so the claim's pid is the process that
trains. Exit code: 0 finished, 1 the run failed (its record says why), 2 bad or missing data, 3 a
fault of the machine (nothing stored: the job stays runnable), 4 another sweep holds or stored the
job (the last stderr line says which), 5 the worker itself broke (a traceback; nothing stored).
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def main(path: str) -> int:
    from .data.errors import DataError
    from .launch import (WORKER_BAD_DATA, WORKER_ELSEWHERE, WORKER_FAILED, WORKER_FINISHED, WORKER_MACHINE_FAULT,
                         Job, run_claimed)
    from .recipe import Recipe
    from .train import EnvironmentFault

    try:
        spec = json.loads(Path(path).read_text())
        r = dict(spec["recipe"])
        r["seeds"] = tuple(r["seeds"])
        job = Job(Recipe(**r), spec["seed"], spec["profile"], retry_of=spec.get("retry_of"))
        root = Path(spec["results_root"]) if spec.get("results_root") else None
        outcome, detail = run_claimed(job, spec.get("data_root"), spec.get("device"), root, progress=False)
    except DataError as e:
        print(f"mtlrepro worker: {e}", file=sys.stderr)
        return WORKER_BAD_DATA
    except EnvironmentFault as e:
        print(f"mtlrepro worker: {e}", file=sys.stderr)
        return WORKER_MACHINE_FAULT
    except Exception:  # noqa: BLE001 - a bug of the worker, told apart from a failed run (exit 1)
        traceback.print_exc()
        return 5
    if outcome == "elsewhere":
        print(f"mtlrepro worker: {detail}", file=sys.stderr)
        return WORKER_ELSEWHERE
    return WORKER_FINISHED if outcome == "finished" else WORKER_FAILED


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
