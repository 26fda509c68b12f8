"""STL -> GatedMTL: the GatedMTL rows wait for the STL weights, a killed pipeline resumes without
retraining STL, seed k starts from STL seed k, and the record holds the gates and pruned counts."""
import torch

from mtlrepro import launch
from mtlrepro.launch import InProcessLauncher, plan_jobs
from mtlrepro.pipeline import resolve_upstream, run_pipeline
from mtlrepro.profiles import apply_profile
from mtlrepro.recipe import get_recipe
from mtlrepro.store import find_run, weights_path

from .harness_utils import tiny_env  # noqa: F401 (fixture)

STL, GATED = "gatedmtl/table8/quarter_stl", "gatedmtl/table8/quarter_gatedmtl_1"


def test_the_stl_weights_are_kept_and_gatedmtl_starts_from_them(tmp_path, tiny_env, monkeypatch):
    stl, gated = get_recipe(STL), get_recipe(GATED)
    assert stl.keep_weights and gated.init_from == STL
    plan = lambda: plan_jobs([stl, gated], "tiny", results_root=tmp_path, device="cpu")   # noqa: E731
    todo, done, skipped = plan()
    assert [j.recipe.id for j in todo] == [STL]
    assert [r.id for r in skipped] == [GATED] and skipped[0].status.startswith(f"waiting for {STL} seed 0")
    launch.run_job(todo[0], None, "cpu", tmp_path, progress=False)       # STL; then the "kill"
    stl_eff = apply_profile(stl, "tiny")
    wpath = weights_path("tiny", stl_eff.fingerprint, 0, "cpu", tmp_path)
    assert wpath.exists()

    ran = []
    real = launch.run_job
    monkeypatch.setattr(launch, "run_job", lambda job, *a, **k: (ran.append(job.recipe.id), real(job, *a, **k))[1])
    first = plan()
    assert [j.recipe.id for j in first[0]] == [GATED] and [j.recipe.id for j, _ in first[1]] == [STL]
    run_pipeline(first, plan, lambda jobs: InProcessLauncher("cpu", progress=False).run(jobs, None, tmp_path))
    assert ran == [GATED]                                                  # STL was found, not retrained
    concrete = resolve_upstream(apply_profile(gated, "tiny"), "tiny", tmp_path)
    assert concrete.init_weights == {"recipe": STL, "fingerprint": stl_eff.fingerprint}
    rec = find_run("tiny", GATED, concrete.fingerprint, 0, tmp_path)
    assert rec.status == "finished"
    assert rec.artifacts["init"] == {"recipe": STL, "fingerprint": stl_eff.fingerprint, "seed": 0}
    gating = rec.artifacts["gating"]
    assert gating["tasks"] == 3 and len(gating["units"]) == 18            # every conv of ResNet-20 but the stem
    assert "pruned" in rec.complexity["scope"] and rec.complexity["flops"] > 0
    assert plan()[0] == []


def test_a_stored_stl_run_without_its_weights_runs_again(tmp_path, tiny_env):
    stl = get_recipe(STL)
    todo, _, _ = plan_jobs([stl], "tiny", results_root=tmp_path, device="cpu")
    launch.run_job(todo[0], None, "cpu", tmp_path, progress=False)
    eff = apply_profile(stl, "tiny")
    w = weights_path("tiny", eff.fingerprint, 0, "cpu", tmp_path)
    state = torch.load(w, weights_only=False)
    assert state["fingerprint"] == eff.fingerprint
    assert plan_jobs([stl], "tiny", results_root=tmp_path, device="cpu")[0] == []
    w.unlink()
    assert [j.recipe.id for j in plan_jobs([stl], "tiny", results_root=tmp_path, device="cpu")[0]] == [STL]
    gated = get_recipe(GATED)   # planned alone, the GatedMTL row brings the source job with it
    todo, _, skipped = plan_jobs([gated], "tiny", results_root=tmp_path, device="cpu")
    assert [j.recipe.id for j in todo] == [STL] and todo[0].recipe.keep_weights
    assert "weights are not stored" in skipped[0].status
