"""Stored runs against the data a sweep has now: a run trained on other tensors is not served.

A run is a function of its fingerprint *and* of the data it trained and was evaluated on. The store
addresses records by fingerprint, seed and device kind; the data are recorded in each record as the
sha256 of every tensor of both splits (``record.data["checksum"]``, :func:`mtlrepro.train.trainer.data_checksum`).
Before a sweep skips a stored job, :func:`check_stored_data` builds each distinct problem of the stored
jobs once (from the data cache: seconds), takes the same checksum, and for a record whose checksum
differs

* sets the record aside (``seed<k>.json.otherdata-<UTC time>``, never deleted, named on stderr), and
* plans the job again, so the table is measured on the data the user has now.

Copying a dataset to another machine changes file times but not the tensors, so it is not a change;
replacing, re-encoding or re-splitting images is. The tiny profile's data are generated
deterministically and checked the same way (a changed generator reruns its runs). Reports are a
function of the store alone and say when a table's runs saw different data (``report_header.data_checksums``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from .recipe import Recipe

#: the recipe fields a problem's tensors depend on (the problem builders read these, and the
#: trainer's search split the last two); two jobs equal on them train on the same tensors
PROBLEM_FIELDS = ("dataset", "task_set", "image_size", "resize_mode", "eval_split", "augment",
                  "search_val_fraction", "search_split_seed")


def problem_key(recipe: Recipe) -> str:
    """What identifies the tensors ``recipe`` trains on (:data:`PROBLEM_FIELDS`)."""
    return json.dumps({f: getattr(recipe, f) for f in PROBLEM_FIELDS}, sort_keys=True, default=str)


def current_checksum(recipe: Recipe, profile: str, data_root: str | None) -> str:
    """The checksum a run of ``recipe`` would record on the data there now (built on the CPU)."""
    import torch

    from .problems import build_problem
    from .search.split import training_split
    from .train.trainer import data_checksum

    problem, _ = training_split(build_problem(recipe, profile, data_root, torch.device("cpu")), recipe)
    return data_checksum(problem)


def check_stored_data(done: list, profile: str, data_root: str | None, record_path: Callable,
                      checksum: Callable[[Recipe, str, str | None], str] = current_checksum,
                      memo: dict[str, str] | None = None) -> tuple[list, list]:
    """Split the stored jobs ``done`` (``(job, record)`` pairs) into those trained on the data there
    now and those that were not: (kept, stale jobs to run again). Records without a checksum (and
    failed records) are kept. ``memo`` carries checksums over the waves of one sweep."""
    from .store import set_aside

    memo = {} if memo is None else memo
    kept, stale = [], []
    for job, rec in done:
        was = (rec.data or {}).get("checksum")
        if rec.status != "finished" or not was:
            kept.append((job, rec))
            continue
        key = problem_key(job.recipe)
        if key not in memo:
            memo[key] = checksum(job.recipe, profile, data_root)
        if memo[key] == was:
            kept.append((job, rec))
            continue
        path = Path(record_path(job))
        where = f"the data under {data_root}" if data_root else f"the {profile} profile's data"
        set_aside(path, f"trained on data of checksum {was[:12]}, {where} now give {memo[key][:12]} "
                        "(images replaced, re-encoded or re-split?)", tag="otherdata")
        stale.append(job)
    if stale:
        where = data_root or f"the {profile} profile's data"
        print(f"mtlrepro: {len(stale)} stored run(s) were trained on other data than {where} now holds: "
              "set aside and planned again", file=sys.stderr)
    return kept, stale


def checked_plan(plan: Callable[[], tuple], profile: str, data_root: str | None, device: str | None,
                 enabled: bool = True) -> Callable[[], tuple]:
    """``plan`` (returning ``(todo, done, skipped)``) with :func:`check_stored_data` applied to what
    it finds stored: stale records are set aside and their jobs join ``todo``."""
    from .jobs import record_path

    memo: dict[str, str] = {}

    def wrapped() -> tuple:
        todo, done, skipped = plan()
        if not enabled or not done:
            return todo, done, skipped
        kept, stale = check_stored_data(done, profile, data_root, lambda j: record_path(j, device, None), memo=memo)
        return todo + stale, kept, skipped
    return wrapped
