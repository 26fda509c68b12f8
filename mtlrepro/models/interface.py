"""The ``MTLModel`` interface every sharing scheme implements, and the plumbing they share.

Design (why it looks like this):

* A backbone (:mod:`mtlrepro.models.backbones`) is written ONCE; every convolution of it is
  built by the sharing scheme's conv-unit factory ``make_unit(spec)`` (:mod:`.units`), so the
  schemes are conv-unit variants, not copies of ResNet (:class:`UnitMTLModel`). Stage-wise
  schemes (MTAN, cross-stitch) instead read the backbone's stages
  (:class:`~mtlrepro.models.backbones.protocol.StagedBackbone`).
* Units that depend on the active task read it from a :class:`TaskContext` object shared by the
  whole model (set once per forward pass), instead of every module holding its own copy.
* Task-private sub-modules live in :class:`PerTask` containers (a ``ModuleList`` with one entry
  per task); ``task_parameters(t)`` collects entry ``t`` of every ``PerTask`` in the model, and
  everything else is shared. The task heads (:mod:`mtlrepro.models.heads`) are a ``PerTask`` too.
* Everything non-learnable (masks, fixed primitive weights, noise seeds, roaming counters) is a
  registered buffer, so ``state_dict`` covers it and it never counts as a parameter.
* Batched task passes (``forward_tasks`` / ``forward_all``) run several tasks' passes of a
  task-conditional model as one pass over a ``(T*B, ...)`` batch (:mod:`mtlrepro.models.batched`),
  equal to the per-task loop up to float rounding; how many tasks per pass:
  :func:`~mtlrepro.models.batched.chunking.task_chunks`.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from .batched import auto_chunk_for, grouped_batch_norms, per_task_linear, task_chunks
from .heads import head_factory
from .registries import BACKBONES
from .units import ConvBN, ConvSpec

__all__ = ["MTLModel", "UnitMTLModel", "PerTask", "TaskContext", "count_parameters",
           "build_task_networks"]


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    """Number of learnable scalars (``requires_grad``) in ``params``, each tensor counted once."""
    seen: set[int] = set()
    n = 0
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


class TaskContext:
    """Which task is active in the current forward pass; shared by all task-conditional units.

    A plain object (not a module, not state): the active task is a property of the *call*,
    set by :meth:`MTLModel.forward` right before the encoder runs.

    Batched mode (set by :meth:`UnitMTLModel.forward_tasks`): ``tasks`` is the tuple of tasks
    whose passes run together and ``batch`` the per-task batch size ``B``; units then receive
    ``(len(tasks) * B, ...)`` inputs, task-major, and ``task`` is None (so a unit that does not
    know batched mode fails loudly in :meth:`require` instead of computing the wrong thing).
    """

    __slots__ = ("task", "n_tasks", "tasks", "batch", "_index")

    def __init__(self, n_tasks: int):
        self.n_tasks = n_tasks
        self.task: int | None = None
        self.tasks: tuple[int, ...] | None = None
        self.batch: int = 0
        self._index: Tensor | None = None

    @property
    def batched(self) -> bool:
        return self.tasks is not None

    def set_tasks(self, tasks: Sequence[int] | None, batch: int = 0) -> None:
        """Enter (``tasks``) or leave (None) batched mode."""
        self.task = None if tasks is not None else self.task
        self.tasks = tuple(tasks) if tasks is not None else None
        self.batch = batch
        self._index = None

    def select(self, table: Tensor) -> Tensor:
        """Rows ``tasks`` of a per-task table ``(n_tasks, ...)`` (e.g. masks), in pass order: a
        view when the tasks are a contiguous ascending range (what :func:`task_chunks` gives),
        else one gather with an index built once per pass (no host-device copy per unit)."""
        tasks = self.tasks
        assert tasks is not None
        a = tasks[0]
        if tasks == tuple(range(a, a + len(tasks))):
            return table[a:a + len(tasks)]
        if self._index is None or self._index.device != table.device:
            self._index = torch.tensor(tasks, device=table.device)
        return table.index_select(0, self._index)

    def require(self) -> int:
        if self.task is None:
            if self.tasks is not None:
                raise RuntimeError("task-conditional unit without batched-task support called in a "
                                   "batched pass (model.forward_tasks); its model must report "
                                   "supports_batched_tasks = False")
            raise RuntimeError("task-conditional unit called without an active task; "
                               "call model(x, task=t)")
        return self.task


class PerTask(nn.ModuleList):
    """One sub-module per task; entry ``t`` is private to task ``t`` (see ``task_parameters``)."""


def build_task_networks(backbone: str, out_dims: Sequence[int], head: str | None = None,
                        head_kwargs: dict | None = None, **backbone_kwargs) -> tuple[PerTask, PerTask, int]:
    """One independent plain-conv (:class:`~mtlrepro.models.units.ConvBN`) backbone and head per
    task (single-task networks, the columns of cross-stitch): ``(encoders, heads, feature_dim)``.
    ``head`` / ``head_kwargs``: a registered head instead of the backbone's default."""
    builder = BACKBONES.get(backbone)
    nets, heads, feature_dim = [], [], 0
    for d in out_dims:
        bb = builder(ConvBN, **backbone_kwargs)
        nets.append(bb.encoder)
        heads.append(head_factory(bb.feature_dim, bb.make_head, head, head_kwargs)(d))
        feature_dim = bb.feature_dim
    return PerTask(nets), PerTask(heads), feature_dim


class MTLModel(nn.Module):
    """Multi-task model interface used by the trainer and the weighting methods.

    ``task_conditional``: True when ONE task is active per forward pass (task routing, max
    roaming, ETR, ETR-NLP, attentive); ``forward(x, task)`` then returns that task's head output
    ``(B, out_dims[task])``. Otherwise ``task`` must be None and ``forward`` returns the list of
    all ``T`` head outputs.
    """

    task_conditional: bool = False
    #: True when :meth:`forward_tasks` runs several tasks' passes as ONE batched pass (equal to the
    #: per-task loop up to float rounding); the synchronized step and ``forward_all`` use it then.
    supports_batched_tasks: bool = False
    n_tasks: int

    def _set_tasks(self, backbone: str, out_dims: Sequence[int] | None) -> None:
        """The task list every model validates and stores the same way."""
        if not out_dims:
            raise ValueError("out_dims must list at least one task")
        self.out_dims = [int(d) for d in out_dims]
        self.n_tasks = len(self.out_dims)
        self.backbone_name = backbone

    def forward(self, x: Tensor, task: int | None = None) -> Tensor | list[Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward_all(self, x: Tensor, task_chunk: int | str | None = None) -> list[Tensor]:
        """All tasks' outputs. Conditional models run every task's pass: batched
        (:meth:`forward_tasks`, ``task_chunk`` tasks per pass, see :func:`task_chunks`; None =
        ``$MTLREPRO_TASK_CHUNK``, default ``"auto"``) when :attr:`supports_batched_tasks`, else
        one pass per task."""
        if self.task_conditional:
            outs: list[Tensor] = []
            auto = auto_chunk_for(self, x, task_chunk)
            for chunk in task_chunks(self.n_tasks, task_chunk, x.device, auto_chunk=auto):
                outs.extend(self.forward_tasks(x, chunk))
            return outs
        return self(x)

    def forward_tasks(self, x: Tensor, tasks: Sequence[int]) -> list[Tensor]:
        """The outputs of ``tasks``' passes on ``x``, in that order (``model(x, task=t)`` each).

        Here: one pass per task (conditional) or a selection of ``model(x)``; models with
        :attr:`supports_batched_tasks` override it with one batched pass."""
        tasks = self._check_tasks(tasks)
        if self.task_conditional:
            return [self(x, task=t) for t in tasks]
        outs = self(x)
        return [outs[t] for t in tasks]

    def _check_tasks(self, tasks: Sequence[int]) -> list[int]:
        tasks = [int(t) for t in tasks]
        for t in tasks:
            if not 0 <= t < self.n_tasks:
                raise IndexError(f"task {t} out of range for {self.n_tasks} tasks")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"forward_tasks: tasks must be distinct, got {tasks}")
        return tasks

    # --- hard-sharing family ------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no task-independent representation")

    def decode(self, z: Tensor, task: int) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no task-independent representation")

    def last_shared_layer(self) -> nn.Module:
        raise NotImplementedError

    # --- parameter partition ------------------------------------------------------------------
    def _per_task_containers(self) -> list[PerTask]:
        return [m for m in self.modules() if isinstance(m, PerTask)]

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """Parameters private to ``task`` (its head and its entries of every ``PerTask``)."""
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task {task} out of range for {self.n_tasks} tasks")
        out: list[nn.Parameter] = []
        for c in self._per_task_containers():
            out.extend(c[task].parameters())
        return out

    def shared_parameters(self) -> list[nn.Parameter]:
        """Every parameter that is not private to one task."""
        private = {id(p) for c in self._per_task_containers() for p in c.parameters()}
        return [p for p in self.parameters() if id(p) not in private]

    def active_parameter_count(self, task: int = 0) -> int:
        """Learnable parameters used by ONE task's forward pass (shared + that task's private).

        For non-conditional models this is all learnable parameters. Masks (task routing, max
        roaming) do not reduce the count: a masked unit's weights are still part of the layer the
        task runs through (this is how the published 11.2M for TR/MR reads).
        """
        if not self.task_conditional:
            return count_parameters(self.parameters())
        return count_parameters(self.shared_parameters()) + count_parameters(self.task_parameters(task))

    # --- the model's own objective and optimizer ------------------------------------------------
    def regularization_loss(self) -> Tensor | None:
        """A term the model adds to the objective after the method's backward (None: nothing)."""
        return None

    def gate_parameters(self) -> list[nn.Parameter]:
        """Parameters stepped by their own optimizer (GatedMTL's gates; :mod:`mtlrepro.train.optim`)."""
        return []

    # --- schedule hooks -----------------------------------------------------------------------
    def on_train_step(self, step: int, steps_per_epoch: int) -> None:
        """Called once per training batch, BEFORE it is trained, with the global 0-based batch
        index (``epoch * steps_per_epoch + i``). No-op by default."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after training epoch ``epoch`` (0-based). No-op by default."""

    # --- checkpoints --------------------------------------------------------------------------
    def extra_state_for_checkpoint(self) -> dict:
        """Nothing: all model state (masks, usage counts, roaming counters) is in buffers."""
        return {}

    def load_extra_state(self, d: dict) -> None:
        if d:
            raise ValueError(f"{type(self).__name__} keeps no extra state, got keys {sorted(d)}")


class UnitMTLModel(MTLModel):
    """A backbone whose conv units come from :meth:`make_unit`, plus one head per task.

    Subclasses implement ``make_unit(spec)`` (and set ``task_conditional``). Backbone keyword
    arguments (e.g. ``width_mult``, ``track_running_stats``) pass through ``backbone_kwargs``;
    ``head`` / ``head_kwargs`` name a registered head (:data:`~mtlrepro.models.registries.HEADS`)
    instead of the backbone's default one.
    """

    def __init__(self, backbone: str, out_dims: list[int], head: str | None = None,
                 head_kwargs: dict | None = None, **backbone_kwargs):
        super().__init__()
        self._set_tasks(backbone, out_dims)
        self.ctx = TaskContext(self.n_tasks)
        bb = BACKBONES.get(backbone)(self.make_unit, **backbone_kwargs)
        self.encoder = bb.encoder
        self.feature_dim = bb.feature_dim
        make_head = head_factory(bb.feature_dim, bb.make_head, head, head_kwargs)
        self.heads = PerTask([make_head(d) for d in self.out_dims])

    def make_unit(self, spec: ConvSpec) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def units(self) -> list[nn.Module]:
        """The conv units in forward order (20 for ResNet18)."""
        return self.encoder.units()

    def last_shared_layer(self) -> nn.Module:
        return self.encoder.last_shared_layer()

    def forward(self, x: Tensor, task: int | None = None) -> Tensor | list[Tensor]:
        if self.task_conditional:
            if task is None:
                raise ValueError(f"{type(self).__name__} is task-conditional: call model(x, task=t) "
                                 f"or model.forward_all(x)")
            if not 0 <= task < self.n_tasks:
                raise IndexError(f"task {task} out of range for {self.n_tasks} tasks")
            self.ctx.tasks = None
            self.ctx.task = int(task)  # stays set after the call (no reset: thread-safe replicas)
            return self.heads[task](self.encoder(x))
        if task is not None:
            raise ValueError(f"{type(self).__name__} is not task-conditional: call model(x) "
                             f"(returns all tasks) or decode(encode(x), t)")
        z = self.encoder(x)
        return [h(z) for h in self.heads]

    # --- batched task passes ------------------------------------------------------------------
    @property
    def supports_batched_tasks(self) -> bool:  # type: ignore[override]
        """Conditional, ``forward`` not overridden, and every module reading the task context
        declares ``batched_tasks = True`` (its forward handles ``ctx.tasks``). Cached."""
        ok = self.__dict__.get("_batched_ok")
        if ok is None:
            ok = bool(self.task_conditional) and type(self).forward is UnitMTLModel.forward and all(
                getattr(type(m), "batched_tasks", False) for m in self.modules()
                if m is not self and isinstance(m.__dict__.get("ctx"), TaskContext))
            self.__dict__["_batched_ok"] = ok
        return ok

    def forward_tasks(self, x: Tensor, tasks: Sequence[int]) -> list[Tensor]:
        """``[model(x, task=t) for t in tasks]`` as ONE pass over ``x`` repeated ``len(tasks)``
        times (see :mod:`mtlrepro.models.batched`); falls back to the loop when not
        :attr:`supports_batched_tasks`."""
        tasks = self._check_tasks(tasks)
        if not self.task_conditional or len(tasks) <= 1 or not self.supports_batched_tasks:
            return super().forward_tasks(x, tasks)
        n, B = len(tasks), x.shape[0]
        self.ctx.set_tasks(tasks, B)
        try:
            with grouped_batch_norms(self, n, B):
                z = self.encoder(x.repeat(n, *([1] * (x.dim() - 1))))
                return per_task_linear([self.heads[t] for t in tasks], z)
        finally:
            self.ctx.set_tasks(None)
