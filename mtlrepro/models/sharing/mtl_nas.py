r"""MTL-NAS (Gao, Bai, Jie, Ma, Jia & Liu, "MTL-NAS: Task-Agnostic Neural Architecture Search
towards General-Purpose Multi-Task Learning", CVPR 2020; code ``bhpfelix/MTLNAS``): fixed
single-task backbones, one per task, joined by searched **cross-task fusion edges**. This module
holds the search space's pieces and the retraining scheme ``mtl_nas`` (a chosen edge set); the
supernet ``mtl_nas_supernet`` is in :mod:`.mtl_nas_supernet`.

**Fusion points** (as :mod:`.nddr_cnn`): the stem's output (when the backbone declares a learned
stem, ``stem_width``) and every stage's output of the
:class:`~mtlrepro.models.backbones.protocol.StagedBackbone`, widths :math:`C_0 .. C_{P-1}`
(dilated ResNet-50: 64, 256, 512, 1024, 2048). With :math:`x_t^p` task ``t``'s map at point ``p``
*before* fusion (the authors' ``xs``), an edge :math:`(u, q) \to (t, p)` (``u != t``, ``q <= p``)
feeds the source :math:`x_u^q` into task ``t``'s fusion at ``p``:

.. math::
    y_t^p = \mathrm{ReLU}\big(\mathrm{BN}\big(W_t^p\,[x_t^p,\; m_1 R(x_{u_1}^{q_1}),\; ..,\; m_d R(x_{u_d}^{q_d})]\big)\big),

``W`` a bias-free 1x1 conv :math:`C_p + \sum_i C_{q_i} \to C_p`, ``R`` the bilinear resize to
:math:`x_t^p`'s size (identity when equal), ``m_i`` the edge's connectivity (1 here; the
supernet's relaxed weights there); task ``t``'s next stage reads :math:`y_t^p`. A target without
edges keeps :math:`y_t^p = x_t^p` (no layer) unless ``keep_empty_fusion``.

**From the authors' code** (VGG-16, two tasks): ``SingleSidedAsymmetricNDDR`` = concatenation ->
1x1 conv (no bias) -> BN (eps 1e-3, momentum 0.05) -> ReLU, the conv initialised to
``init[0] I`` on the target block and ``init[1] / d * I`` on each of the ``d`` source blocks
(``MODEL.INIT``: ``(1.0, 0.0)`` in the released search configs, ``configs/ablation/*``, so
the inserted edges start silent, as the paper's Fig. 1 wants; the code's default and its
all-edges baseline use ``(0.9, 0.1)``; ``init_weights=None`` is their ``INIT: ()``, Kaiming);
sources are pre-fusion maps; candidates are same-or-earlier layers
(``depth_limited_connectivity_matrix``: ``i - j < 3`` within one VGG stage, where every source has
the target's width and resolution). **Generalised here** (choices, parameters): fusion points are
the protocol's stages, so sources of another width are concatenated at their own width (the
authors' op with ``in_channels`` = the concatenation's width; their blocks all have width ``C``)
and resized bilinearly; a non-square source block starts as ``init[1] / d`` times the
rectangular identity; ``depth_limit`` (None: every earlier point; the authors' VGG: 3) bounds
``p - q``; for ``T > 2`` tasks every other task's points are candidates of every target and
``init[1]`` is split over all ``d`` sources, as the authors split it over their ``d``.

Parameters of one fusion layer: :math:`C_p (C_p + \sum_i C_{q_i}) + 2 C_p`. CoNAL's printed
MTL-NAS counts (87.26M Cityscapes, 183.40M NYUv2; dilated ResNet-50 + aspp) lie below the
supernet's (111.25M, 198.10M), so they count a pruned edge set; here every edge set that rounds to
87.26M feeds exactly one of the two layer4 fusion points and every one that rounds to 183.40M all
three, but many sets do (10,854 of the 2^30 on Cityscapes): the count does not identify CoNAL's
architecture (``tests/search/test_mtl_nas.py``).

**Architecture** (what the search exports, ``sharing_kwargs.architecture``)::

    {"kind": "mtl_nas", "n_tasks": T, "n_points": P, "edges": [[t, p, u, q], ...]}

``architecture=None`` means every candidate edge (the authors' ``MODEL.SUPERNET`` baseline,
every connection on), so the scheme also builds with no arguments.

Partition (as :mod:`.nddr_cnn`): network ``t`` and head ``t`` are task ``t``'s; the fusion layers
are shared. Works on any staged backbone (ResNets, VGG16, SegNet).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.protocol import StagedBackbone
from ..interface import MTLModel, build_task_networks
from ..registries import SHARING

__all__ = ["MTLNAS", "CrossTaskNetworks", "FusionLayer", "candidate_edges", "fusion_params",
           "parse_architecture", "Edge"]

Edge = tuple[int, int, int, int]   # (target task, target point, source task, source point)


def candidate_edges(n_tasks: int, n_points: int, depth_limit: int | None = None) -> list[Edge]:
    """The search space: ``(t, p, u, q)`` with ``u != t``, ``q <= p`` and ``p - q < depth_limit``,
    ordered by target, then source task, then source point."""
    if depth_limit is not None and depth_limit < 1:
        raise ValueError(f"depth_limit must be >= 1 (1 = same point only) or None, got {depth_limit}")
    return [(t, p, u, q) for t in range(n_tasks) for p in range(n_points) for u in range(n_tasks) if u != t
            for q in range(p + 1) if depth_limit is None or p - q < depth_limit]


def fusion_params(width: int, source_widths: Sequence[int]) -> int:
    """Parameters of one :class:`FusionLayer`: the conv :math:`C (C + \\sum C_q)` and the BN ``2 C``."""
    return width * (width + sum(source_widths)) + 2 * width


def parse_architecture(arch: dict[str, Any], n_tasks: int, n_points: int,
                       candidates: Sequence[Edge]) -> list[Edge]:
    """The sorted edge list of an exported architecture, checked against this model's space."""
    if arch.get("kind", "mtl_nas") != "mtl_nas":
        raise ValueError(f"mtl_nas: architecture kind {arch.get('kind')!r} is not 'mtl_nas'")
    if int(arch.get("n_tasks", n_tasks)) != n_tasks or int(arch.get("n_points", n_points)) != n_points:
        raise ValueError(f"mtl_nas: the architecture has {arch.get('n_tasks')} tasks x {arch.get('n_points')} "
                         f"fusion points; this model has {n_tasks} x {n_points} (at_stem?)")
    allowed = set(candidates)
    edges = sorted({tuple(int(v) for v in e) for e in arch["edges"]})
    bad = [e for e in edges if e not in allowed]
    if bad:
        raise ValueError(f"mtl_nas: edges {bad[:4]} are not in the search space (u != t, q <= p, depth_limit)")
    return edges   # type: ignore[return-value]


def resize_to(src: Tensor, ref: Tensor, mode: str = "bilinear") -> Tensor:
    """``src`` at ``ref``'s spatial size (unchanged when it already is)."""
    if src.shape[-2:] == ref.shape[-2:]:
        return src
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(src, size=ref.shape[-2:], mode=mode, **kw)


class FusionLayer(nn.Module):
    """``ReLU(BN(conv1x1([x, m_1 R(s_1), ..., m_d R(s_d)])))`` for a ``width``-channel target."""

    def __init__(self, width: int, source_widths: Sequence[int], init_weights: Sequence[float] | None = (1.0, 0.0),
                 bn_momentum: float = 0.05, bn_eps: float = 1e-3, track_running_stats: bool = True,
                 resize: str = "bilinear"):
        super().__init__()
        self.width, self.source_widths, self.resize = int(width), [int(c) for c in source_widths], resize
        self.conv = nn.Conv2d(self.width + sum(self.source_widths), self.width, 1, bias=False)
        self.bn = nn.BatchNorm2d(self.width, eps=bn_eps, momentum=bn_momentum, track_running_stats=track_running_stats)
        if init_weights is None or len(init_weights) == 0:   # the authors' MODEL.INIT = ()
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
            return
        own, other = float(init_weights[0]), float(init_weights[1]) / max(len(self.source_widths), 1)
        w = torch.zeros(self.width, self.conv.in_channels)
        w[:, :self.width] = own * torch.eye(self.width)
        off = self.width
        for c in self.source_widths:
            w[:, off:off + c] = other * torch.eye(self.width, c)
            off += c
        with torch.no_grad():
            self.conv.weight.copy_(w.view_as(self.conv.weight))

    def block_offsets(self) -> list[int]:
        """Input-channel offset of each block (target first, then the sources in order)."""
        offs = [0, self.width]
        for c in self.source_widths[:-1]:
            offs.append(offs[-1] + c)
        return offs[:1 + len(self.source_widths)]

    def forward(self, x: Tensor, sources: Sequence[Tensor], weights: Sequence[Tensor] | None = None) -> Tensor:
        feats = [x]
        for i, s in enumerate(sources):
            s = resize_to(s, x, self.resize)
            feats.append(s if weights is None else s * weights[i])
        return F.relu(self.bn(self.conv(torch.cat(feats, dim=1))))


class CrossTaskNetworks(MTLModel):
    """One network per task with fusion layers at the fusion points (subclasses choose the edges)."""

    task_conditional = False

    def _build_networks(self, backbone: str, out_dims: list[int] | None, at_stem: bool | None,
                        backbone_kwargs: dict[str, Any]) -> None:
        self._set_tasks(backbone, out_dims)
        nets, heads, feature_dim = build_task_networks(backbone, self.out_dims, **backbone_kwargs)
        net = nets[0]
        name = type(self).__name__
        if not isinstance(net, StagedBackbone):
            raise ValueError(f"{name} needs a staged backbone (models.backbones.protocol.StagedBackbone); "
                             f"got {backbone!r}")
        if at_stem and net.stem_width is None:
            raise ValueError(f"{name}: at_stem=True but {backbone!r} declares no stem_width (its stem is the identity)")
        self.at_stem = net.stem_width is not None if at_stem is None else bool(at_stem)
        self.nets, self.heads, self.feature_dim = nets, heads, feature_dim
        self.widths = ([net.stem_width] if self.at_stem else []) + list(net.widths)
        self.point_names = (["stem"] if self.at_stem else []) + [f"stage{s}" for s in range(len(net.widths))]
        self.track_running_stats = backbone_kwargs.get("track_running_stats", True)
        self.fusions = nn.ModuleDict()

    @property
    def n_points(self) -> int:
        return len(self.widths)

    @staticmethod
    def _key(t: int, p: int) -> str:
        return f"t{t}_p{p}"

    def _fuse(self, t: int, p: int, raw: list[list[Tensor]], weights: Tensor | None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def edge_weights(self) -> Tensor | None:
        """This forward's connectivity of every edge (None: all edges fully on)."""
        return None

    def forward(self, x: Tensor, task: int | None = None) -> list[Tensor]:
        if task is not None:
            raise ValueError(f"{type(self).__name__} is not task-conditional: call model(x) (returns all tasks)")
        weights = self.edge_weights()
        states: list[dict] = [{} for _ in self.nets]
        h = [net.forward_stem(x) for net in self.nets]
        raw: list[list[Tensor]] = []     # raw[p][t]: task t's map at point p before fusion
        if self.at_stem:
            raw.append(h)
            h = [self._fuse(t, 0, raw, weights) for t in range(self.n_tasks)]
        for s in range(self.n_points - len(raw)):
            raw.append([net.forward_stage(s, z, st) for net, z, st in zip(self.nets, h, states)])
            h = [self._fuse(t, len(raw) - 1, raw, weights) for t in range(self.n_tasks)]
        return [head(net.readout(z)) for net, head, z in zip(self.nets, self.heads, h)]

    def units(self) -> list[nn.Module]:
        """The conv units of all ``T`` networks, network by network."""
        return [u for net in self.nets for u in net.units()]

    def last_shared_layer(self) -> nn.Module:
        """The last fusion layer (forward order), or network 0's last layer when there is none."""
        return list(self.fusions.values())[-1] if len(self.fusions) else self.nets[0].last_shared_layer()


@SHARING.register("mtl_nas")
class MTLNAS(CrossTaskNetworks):
    """The single-task networks joined by a chosen set of cross-task fusion edges (retraining)."""

    version = 1

    def __init__(self, backbone: str = "resnet50_dilated", out_dims: list[int] | None = None,
                 architecture: dict[str, Any] | None = None, init_weights: tuple[float, float] = (1.0, 0.0),
                 bn_momentum: float = 0.05, bn_eps: float = 1e-3, at_stem: bool | None = None,
                 depth_limit: int | None = None, keep_empty_fusion: bool = False, resize: str = "bilinear",
                 **backbone_kwargs: Any):
        super().__init__()
        self._build_networks(backbone, out_dims, at_stem, backbone_kwargs)
        cands = candidate_edges(self.n_tasks, self.n_points, depth_limit)
        self.edges = cands if architecture is None else parse_architecture(architecture, self.n_tasks,
                                                                           self.n_points, cands)
        self.keep_empty_fusion = bool(keep_empty_fusion)
        self.sources: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for t, p, u, q in self.edges:
            self.sources.setdefault((t, p), []).append((u, q))
        for t in range(self.n_tasks):
            for p in range(self.n_points):
                src = self.sources.get((t, p), [])
                if src or self.keep_empty_fusion:
                    self.fusions[self._key(t, p)] = FusionLayer(
                        self.widths[p], [self.widths[q] for _, q in src], init_weights, bn_momentum, bn_eps,
                        self.track_running_stats, resize)

    def _fuse(self, t: int, p: int, raw: list[list[Tensor]], weights: Tensor | None) -> Tensor:
        key = self._key(t, p)
        if key not in self.fusions:
            return raw[p][t]
        return self.fusions[key](raw[p][t], [raw[q][u] for u, q in self.sources.get((t, p), [])])

    def architecture_dict(self) -> dict[str, Any]:
        return {"kind": "mtl_nas", "n_tasks": self.n_tasks, "n_points": self.n_points,
                "edges": [list(e) for e in self.edges]}

    def inherit_from(self, supernet: nn.Module) -> None:
        """Copy a ``mtl_nas_supernet``'s weights into this (sub-)network: the networks, the heads and,
        per fusion layer, the supernet conv's columns of the target and of the kept sources (the
        authors' single-shot evaluation without (re)training, pruned to the chosen edges)."""
        self.nets.load_state_dict(supernet.nets.state_dict())
        self.heads.load_state_dict(supernet.heads.state_dict())
        for key, layer in self.fusions.items():
            t, p = (int(v[1:]) for v in key.split("_"))
            big = supernet.fusions[key]
            cols = {src: off for src, off in zip(supernet.sources[(t, p)], big.block_offsets()[1:])}
            keep = [(0, layer.width)] + [(cols[s], self.widths[s[1]]) for s in self.sources.get((t, p), [])]
            with torch.no_grad():
                layer.conv.weight.copy_(torch.cat([big.conv.weight[:, o:o + c] for o, c in keep], dim=1))
            layer.bn.load_state_dict(big.bn.state_dict())

    def extra_repr(self) -> str:
        return f"n_tasks={self.n_tasks}, n_points={self.n_points}, edges={len(self.edges)}"
