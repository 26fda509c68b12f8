r"""Gradient conflict per shared module: CoNAL's Table 1 instrument (Zhang et al., AAAI 2023).

**Definition** (CoNAL, Sec. 1 and the caption of Table 1: "The ratio of negative cosine
similarities (%) between the gradient of different tasks with respect to shared parameters.
:math:`\{f_S^{(1)},\dots,f_S^{(5)}\}` denotes the modules in the sharing architecture [...]. Ratio
is calculated by going through all samples in the training set"; the cosine "between gradients
of different tasks with respect to shared parameters", following Du et al. 2018 / Yu et al. 2020a;
per module as in its conflict-noticing Eq. (5): :math:`\cos(\mathrm{grad}_i^{(p)},
\mathrm{grad}_j^{(p)})` with :math:`\mathrm{grad}_t^{(p)} = \nabla_{\theta_S^p} L_t`). For every
shared module :math:`p`, with batches :math:`b = 1..B` covering every training sample once and
the :math:`\binom{T}{2}` unordered task pairs :math:`i < j`:

.. math::
    g_t^{(p)}(b) = \nabla_{\theta_S^p} L_t(\text{batch } b), \qquad
    \text{ratio}_p = \frac{100}{B\binom{T}{2}} \sum_b \sum_{i<j}
    \mathbf 1\bigl[\cos(g_i^{(p)}(b), g_j^{(p)}(b)) < 0\bigr] \;[\%].

The paper's Appendix A.8 (per-sample or per-batch gradients, batch size) is not in the seed text,
so the batch size is an option: the run's training batch size by default (the gradients the
optimizer sees; "batch by batch"), 1 for per-sample gradients (then use ``bn_mode="eval"``:
BatchNorm cannot normalise one sample in training mode). The batches are the training split in
order, the remainder merged into the last batch (so every sample counts once, and no batch has
one sample). A pair with a zero gradient (cosine undefined) counts as not negative and is also
counted as ``undefined``. The per-task gradients come from the one engine,
:func:`mtlrepro.methods.gradients.task_jacobian` (one batched ``autograd.grad`` per batch); the
Gramian of each module's block is taken in float64.

**Modules** (:func:`shared_modules`, driven by the staged-backbone protocol,
:mod:`mtlrepro.models.backbones.protocol`): ``stem`` = the encoder's parameters outside its
stages (when it has any), then one module per stage, named by :data:`STAGE_NAMES`:

==================  ========================================================================
backbone            modules (``f_S^1``, ``f_S^2``, ...)
==================  ========================================================================
resnet50_dilated    CoNAL's own (a later issue adds its entry): stem (conv1 + bn1 + ReLU + max
                    pool), layer1, layer2, layer3, layer4 = CoNAL's :math:`f_S^{(1..5)}`
resnet18            stem (7x7 conv + BN, then max pool), layer1, layer2, layer3, layer4: the
                    same five-module split, the analogue of :math:`f_S^{(1..5)}`
segnet              enc1 .. enc5, dec1 .. dec5 (no stem: the first conv is in enc1)
vgg16               conv1 .. conv5 (no stem)
==================  ========================================================================

Only shared parameters count (``model.shared_parameters()``); shared parameters outside the
staged encoder (none for hard sharing) form a last module ``other`` so that nothing is dropped.

Side effects: none on the run. :func:`measure_conflicts` puts the model in the requested mode for
the forwards and restores its mode, every buffer (BN running statistics) and the RNG states
afterwards, and never touches ``.grad``; a run that measures after every epoch trains exactly as
one that does not.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .methods.gradients import task_jacobian

__all__ = ["STAGE_NAMES", "SharedModule", "shared_modules", "training_batches", "batch_conflicts",
           "ConflictResult", "measure_conflicts", "conflict_table", "paper_label"]

#: backbone name -> the names of its encoder's stages, in forward order (the module mapping as data)
STAGE_NAMES: dict[str, tuple[str, ...]] = {
    "resnet18": ("layer1", "layer2", "layer3", "layer4"),
    "resnet50_dilated": ("layer1", "layer2", "layer3", "layer4"),
    "segnet": ("enc1", "enc2", "enc3", "enc4", "enc5", "dec1", "dec2", "dec3", "dec4", "dec5"),
    "vgg16": ("conv1", "conv2", "conv3", "conv4", "conv5"),
}
#: row labels as CoNAL prints them
ARCHITECTURE_LABELS = {"hard_sharing": "HPS", "ltb_supernet": "LTB", "conal_supernet": "CoNAL"}
#: a search method is the architecture's own learning rule, not a weighting on top of it
SEARCH_METHODS = {"ltb_search", "conal_search"}


@dataclass(frozen=True)
class SharedModule:
    """One shared module: a name and its trainable shared parameters."""

    name: str
    params: tuple[nn.Parameter, ...]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def _as_module(name: str, m: nn.Module | Sequence[nn.Parameter], shared: set[int]) -> SharedModule:
    params = m.parameters() if isinstance(m, nn.Module) else m
    return SharedModule(name, tuple(p for p in params if p.requires_grad and id(p) in shared))


def shared_modules(model: nn.Module) -> list[SharedModule]:
    """The model's shared modules in forward order (see the module docstring for the mapping).

    Needs a model with ``shared_parameters()`` and a staged ``model.encoder``; raises
    ``ValueError`` for schemes without one shared encoder (cross-stitch, single-task)."""
    from .models.backbones import StagedBackbone

    if hasattr(model, "conflict_modules"):   # trees (branched, LTB's supernet): their shared copies per module
        modules = [SharedModule(name, tuple(p for p in params if p.requires_grad))
                   for name, params in model.conflict_modules()]
        modules = [m for m in modules if m.params]
        if not modules:
            raise ValueError(f"{type(model).__name__}: no module is shared by two tasks")
        return modules
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, StagedBackbone):
        raise ValueError(f"{type(model).__name__} has no shared staged encoder (model.encoder); "
                         f"pass the modules explicitly")
    shared = {id(p) for p in model.shared_parameters() if p.requires_grad}
    stages = list(encoder.stages)
    names = STAGE_NAMES.get(getattr(model, "backbone_name", ""), ())
    if len(names) != len(stages):
        names = tuple(f"stage{s + 1}" for s in range(len(stages)))
    in_stages = {id(p) for st in stages for p in st.parameters()}
    stem = [p for p in encoder.parameters() if id(p) not in in_stages]
    modules = [_as_module("stem", stem, shared)] + [_as_module(n, st, shared) for n, st in zip(names, stages)]
    covered = {id(p) for m in modules for p in m.params}
    other = [p for p in model.shared_parameters() if p.requires_grad and id(p) not in covered]
    modules.append(_as_module("other", other, shared))
    modules = [m for m in modules if m.params]
    if not modules:
        raise ValueError(f"{type(model).__name__}: no trainable shared parameters in its encoder")
    return modules


def _resolve(model: nn.Module, modules) -> list[SharedModule]:
    if modules is None:
        return shared_modules(model)
    shared = {id(p) for p in model.shared_parameters()} if hasattr(model, "shared_parameters") else None
    out = []
    for m in modules:
        if isinstance(m, SharedModule):
            out.append(m)
        else:
            name, mod = m
            params = list(mod.parameters() if isinstance(mod, nn.Module) else mod)
            out.append(_as_module(name, params, shared if shared is not None else {id(p) for p in params}))
    empty = [m.name for m in out if not m.params]
    if empty:
        raise ValueError(f"modules without trainable shared parameters: {empty}")
    return out


def training_batches(problem, batch_size: int) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """Every training sample once, in order, ``batch_size`` at a time; the remainder (fewer than
    ``batch_size`` samples) joins the last batch. Targets as the trainer sees them."""
    n = len(problem.train)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    expand = getattr(problem, "batch_targets", None)
    starts = list(range(0, max(n - batch_size, 0) + 1, batch_size)) if n >= batch_size else [0]
    for k, a in enumerate(starts):
        b = n if k == len(starts) - 1 else a + batch_size
        targets = [t[a:b] for t in problem.train.targets]
        yield problem.prepare(problem.train.inputs[a:b]), (expand(targets) if expand else targets)


def batch_conflicts(losses: torch.Tensor, modules: Sequence[SharedModule], *, batched: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""For one batch's task losses ``(T,)``: ``(negative, undefined, cosine)``, each ``(M, P)``
    over the ``M`` modules and the ``P`` pairs ``i < j`` (``torch.triu_indices`` order):
    :math:`\cos(g_i^{(p)}, g_j^{(p)}) < 0`, a zero gradient in the pair, and the cosine (0 where
    undefined). One Jacobian of all modules' parameters from the engine, then per module the
    float64 Gramian of its columns."""
    params = [p for m in modules for p in m.params]
    J, _ = task_jacobian(losses, params, batched=batched)
    T = losses.shape[0]
    iu = torch.triu_indices(T, T, 1, device=J.device)
    neg, undef, cos = [], [], []
    for block in J.split([m.numel for m in modules], dim=1):
        block = block.to(torch.float64)
        G = block @ block.T
        gij, gii, gjj = G[iu[0], iu[1]], G.diagonal()[iu[0]], G.diagonal()[iu[1]]
        zero = (gii == 0) | (gjj == 0)
        neg.append((gij < 0) & ~zero)
        undef.append(zero)
        cos.append(torch.where(zero, torch.zeros_like(gij), gij / (gii * gjj).clamp_min(1e-300).sqrt()))
    return torch.stack(neg), torch.stack(undef), torch.stack(cos)


@dataclass
class ConflictResult:
    """Counts over the training split; :attr:`ratio` is Table 1's number (%). JSON via :meth:`to_dict`."""

    modules: list[str]
    task_names: list[str]
    batches: int
    samples: int
    batch_size: int
    bn_mode: str
    negative: dict[str, int]                    # module -> number of (batch, pair) with cos < 0
    undefined: dict[str, int]                   # module -> (batch, pair) with a zero gradient
    mean_cosine: dict[str, float]               # module -> mean over (batch, pair) of the cosine
    pair_negative: dict[str, dict[str, int]] = field(default_factory=dict)  # module -> "a|b" -> count
    module_params: dict[str, int] = field(default_factory=dict)

    @property
    def pairs(self) -> list[str]:
        T = len(self.task_names)
        return [f"{self.task_names[i]}|{self.task_names[j]}" for i in range(T) for j in range(i + 1, T)]

    @property
    def ratio(self) -> dict[str, float]:
        """Module -> percentage of (batch, task pair) with a negative cosine."""
        n = self.batches * len(self.pairs)
        return {m: (100.0 * self.negative[m] / n if n else math.nan) for m in self.modules}

    def to_dict(self) -> dict[str, Any]:
        return dict(asdict(self), pairs=self.pairs, ratio=self.ratio,
                    definition="100 * #{(batch, task pair i<j): cos(grad_i, grad_j) < 0 on the module's "
                               "shared parameters} / (batches * pairs); every training sample once")


@contextmanager
def _untouched(model: nn.Module, mode: bool):
    """Run with ``model.train(mode)``; restore the mode, every buffer and the RNG states after."""
    was = model.training
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    rng = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    model.train(mode)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        torch.set_rng_state(rng)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        model.train(was)


def measure_conflicts(model: nn.Module, problem, batch_size: int, modules=None, *,
                      max_batches: int | None = None, bn_mode: str = "train", batched: bool = True) -> dict:
    """CoNAL Table 1's ratios for ``model`` on ``problem``'s training split (module docstring).

    ``modules``: None (:func:`shared_modules`) or a list of :class:`SharedModule` / ``(name,
    nn.Module or parameters)``; ``bn_mode``: ``"train"`` (batch statistics, as in training) or
    ``"eval"`` (running statistics); ``max_batches``: stop early (the result says how many
    samples it saw). Returns :meth:`ConflictResult.to_dict` (JSON-ready: what a run record or
    the CLI stores). The model is left as it was (see the module docstring)."""
    if bn_mode not in ("train", "eval"):
        raise ValueError(f"bn_mode must be 'train' or 'eval', got {bn_mode!r}")
    mods = _resolve(model, modules)
    names = [m.name for m in mods]
    if len(set(names)) != len(names):
        raise ValueError(f"module names must be distinct, got {names}")
    task_names = list(getattr(problem, "task_names", None) or [f"task{t}" for t in range(problem.n_tasks)])
    if len(task_names) < 2:
        raise ValueError("gradient conflict needs at least two tasks")
    neg = undef = cos = None
    n_batches = n_samples = 0
    with _untouched(model, bn_mode == "train"):
        for x, targets in training_batches(problem, batch_size):
            if max_batches is not None and n_batches >= max_batches:
                break
            outs = model.forward_all(x) if hasattr(model, "forward_all") else model(x)
            losses = torch.stack([problem.task_loss(t, o, y) for t, (o, y) in enumerate(zip(outs, targets))])
            b_neg, b_undef, b_cos = batch_conflicts(losses, mods, batched=batched)
            del losses, outs
            neg = b_neg.long() if neg is None else neg + b_neg
            undef = b_undef.long() if undef is None else undef + b_undef
            cos = b_cos if cos is None else cos + b_cos
            n_batches += 1
            n_samples += x.shape[0]
    if neg is None:
        raise ValueError("the training split is empty")
    neg, undef, cos = neg.cpu(), undef.cpu(), cos.cpu()   # one host sync per measurement
    res = ConflictResult(
        modules=names, task_names=task_names, batches=n_batches, samples=n_samples, batch_size=batch_size,
        bn_mode=bn_mode, negative={m: int(neg[k].sum()) for k, m in enumerate(names)},
        undefined={m: int(undef[k].sum()) for k, m in enumerate(names)},
        mean_cosine={m: float(cos[k].mean()) / n_batches for k, m in enumerate(names)},
        module_params={m.name: m.numel for m in mods})
    res.pair_negative = {m: dict(zip(res.pairs, (int(v) for v in neg[k]))) for k, m in enumerate(names)}
    return res.to_dict()


def paper_label(sharing: str, weighting: str = "equal") -> str:
    """The row label CoNAL would print ("HPS"), with the weighting when it is not the plain sum."""
    label = ARCHITECTURE_LABELS.get(sharing, sharing)
    return label if weighting in ("equal", "hard_sharing", *SEARCH_METHODS) else f"{label} ({weighting})"


def conflict_table(rows: Sequence[tuple[str, dict]], fmt: str = "github") -> str:
    """Table 1's shape: one row per (label, :func:`measure_conflicts` result), one column per
    module ``f_S^k (name)``, ratios in % with two decimals as CoNAL prints them. Rows with
    different module lists get the union of columns (blank where a row lacks a module)."""
    from tabulate import tabulate

    modules: list[str] = []
    for _, r in rows:
        modules += [m for m in r["modules"] if m not in modules]
    headers = ["Module"] + [f"f_S^{k + 1} ({m})" for k, m in enumerate(modules)]
    body = [[label] + [f"{r['ratio'][m]:.2f}" if m in r["ratio"] else "" for m in modules] for label, r in rows]
    return tabulate(body, headers=headers, tablefmt=fmt, disable_numparse=True)
