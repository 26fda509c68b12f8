"""Faults of the machine during a run are not run failures (mtlrepro/train/faults.py)."""
from __future__ import annotations

import os

import pytest
import torch

from mtlrepro.profiles import apply_profile

from mtlrepro.recipe import get_recipe
from mtlrepro.store import find_run
from mtlrepro.train import faults
from mtlrepro.train.faults import EnvironmentFault, check_writable, load_checkpoint_or_set_aside
from mtlrepro.train.trainer import train_run

from ..harness_utils import tiny_env  # noqa: F401 (fixture)

RECIPE = "etr_nlp/table4/hard_sharing_g8"


def _tiny(**kw):
    return apply_profile(get_recipe(RECIPE), "tiny").with_overrides(**kw)


def _stored(recipe, root):
    return find_run("tiny", recipe.id, recipe.fingerprint, 0, root)


def test_full_disk_during_a_checkpoint_write_leaves_the_job_runnable(tmp_path, tiny_env, monkeypatch):
    recipe = _tiny(epochs=2)
    calls = {"n": 0}

    def full_disk(obj, f, *a, **k):   # what torch raises when the disk fills during torch.save
        calls["n"] += 1
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 1234 vs 5678\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    real = faults.save_checkpoint
    monkeypatch.setattr("mtlrepro.train.trainer.save_checkpoint", lambda path, state: real(path, state, save=full_disk))
    with pytest.raises(EnvironmentFault, match="could not write the checkpoint .*disk full"):
        train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert calls["n"] == 1
    assert _stored(recipe, tmp_path) is None                          # no failed record poisons the job
    assert not list(tmp_path.rglob("*.tmp"))                          # the partial file is gone
    monkeypatch.setattr("mtlrepro.train.trainer.save_checkpoint", real)
    rec = train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert rec.status == "finished" and _stored(recipe, tmp_path).status == "finished"


def test_read_only_results_folder_is_found_before_the_first_epoch(tmp_path, tiny_env, monkeypatch):
    recipe = _tiny(epochs=1)
    epochs_run = []

    def no_write(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(faults.tempfile, "mkstemp", no_write)
    monkeypatch.setattr("mtlrepro.train.trainer.evaluate", lambda *a, **k: epochs_run.append(1) or {})
    with pytest.raises(EnvironmentFault, match="cannot write to .*MTLREPRO_RESULTS"):
        train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert not epochs_run and _stored(recipe, tmp_path) is None


def test_no_room_for_a_checkpoint_is_an_environment_fault(tmp_path, monkeypatch):
    class Usage:
        free = 10 * 2**20
    monkeypatch.setattr(faults.shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(EnvironmentFault, match="not enough free space .* 10 MiB free"):
        check_writable(tmp_path, need_bytes=100 * 2**20)
    check_writable(tmp_path, need_bytes=1 * 2**20)


def test_a_corrupt_checkpoint_is_set_aside_and_the_run_restarts(tmp_path, tiny_env, capsys):
    recipe = _tiny(epochs=2)
    assert train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu",
                     stop_after_epochs=1) is None
    ckpt = next((tmp_path / "checkpoints").rglob("*.pt"))
    ckpt.write_bytes(ckpt.read_bytes()[:100])          # truncated by a crash of the machine
    rec = train_run(recipe, 0, "tiny", results_root=tmp_path, progress=False, device="cpu")
    assert rec.status == "finished" and len(rec.environment["segments"]) == 1   # from scratch
    aside = list(ckpt.parent.glob(f"{ckpt.name}.corrupt-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 100                  # kept, not deleted
    assert "is corrupt" in capsys.readouterr().err


def test_a_checkpoint_without_its_state_is_set_aside(tmp_path):
    p = tmp_path / "c.pt"
    torch.save({"model": {}}, p)
    assert load_checkpoint_or_set_aside(p) is None and not p.exists()


def test_an_unreadable_checkpoint_is_an_environment_fault(tmp_path, monkeypatch):
    p = tmp_path / "c.pt"
    torch.save({"model": {}, "optimizer": {}, "epochs": []}, p)
    monkeypatch.setattr(faults.os, "access", lambda path, mode: False if mode == os.R_OK else True)
    with pytest.raises(EnvironmentFault, match="cannot read the checkpoint"):
        load_checkpoint_or_set_aside(p)
    assert p.exists()


def test_sweep_stops_on_a_full_disk_with_exit_3_and_the_next_sweep_completes_the_job(tmp_path, tiny_env,
                                                                                     monkeypatch, capsys):
    from mtlrepro.cli.main import main
    monkeypatch.setattr("mtlrepro.store.RESULTS_DIR", tmp_path)
    real = faults.save_checkpoint

    def full(path, state):
        def boom(obj, f):
            raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")
        real(path, state, save=boom)

    monkeypatch.setattr("mtlrepro.train.trainer.save_checkpoint", full)
    rc = main(["run", RECIPE, "--profile", "tiny", "--seeds", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err and "could not write the checkpoint" in err
    recipe = apply_profile(get_recipe(RECIPE), "tiny")
    assert _stored(recipe, tmp_path) is None
    monkeypatch.setattr("mtlrepro.train.trainer.save_checkpoint", real)
    assert main(["run", RECIPE, "--profile", "tiny", "--seeds", "0", "--no-progress"]) == 0
    assert _stored(recipe, tmp_path).status == "finished"
    assert "1 jobs to run" in capsys.readouterr().err


def test_run_exits_1_when_a_job_failed(tmp_path, tiny_env, monkeypatch, capsys):
    from mtlrepro.cli.main import main
    from mtlrepro.train.trainer import RunFailed
    monkeypatch.setattr("mtlrepro.store.RESULTS_DIR", tmp_path)

    def nan_loss(*a, **k):
        raise RunFailed("non-finite training loss (nan) in epoch 1")

    monkeypatch.setattr("mtlrepro.train.train_run", nan_loss)
    rc = main(["run", RECIPE, "--profile", "tiny", "--seeds", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "1 job(s) failed" in err and "Traceback" not in err
