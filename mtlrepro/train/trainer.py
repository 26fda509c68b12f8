"""One (recipe, seed) run: build, train epoch by epoch, evaluate, checkpoint, record.

A checkpoint is written atomically after every epoch; a killed run restarts from the last
finished epoch and, since batch order derives from (seed, epoch) and all model randomness
lives in buffers, continues exactly as an uninterrupted run would (on CPU). Checkpoints are
loaded on the CPU (RNG states must stay CPU tensors; model and optimizer state are copied to
the device by ``load_state_dict``); the CUDA RNG state is restored where one was saved. The
record keeps the environment of every segment of a resumed run and the summed training time.

The precision policy is explicit: TF32 is switched on or off as the recipe says (``tf32``), and
``record.environment["precision"]`` states what was in force. A non-finite loss fails the run
with the reason; the record says so and the sweep goes on.
"""
from __future__ import annotations

import functools
import hashlib
import math
import os
import time
from functools import lru_cache
from pathlib import Path

import torch

from ..claims import heartbeat
from ..methods import build_weighting
from ..models import build_model
from ..problems import build_problem
from ..recipe import Recipe
from ..store import EpochRecord, RunRecord, checkpoint_path, device_kind, environment, save_run
from ..methods.logs import EpochLogs
from .steps import STEPS, check_update_weighting, evaluate
from .faults import EnvironmentFault, check_writable, load_checkpoint_or_set_aside, save_checkpoint, state_bytes
from .optim import build_lr_schedule, build_optimizer, model_param_groups, with_gate_optimizer
from .selection import check_selection_rule, select_final


class RunFailed(RuntimeError):
    """A run that cannot finish (non-finite loss, ...); its record is stored as failed."""


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _save_checkpoint(path: Path, state: dict) -> None:
    save_checkpoint(path, state)


def precision_policy(recipe: Recipe, dev: torch.device) -> dict:
    """Set TF32 explicitly as the recipe says and return what is in force for the record."""
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(recipe.tf32)
        torch.backends.cudnn.allow_tf32 = bool(recipe.tf32)
    return {"dtype": "float32", "amp": "bfloat16 autocast" if recipe.amp else None,
            "tf32": bool(recipe.tf32) and dev.type == "cuda", "channels_last": bool(recipe.channels_last)}


def data_checksum(problem) -> str:
    """sha256 of every tensor the run trains and evaluates on (inputs and targets, both splits)."""
    cached = problem.data_info.get("checksum")
    if cached:
        return cached
    h = hashlib.sha256()
    for split in (problem.train, problem.eval):
        for t in [split.inputs, *split.targets]:
            t = t.detach().contiguous().cpu()
            h.update(f"{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.numpy().tobytes())
    problem.data_info["checksum"] = h.hexdigest()
    return problem.data_info["checksum"]


@lru_cache(maxsize=64)
def _complexity(backbone: str, sharing: str, kwargs: str, out_dims: tuple[int, ...],
                input_shape: tuple[int, ...]) -> dict:
    import json
    from ..complexity import count
    rng = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        model = build_model(backbone, sharing, list(out_dims), **json.loads(kwargs))
        c = count(model, input_shape)
    finally:
        torch.set_rng_state(rng)
    return complexity_dict(c)


def complexity_dict(c, scope_note: str = "") -> dict:
    """A :class:`~mtlrepro.complexity.Complexity` in the record's format (``record.complexity``)."""
    return {"params_active_task0": c.params, "params_total": c.params_total, "buffers": c.buffers,
            "flops": c.flops, "flops_all_tasks": c.flops_all_tasks, "flops_conv": c.flops_conv,
            "flops_conv_all_tasks": c.flops_conv_all_tasks, "flops_unit": "MAC", "input_shape": list(c.input_shape),
            "scope": c.scope + scope_note, "unsupported_ops": dict(c.unsupported_ops)}


def pruned_counts(c) -> dict:
    """A pruned network's :class:`~mtlrepro.complexity.Complexity` in the record's format."""
    return complexity_dict(c, ", pruned (GatedMTL's inference network)")


def run_complexity(recipe: Recipe, problem) -> dict:
    """fvcore params/MACs of this run's model at this run's input size (one image, one task)."""
    import json
    return dict(_complexity(recipe.backbone, recipe.sharing, json.dumps(recipe.model_kwargs(weights=False), sort_keys=True),
                            tuple(problem.out_dims), tuple(problem.input_shape)))


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state, every tensor on the CPU (RNG states must be CPU ByteTensors)."""
    return torch.load(path, map_location="cpu", weights_only=False)


def restore_rng(state: dict, dev: torch.device) -> None:
    torch.set_rng_state(state["rng_cpu"])
    if dev.type == "cuda" and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"], dev)


def train_run(recipe: Recipe, seed: int, profile: str, data_root: str | None = None,
              device: str | None = None, results_root: Path | None = None, progress: bool = True,
              stop_after_epochs: int | None = None, problem=None) -> RunRecord | None:
    """Train and evaluate one run; returns its stored record (None when stopped early on purpose).

    ``stop_after_epochs`` simulates an interruption after that many epochs (tests, resumability).
    """
    dev = pick_device(device)
    if os.environ.get("MTLREPRO_THREADS"):  # oversubscribed CPUs: OpenMP spin-waits make 2 threads far slower than 1
        torch.set_num_threads(int(os.environ["MTLREPRO_THREADS"]))
    segment_start = time.time()
    check_selection_rule(recipe.selection)
    check_update_weighting(recipe.update, recipe.weighting)   # before any data or model is built
    if problem is None:
        problem = build_problem(recipe, profile, data_root, dev)
    if profile == "full" and problem.data_info.get("subset"):   # the full store holds official splits only
        from ..errors import ConfigError
        raise ConfigError(f"{recipe.id}: the data are not the official splits ({problem.data_info.get('n_train')} "
                          "training images); the full profile stores runs on the official splits only: run the "
                          "subset profile (--allow-subset or --profile subset)")
    from ..search.split import training_split   # a search: weights on part of the training split, architecture on the rest
    problem, search_val = training_split(problem, recipe)
    if recipe.grad_clip is not None and recipe.update != "joint":
        raise ValueError(f"{recipe.id}: grad_clip is implemented for update joint only (got {recipe.update!r})")
    precision = precision_policy(recipe, dev)
    torch.manual_seed(seed)
    model = build_model(recipe.backbone, recipe.sharing, problem.out_dims, **recipe.model_kwargs()).to(dev)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    weighting = build_weighting(recipe.weighting, problem.n_tasks, **recipe.weighting_kwargs).to(dev)
    if model.task_conditional and recipe.update == "joint":
        raise ValueError(f"{recipe.id}: sharing {recipe.sharing!r} activates one task per forward; "
                         f"use update steady_state or synchronized")
    if recipe.update != "joint" and not model.task_conditional:
        raise ValueError(f"{recipe.id}: update {recipe.update!r} runs one task per forward; sharing "
                         f"{recipe.sharing!r} computes every task in one forward (use update joint)")
    optimizer = build_optimizer(recipe, model_param_groups(recipe, model, weighting))
    schedule = build_lr_schedule(recipe, optimizer)
    optimizer = with_gate_optimizer(optimizer, model)   # GatedMTL's gates: their own SGD
    weighting.bind_training(problem.task_loss, optimizer)
    steps_per_epoch = problem.steps_per_epoch(recipe.batch_size, recipe.max_steps_per_epoch)
    weighting.bind_schedule(recipe.epochs, steps_per_epoch)
    meta_batches = None
    if weighting.needs_validation_batches:
        if search_val is not None:
            from ..search.split import SearchValBatches
            meta_batches = SearchValBatches(problem, search_val, recipe.batch_size)
        else:
            meta_batches = _MetaBatches(problem, recipe.batch_size, seed)
        weighting.bind_validation(meta_batches.next)
    step_fn = STEPS.get(recipe.update)
    if recipe.grad_clip is not None:
        step_fn = functools.partial(step_fn, grad_clip=float(recipe.grad_clip))

    env = dict(environment(dev), precision=precision)
    record = RunRecord(recipe_id=recipe.id, fingerprint=recipe.fingerprint, seed=seed, profile=profile,
                       status="running", recipe=recipe.resolved_dict(),
                       data=dict(problem.data_info, checksum=data_checksum(problem)), environment=env)
    record.complexity = run_complexity(recipe, problem)
    ckpt = checkpoint_path(profile, recipe.fingerprint, seed, device_kind(dev), results_root)
    check_writable(ckpt.parent, state_bytes(model, weighting) * 3)   # weights + Adam's two moments
    start_epoch, segments, seconds_before = 0, [], 0.0
    state = load_checkpoint_or_set_aside(ckpt) if ckpt.exists() else None
    if state is None and recipe.init_weights:   # GatedMTL: task branches from the STL networks
        from .init_weights import load_init_weights
        load_init_weights(model, recipe, seed, profile, device_kind(dev), problem.out_dims, results_root)
    if recipe.init_weights:
        record.artifacts = {"init": dict(recipe.init_weights, seed=seed)}
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["lr_schedule"])
        weighting.load_state_dict(state["weighting"])
        if state.get("weighting_extra") is not None and hasattr(weighting, "load_extra_state"):
            weighting.load_extra_state(state["weighting_extra"])
        record.epochs = [EpochRecord(**e) for e in state["epochs"]]
        restore_rng(state, dev)
        segments = list(state.get("segments") or [])
        seconds_before = float(state.get("seconds") or 0.0)
        start_epoch = len(record.epochs)
    segments.append(dict(env, start_epoch=start_epoch))
    record.environment = dict(env, segments=segments)

    def elapsed() -> float:
        return seconds_before + time.time() - segment_start

    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=recipe.amp)
    for epoch in range(start_epoch, recipe.epochs):
        t0 = time.time()
        epoch_lr = float(optimizer.param_groups[0]["lr"])
        model.train()
        loss_sum = torch.zeros((), device=dev)
        logs = EpochLogs()
        if meta_batches is not None:
            meta_batches.set_epoch(epoch, epoch * steps_per_epoch)
        weighting.on_epoch_start(epoch)
        bar = _bar(progress, steps_per_epoch, f"{recipe.id} s{seed} e{epoch + 1}/{recipe.epochs}")
        for step, (x, targets) in enumerate(problem.train_batches(recipe.batch_size, epoch, seed,
                                                                  recipe.max_steps_per_epoch)):
            model.on_train_step(epoch * steps_per_epoch + step, steps_per_epoch)
            with autocast:
                loss_sum += step_fn(model, weighting, optimizer, problem, x, targets, logs=logs)
            if bar:
                bar.update(1)
        if bar:
            bar.close()
        train_loss = float(loss_sum) / steps_per_epoch       # one host sync per epoch
        if not math.isfinite(train_loss):
            record.status, record.failure = "failed", f"non-finite training loss ({train_loss}) in epoch {epoch + 1}"
            record.seconds = elapsed()
            _save_record(record, results_root)
            ckpt.unlink(missing_ok=True)
            raise RunFailed(record.failure)
        weighting.on_epoch_end(epoch)
        model.on_epoch_end(epoch)
        if schedule is not None:
            schedule.step()
        conflicts = None
        if recipe.measure_conflicts and ((epoch + 1) % recipe.measure_conflicts == 0 or epoch + 1 == recipe.epochs):
            from ..conflicts import measure_conflicts   # leaves the model, its buffers and the RNG as they were
            conflicts = measure_conflicts(model, problem, recipe.batch_size)
        metrics = evaluate(model, problem, max(recipe.batch_size, 256))
        if conflicts is not None:   # CoNAL Table 1's cells, comparable by key (metrics/definitions.py)
            metrics.update({f"conflict_ratio_{m}": float(v) for m, v in conflicts.get("ratio", {}).items()})
        step_logs = logs.means()
        record.epochs.append(EpochRecord(epoch=epoch + 1, train_loss=train_loss, metrics=metrics,
                                         seconds=time.time() - t0, task_weights=step_logs.pop("task_weights", None),
                                         weighting_logs=step_logs, conflicts=conflicts, lr=epoch_lr))
        if epoch == start_epoch:  # an unknown selection metric fails now, not after the last epoch
            select_final(record.epochs, recipe.selection)
        _save_checkpoint(ckpt, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "lr_schedule": schedule.state_dict() if schedule is not None else None,
            "weighting": weighting.state_dict(),
            "weighting_extra": weighting.extra_state() if hasattr(weighting, "extra_state") else None,
            "epochs": [vars(e) for e in record.epochs], "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
            "segments": segments, "seconds": elapsed(),
        })
        heartbeat()   # the job's claim is alive (mtlrepro/claims.py: a claim not refreshed goes stale by age)
        if stop_after_epochs is not None and epoch + 1 >= stop_after_epochs and epoch + 1 < recipe.epochs:
            return None
    record.final = select_final(record.epochs, recipe.selection)
    exporter = next((m for m in (model, weighting) if hasattr(m, "export_architecture")), None)
    if exporter is not None:   # a search (supernet or method, e.g. TAG): its output is the architecture
        record.artifacts = {"architecture": exporter.export_architecture()}
    if hasattr(model, "export_gating"):   # GatedMTL: the gates, and the counts of the pruned network
        from ..complexity import count_pruned
        record.artifacts = {**(record.artifacts or {}), "gating": dict(model.export_gating(), task_names=list(problem.task_names))}
        record.complexity = pruned_counts(count_pruned(model, tuple(problem.input_shape)))
    if recipe.keep_weights:   # another recipe starts from these weights (GatedMTL from STL)
        from .init_weights import save_final_weights
        save_final_weights(model, recipe, seed, profile, device_kind(dev), results_root)
    record.status = "finished"
    record.seconds = elapsed()
    _save_record(record, results_root)
    ckpt.unlink(missing_ok=True)
    return record


def _save_record(record: RunRecord, results_root: Path | None) -> Path:
    """``save_run``; a write that fails (full disk, read-only store) is an environment fault."""
    try:
        return save_run(record, results_root)
    except OSError as e:
        raise EnvironmentFault(f"could not write the run record of {record.recipe_id} seed {record.seed} "
                               f"({e.strerror or e}{': ' + e.filename if getattr(e, 'filename', None) else ''}): "
                               "is the disk full or the results folder read-only? The job stays runnable",
                               getattr(e, "filename", None)) from None


class _MetaBatches:
    """The batches a bilevel method (Auto-λ) learns its task weights on: a second, independently
    shuffled stream over the TRAINING split, as the official Auto-λ code draws them (never the
    evaluation split, which is the reported test set for the dense tables). The stream of epoch
    ``e`` is ``train_batches(..., epoch=e, seed=seed + META_SEED_OFFSET)`` and cycles within the
    epoch, so a resumed run sees the same meta-batches as an uninterrupted one."""

    META_SEED_OFFSET = 7_919

    def __init__(self, problem, batch_size: int, seed: int):
        self.problem, self.batch_size, self.seed = problem, batch_size, seed
        self._it = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        def stream():
            while True:
                yield from self.problem.train_batches(self.batch_size, epoch, self.seed + self.META_SEED_OFFSET)
        self._it = stream()

    def next(self):
        return next(self._it)


def _bar(progress: bool, total: int, desc: str):
    if not progress:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
