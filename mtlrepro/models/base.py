"""The ``MTLModel`` interface every sharing scheme implements, and the plumbing they share.

Design (why it looks like this):

* A backbone (``resnet18``, ``vgg16``, ``segnet``; others by registering a builder) is written ONCE, and every
  convolution of it is built by a pluggable *conv unit factory* ``make_unit(spec: ConvSpec)``.
  A unit maps ``x`` to the *pre-activation* of that layer (conv -> BN -> whatever the scheme
  adds, e.g. a task mask), so the sharing schemes are conv-unit variants, not copies of ResNet.
* Units that depend on the active task read it from a :class:`TaskContext` object shared by the
  whole model (set once per forward pass), instead of every module holding its own copy.
* Task-private sub-modules live in :class:`PerTask` containers (a ``ModuleList`` with one entry
  per task); ``task_parameters(t)`` collects entry ``t`` of every ``PerTask`` in the model, and
  everything else is shared. The task heads are a ``PerTask`` too.
* Everything non-learnable (masks, fixed primitive weights, noise seeds, roaming counters) is a
  registered buffer, so ``state_dict`` covers it and it never counts as a parameter.
* Batched task passes (``forward_tasks`` / ``forward_all``): instead of one forward per task, the
  input is repeated ``T`` times into one ``(T*B, ...)`` batch (task-major: rows ``i*B:(i+1)*B``
  belong to ``tasks[i]``) and :class:`TaskContext` holds the whole task list. Shared layers see
  the big batch; task-conditional units apply their per-task op in batched form (channel masks
  as a ``(T, 1, C, 1, 1)`` multiply, per-task convs as one grouped conv - per-task slices on CPU -
  and one BN kernel, per-task linears as a batched matmul); every BatchNorm that normalises with
  batch statistics computes them per task group and updates its running statistics exactly as
  ``T`` sequential passes would (see :func:`grouped_batch_norm`). Results equal the per-task
  loop up to float rounding (exactly, in float64). How many tasks share a pass:
  :func:`task_chunks` (``$MTLREPRO_TASK_CHUNK``).
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from mtlrepro.registry import Registry

__all__ = [
    "MTLModel", "UnitMTLModel", "ConvSpec", "ConvBN", "PerTask", "TaskContext", "Backbone",
    "BACKBONES", "SHARING", "count_parameters", "round_half_up", "task_chunks", "chunk_setting", "TASK_CHUNK_ENV", "CPU_AUTO_CHUNK",
    "tasks_to_channels", "channels_to_tasks", "grouped_batch_norm", "per_task_batch_norm",
    "per_task_conv_bn", "per_task_linear", "grouped_batch_norms", "build_task_networks",
]


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


@dataclass(frozen=True)
class ConvSpec:
    """Everything a conv unit factory needs to know about the convolution it replaces.

    ``index`` is the unit's position in forward order (0 = stem), ``role`` one of
    ``"stem"``, ``"conv1"``, ``"conv2"`` (the two convs of a residual block), ``"downsample"``
    (the 1x1 projection shortcut) or ``"conv"`` (plain conv stacks: VGG/SegNet).
    ``norm=False`` means no BatchNorm after the conv (the unit then returns the conv output).
    """

    in_ch: int
    out_ch: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    index: int = 0
    role: str = "conv"
    norm: bool = True
    bias: bool = False
    track_running_stats: bool = True

    def with_channels(self, out_ch: int) -> "ConvSpec":
        return replace(self, out_ch=out_ch)


class ConvBN(nn.Sequential):
    """conv -> BN, the standard (hard-sharing) conv unit; returns the pre-activation."""

    def __init__(self, spec: ConvSpec):
        layers: list[nn.Module] = [nn.Conv2d(spec.in_ch, spec.out_ch, spec.kernel_size, spec.stride,
                                             spec.padding, bias=spec.bias)]
        if spec.norm:
            layers.append(nn.BatchNorm2d(spec.out_ch, track_running_stats=spec.track_running_stats))
        super().__init__(*layers)
        self.spec = spec

    @property
    def conv(self) -> nn.Conv2d:
        return self[0]  # type: ignore[return-value]


# --- batched task passes ----------------------------------------------------------------------
TASK_CHUNK_ENV = "MTLREPRO_TASK_CHUNK"  # tasks per batched pass: N, 0 / "all", "auto" (default)
CPU_AUTO_CHUNK = 4                      # "auto" on CPU: tasks per batched pass (see task_chunks)


def chunk_setting(chunk: int | str | None = None) -> int | str:
    """The tasks-per-pass setting as a number >= 0 or ``"auto"`` (None: ``$MTLREPRO_TASK_CHUNK``)."""
    if chunk is None:
        chunk = os.environ.get(TASK_CHUNK_ENV, "").strip() or "auto"
    if isinstance(chunk, str):
        raw = chunk.strip().lower()
        if raw in ("auto", "all"):
            return "auto" if raw == "auto" else 0
        try:
            return max(0, int(raw))
        except ValueError:
            raise ValueError(f"task chunk ({TASK_CHUNK_ENV}) must be a number of tasks per "
                             f"batched pass, 0 / 'all' or 'auto'; got {chunk!r}") from None
    return max(0, int(chunk))


def task_chunks(tasks: int | Sequence[int], chunk: int | str | None = None,
                device: torch.device | str | None = None, auto_chunk: int | None = None) -> list[list[int]]:
    """Split ``tasks`` (a count or a list) into consecutive chunks, one batched pass each.

    ``chunk``: tasks per batched pass - a positive int (1 = the per-task loop), ``0`` / ``"all"``
    (every task in one pass), ``"auto"``, or None to read ``$MTLREPRO_TASK_CHUNK`` (unset =
    ``"auto"``). ``"auto"``: :data:`CPU_AUTO_CHUNK` (4) on CPU; on accelerators ``auto_chunk``
    (what fits in memory, :func:`~mtlrepro.models.task_memory.memory_task_chunk`), else all. Why:
    a batched pass does the same FLOPs as the loop, and a CPU already runs the loop's convolutions
    at 0.57-0.70 of its GEMM peak (``benchmarks/test_roofline.py``), so batching can only save
    per-call overhead - while all tasks at once (``T``-times the working set) loses cache
    locality. Measured (``benchmarks/test_batched_tasks.py``, one thread; loop time / chunked
    time, > 1 = faster): ResNet18 CelebA-40, B = 16: 4 tasks per pass 0.99 / 1.09 (eval Max
    Roaming / ETR-NLP), 1.10 / 1.23 (synchronized step); all 40 at once 0.75-0.96. SegNet mr8,
    32x64, B = 4: 4 per pass 0.92 / 1.02 (eval), 1.17 / 1.09 (step).
    Results do not depend on the chunking beyond float rounding; smaller chunks also bound a
    pass's memory (``chunk * B`` rows).
    """
    tasks = list(range(tasks)) if isinstance(tasks, int) else [int(t) for t in tasks]
    setting = chunk_setting(chunk)
    if setting == "auto":
        dev = torch.device(device) if device is not None else torch.device("cpu")
        setting = CPU_AUTO_CHUNK if dev.type == "cpu" else (auto_chunk or 0)
    chunk = int(setting)
    if chunk <= 0 or chunk >= len(tasks):
        return [tasks] if tasks else []
    return [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]


def tasks_to_channels(x: Tensor, n: int) -> Tensor:
    """``(n*B, C, *S)`` task-major rows -> ``(B, n*C, *S)``: task ``i``'s channels at ``i*C:(i+1)*C``."""
    return x.unflatten(0, (n, -1)).transpose(0, 1).flatten(1, 2)


def channels_to_tasks(y: Tensor, n: int) -> Tensor:
    """Inverse of :func:`tasks_to_channels`: ``(B, n*C, *S)`` -> ``(n*B, C, *S)``."""
    return y.unflatten(1, (n, -1)).transpose(0, 1).flatten(0, 1)


def _uses_batch_stats(bn: _BatchNorm) -> bool:
    return bn.training or bn.running_mean is None


def _updates_running_stats(bn: _BatchNorm) -> bool:
    return bn.training and bn.track_running_stats and bn.running_mean is not None


def _batch_stats_norm(xc: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      want_stats: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Normalise ``xc`` per channel with its batch statistics (BN's training-mode kernel).

    With ``want_stats`` also returns the per-channel batch mean and UNBIASED variance - exactly
    what BN would blend into its running statistics - read out of the same kernel by giving it
    scratch running buffers and momentum 1.
    """
    if not want_stats:
        return F.batch_norm(xc, None, None, weight, bias, True, 0.0, eps), None, None
    c = xc.shape[1]
    dtype = weight.dtype if weight is not None else torch.float32
    mean = torch.zeros(c, device=xc.device, dtype=dtype)
    var = torch.ones(c, device=xc.device, dtype=dtype)
    y = F.batch_norm(xc, mean, var, weight, bias, True, 1.0, eps)
    return y, mean, var


@torch.no_grad()
def _sequential_running_update(bn: _BatchNorm, means: Tensor, vars_: Tensor) -> None:
    """Update ``bn``'s running statistics as ``len(means)`` consecutive training passes would,
    the ``i``-th with batch mean ``means[i]`` and unbiased batch variance ``vars_[i]``.

    Momentum ``m``: ``r <- (1-m)^T r + sum_i m (1-m)^(T-1-i) s_i`` (closed form of T steps in order);
    momentum None (cumulative average): ``r <- (n0 r + sum_i s_i) / (n0 + T)``.
    """
    T = means.shape[0]
    rm, rv = bn.running_mean, bn.running_var
    means, vars_ = means.to(rm.dtype), vars_.to(rv.dtype)
    if bn.momentum is None:
        n0 = bn.num_batches_tracked.to(rm.dtype)
        rm.mul_(n0).add_(means.sum(0)).div_(n0 + T)
        rv.mul_(n0).add_(vars_.sum(0)).div_(n0 + T)
    else:
        m = float(bn.momentum)
        coef = (m * (1.0 - m) ** torch.arange(T - 1, -1, -1, dtype=torch.float64)).to(rm.device, rm.dtype)
        rm.mul_((1.0 - m) ** T).add_(coef @ means)
        rv.mul_((1.0 - m) ** T).add_(coef @ vars_)
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(T)


def grouped_batch_norm(bn: _BatchNorm, x: Tensor, n: int) -> Tensor:
    """``bn`` applied to ``n`` task groups of a task-major ``(n*B, C, *S)`` batch as ``n``
    separate calls would: batch statistics per group, running statistics updated ``n`` times
    in order (closed form). With running statistics in eval mode this is just ``bn(x)``.
    """
    if not _uses_batch_stats(bn) or n == 1:
        return type(bn).forward(bn, x)
    update = _updates_running_stats(bn)
    w = bn.weight.repeat(n) if bn.weight is not None else None
    b = bn.bias.repeat(n) if bn.bias is not None else None
    y, mean, var = _batch_stats_norm(tasks_to_channels(x, n), w, b, bn.eps, update)
    if update:
        _sequential_running_update(bn, mean.view(n, -1), var.view(n, -1))
    return channels_to_tasks(y, n)


def per_task_batch_norm(bns: Sequence[_BatchNorm], yc: Tensor) -> Tensor:
    """Task ``i``'s own BN ``bns[i]`` on channels ``i*C:(i+1)*C`` of a ``(B, n*C, *S)`` tensor
    (the layout of a grouped per-task conv's output); one training pass each for the running stats."""
    n = len(bns)
    bn0 = bns[0]
    if any(_uses_batch_stats(bn) != _uses_batch_stats(bn0) for bn in bns):
        raise RuntimeError("per-task BatchNorms in different modes (train / eval) in one batched pass")
    w = torch.cat([bn.weight for bn in bns]) if bn0.weight is not None else None
    b = torch.cat([bn.bias for bn in bns]) if bn0.bias is not None else None
    if not _uses_batch_stats(bn0):
        rm = torch.cat([bn.running_mean for bn in bns])
        rv = torch.cat([bn.running_var for bn in bns])
        return F.batch_norm(yc, rm, rv, w, b, False, 0.0, bn0.eps)
    update = _updates_running_stats(bn0)
    y, mean, var = _batch_stats_norm(yc, w, b, bn0.eps, update)
    if update:
        _per_module_running_update(bns, mean.view(n, -1), var.view(n, -1))
    return y


@torch.no_grad()
def _per_module_running_update(bns: Sequence[_BatchNorm], means: Tensor, vars_: Tensor) -> None:
    """One training-pass running-stat update of each ``bns[i]`` with ``means[i]``, ``vars_[i]``."""
    tracked = [bn.num_batches_tracked for bn in bns if bn.num_batches_tracked is not None]
    if tracked:
        torch._foreach_add_(tracked, 1)
    rms = [bn.running_mean for bn in bns]
    rvs = [bn.running_var for bn in bns]
    means, vars_ = means.to(rms[0].dtype), vars_.to(rvs[0].dtype)
    moms = {bn.momentum for bn in bns}
    if len(moms) == 1 and None not in moms:
        f = float(moms.pop())
        torch._foreach_mul_(rms, 1.0 - f)
        torch._foreach_add_(rms, list(means.unbind(0)), alpha=f)
        torch._foreach_mul_(rvs, 1.0 - f)
        torch._foreach_add_(rvs, list(vars_.unbind(0)), alpha=f)
        return
    for bn, rm, rv, m, v in zip(bns, rms, rvs, means, vars_):
        f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else float(bn.momentum)
        rm.mul_(1.0 - f).add_(m, alpha=f)
        rv.mul_(1.0 - f).add_(v, alpha=f)


def _is_plain_conv_bn(m: nn.Module) -> bool:
    """A ``ConvBN`` (conv [-> BN]) whose conv can run as a slice of a grouped conv."""
    if type(m) is not ConvBN or not 1 <= len(m) <= 2:
        return False
    c = m[0]
    return (type(c) is nn.Conv2d and c.padding_mode == "zeros" and isinstance(c.padding, tuple)
            and (len(m) == 1 or type(m[1]) is nn.BatchNorm2d))


def per_task_conv_bn(mods: Sequence[nn.Module], x: Tensor, grouped: bool | None = None) -> Tensor:
    """``mods[i](x_i)`` for each task group ``x_i`` of a task-major ``(n*B, C_in, H, W)`` batch,
    returned task-major ``(n*B, C_out, H', W')``.

    Plain :class:`ConvBN` branches: the convolutions produce the ``(B, n*C_out, H', W')`` layout
    directly - as ONE grouped convolution (the ``n`` weights stacked, ``groups = n`` on the
    ``(B, n*C_in, H, W)`` view) on accelerators, or as ``n`` convolutions on the tasks' rows
    concatenated along channels on CPU, where oneDNN's grouped kernel measured 2-4x slower than
    the slices (``grouped`` forces either) - then ONE BN kernel over the ``n*C_out`` channels
    (each task's own BN parameters and running statistics). Any other module type runs task by
    task on its rows.
    """
    n = len(mods)
    if not all(_is_plain_conv_bn(m) for m in mods):
        return torch.cat([m(xi) for m, xi in zip(mods, x.chunk(n))], dim=0)
    c0: nn.Conv2d = mods[0][0]
    if grouped is None:
        grouped = x.device.type != "cpu"
    if grouped:
        w = torch.cat([m[0].weight for m in mods])
        b = torch.cat([m[0].bias for m in mods]) if c0.bias is not None else None
        y = F.conv2d(tasks_to_channels(x, n), w, b, c0.stride, c0.padding, c0.dilation, n * c0.groups)
    else:
        y = torch.cat([m[0](xi) for m, xi in zip(mods, x.chunk(n))], dim=1)
    if len(mods[0]) == 2:
        y = per_task_batch_norm([m[1] for m in mods], y)
    return channels_to_tasks(y, n)


def per_task_linear(mods: Sequence[nn.Module], z: Tensor) -> list[Tensor]:
    """``mods[i](z_i)`` for each task group of a task-major ``(n*B, ...)`` batch, as a list.

    ``nn.Linear`` modules of one shape applied to ``(n*B, F)`` run as one batched matmul."""
    n = len(mods)
    shapes = {tuple(m.weight.shape) if type(m) is nn.Linear else None for m in mods}
    if z.dim() == 2 and len(shapes) == 1 and None not in shapes:
        w = torch.stack([m.weight for m in mods])                 # (n, out, in)
        zt = z.unflatten(0, (n, -1))                               # (n, B, in)
        if mods[0].bias is not None:
            bias = torch.stack([m.bias for m in mods]).unsqueeze(1)
            out = torch.baddbmm(bias, zt, w.transpose(1, 2))
        else:
            out = torch.bmm(zt, w.transpose(1, 2))
        return list(out.unbind(0))
    return [m(zi) for m, zi in zip(mods, z.chunk(n))]


class _GroupedBNForward:
    """Replaces a BatchNorm's ``forward`` during a batched pass: inputs with ``rows`` rows (the
    ``n*B`` task-major batch) are normalised per task group; anything else as usual."""

    __slots__ = ("bn", "n", "rows")

    def __init__(self, bn: _BatchNorm, n: int, rows: int):
        self.bn, self.n, self.rows = bn, n, rows

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] == self.rows:
            return grouped_batch_norm(self.bn, x, self.n)
        return type(self.bn).forward(self.bn, x)


@contextmanager
def grouped_batch_norms(module: nn.Module, n: int, batch: int) -> Iterator[None]:
    """Within the block, every BatchNorm of ``module`` that normalises with batch statistics
    (training mode, or no running statistics) treats an ``(n*batch, ...)`` input as ``n`` task
    groups (:func:`grouped_batch_norm`). Backbone-agnostic: it patches the BN modules wherever
    they are, so shared layers of any backbone behave as in ``n`` separate passes."""
    patched = []
    try:
        if n > 1:
            for m in module.modules():
                if isinstance(m, _BatchNorm) and _uses_batch_stats(m) and "forward" not in m.__dict__:
                    m.__dict__["forward"] = _GroupedBNForward(m, n, n * batch)
                    patched.append(m)
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


UnitFactory = Callable[[ConvSpec], nn.Module]



@dataclass
class Backbone:
    """What a backbone builder returns.

    ``encoder(x)`` gives the shared representation fed to the heads (``(B, feature_dim)`` for
    classification backbones; a feature map for dense ones) and must implement ``units()`` (its
    conv units in forward order) and ``last_shared_layer()`` (the last module with parameters,
    for GradNorm); ``make_head(out_dim)`` builds one task head (called at construction only, so
    models hold no closures and deep-copy / pickle cleanly).
    """

    encoder: nn.Module
    feature_dim: int
    make_head: Callable[[int], nn.Module]


# name -> builder(make_unit: UnitFactory, **backbone_kwargs) -> Backbone
BACKBONES: Registry[Callable[..., Backbone]] = Registry("backbone")
# name -> MTLModel subclass, constructed as cls(backbone=..., out_dims=..., **kwargs)
SHARING: Registry[type["MTLModel"]] = Registry("sharing scheme")


def build_task_networks(backbone: str, out_dims: Sequence[int], **backbone_kwargs) -> tuple["PerTask", "PerTask", int]:
    """One independent plain-conv backbone and head per task (single-task networks, the columns
    of cross-stitch): ``(encoders, heads, feature_dim)``."""
    builder = BACKBONES.get(backbone)
    nets, heads, feature_dim = [], [], 0
    for d in out_dims:
        bb = builder(ConvBN, **backbone_kwargs)
        nets.append(bb.encoder)
        heads.append(bb.make_head(d))
        feature_dim = bb.feature_dim
    return PerTask(nets), PerTask(heads), feature_dim


def round_half_up(x: float) -> int:
    """round() without banker's rounding: 57.6 -> 58, 0.5 -> 1."""
    return int(math.floor(x + 0.5 + 1e-9))


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
            from .task_memory import auto_chunk_for
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
    arguments (e.g. ``width_mult``, ``track_running_stats``) pass through ``backbone_kwargs``.
    """

    def __init__(self, backbone: str, out_dims: list[int], **backbone_kwargs):
        super().__init__()
        self._set_tasks(backbone, out_dims)
        self.ctx = TaskContext(self.n_tasks)
        bb = BACKBONES.get(backbone)(self.make_unit, **backbone_kwargs)
        self.encoder = bb.encoder
        self.feature_dim = bb.feature_dim
        self.heads = PerTask([bb.make_head(d) for d in self.out_dims])

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
        times (see the module docstring); falls back to the loop when not
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
