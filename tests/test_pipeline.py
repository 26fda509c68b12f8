"""Search -> retrain pipelines: dependants wait, resume after a kill without redoing the search,
and embed the architecture in their fingerprint."""
import dataclasses

import pytest

from mtlrepro import launch
from mtlrepro.launch import InProcessLauncher, plan_jobs
from mtlrepro.pipeline import Waiting, resolve_upstream, run_pipeline
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe
from mtlrepro.store import find_run

from .harness_utils import tiny_env  # noqa: F401 (fixture)

SEARCH = "methods/celeba_group8/conal_search"


def _retrain():
    base = get_recipe("methods/celeba_group8/equal")
    return dataclasses.replace(base, id="methods/celeba_group8/retrain", row="retrain", sharing="branched",
                               architecture_from=SEARCH)


def test_a_pipeline_killed_between_search_and_retrain_resumes_at_the_retrain(tmp_path, tiny_env, monkeypatch):
    up, down = get_recipe(SEARCH), _retrain()
    plan = lambda: plan_jobs([up, down], "tiny", results_root=tmp_path, device="cpu")   # noqa: E731
    todo, done, skipped = plan()
    assert [j.recipe.id for j in todo] == [SEARCH]
    assert [r.id for r in skipped] == [down.id] and skipped[0].status.startswith(f"waiting for {SEARCH} seed 0")
    with pytest.raises(ValueError, match="takes its architecture from"):
        down.fingerprint
    launch.run_job(todo[0], None, "cpu", tmp_path, progress=False)      # the search; then the "kill"
    search_rec = find_run("tiny", SEARCH, apply_profile(up, "tiny").fingerprint, 0, tmp_path)
    stored = next(tmp_path.rglob("seed0.json")).read_bytes()

    ran = []
    real = launch.run_job
    monkeypatch.setattr(launch, "run_job", lambda job, *a, **k: (ran.append(job.recipe.id), real(job, *a, **k))[1])
    first = plan()
    assert [j.recipe.id for j in first[0]] == [down.id] and [j.recipe.id for j, _ in first[1]] == [SEARCH]
    run_pipeline(first, plan, lambda jobs: InProcessLauncher("cpu", progress=False).run(jobs, None, tmp_path))
    assert ran == [down.id]                                              # the search was found, not redone
    assert next(p for p in tmp_path.rglob("seed0.json") if p.read_bytes() == stored)
    concrete = resolve_upstream(apply_profile(down, "tiny"), "tiny", tmp_path)
    rec = find_run("tiny", down.id, concrete.fingerprint, 0, tmp_path)
    assert rec is not None and rec.status == "finished"
    arch = search_rec.artifacts["architecture"]
    assert rec.recipe["sharing_kwargs"]["architecture"] == {"n_tasks": arch["n_tasks"], "groups": arch["groups"]}
    assert rec.recipe["upstream"] == {"recipe": SEARCH, "fingerprint": search_rec.fingerprint, "seed": 0}
    assert plan()[0] == []                                              # nothing left to run


def test_the_architecture_is_the_fingerprint_not_the_search_that_found_it(tmp_path):
    down = apply_profile(_retrain(), "tiny")
    with pytest.raises(Waiting, match="not run yet"):
        resolve_upstream(down, "tiny", tmp_path)
    arch = {"n_tasks": 8, "groups": [[list(range(8))]] * 5}
    a = dataclasses.replace(down, sharing_kwargs={"architecture": arch}, upstream={"recipe": "x"})
    b = dataclasses.replace(down, sharing_kwargs={"architecture": arch}, upstream={"recipe": "y"},
                            architecture_from="other/search")
    c = dataclasses.replace(a, sharing_kwargs={"architecture": {"n_tasks": 8, "groups": [[[t] for t in range(8)]] * 5}})
    assert a.fingerprint == b.fingerprint != c.fingerprint
