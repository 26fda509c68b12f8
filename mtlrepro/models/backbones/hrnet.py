"""HRNetV2-W18 (the full ``hrnet_w18``, not small-v2): GatedMTL Table 1's NYUD encoder.

The network is timm's ``hrnet_w18`` (``create_timm("hrnet_w18", pretrained, features_only=True,
feature_location="", out_indices=(1, 2, 3, 4))``): stem (two 3x3/2 convs), ``layer1`` (4
Bottlenecks, 256 ch), then stages 2 / 3 / 4 of 1 / 4 / 3 HighResolutionModules with 2 / 3 / 4
branches of 4 BasicBlocks each, widths ``(18, 36, 72, 144)`` at strides ``(4, 8, 16, 32)`` (Wang et
al., TPAMI 2020). ``feature_location=""`` gives those four raw branch outputs, Vandenhende's
``backbone_channels = [18, 36, 72, 144]`` (``utils/common_config.py``); timm's default
(``"incre"``) would give its classification head's 128..1024 ``incre`` features instead.

Conv units (:func:`route_convs`, module surgery after timm builds the net): every one of its 305
``Conv2d`` and the ``BatchNorm2d`` that reads its output is replaced, in forward order (found by
running the net once on a 64x64 probe), by ``make_unit(ConvSpec)`` and an ``Identity``. Roles:
``stem``, ``conv1`` / ``conv2`` / ``conv3`` (residual blocks), ``downsample`` (block shortcut),
``transition`` (new-branch / width-changing 3x3s between stages), ``fuse`` (the exchange units
of every HighResolutionModule). The surgery raises unless every conv is called once and feeds
exactly one BN, and every BN is claimed once. The net's conv / BN tensors (timm's initialisation:
Kaiming-normal fan_out, BN 1 / 0, or the pretrained ones) are copied into every unit that holds
exactly one ``Conv2d`` and one ``BatchNorm2d`` of the same shapes; with ``pretrained`` every unit
must be such a unit. So the ConvBN-routed encoder computes exactly timm's function.

``forward`` returns ``(B, 270, H/4, W/4)``: the four branches upsampled bilinearly to branch 1 and
concatenated (:func:`~mtlrepro.models.heads.hrnet_head.concat_branches`) - the parameter-free first
half of Vandenhende's ``HighResolutionHead``, moved into the encoder so that the representation the
heads share is ONE tensor (what ``encode`` / MGDA-UB / GradNorm / RotoGrad differentiate);
``forward_branches`` returns the four maps. Default head: ``hrnet`` (the 1x1 convs and the resize).
Input sides must be multiples of 32 (timm's fuse layers upsample by a fixed nearest factor).

Differences from Vandenhende's ``seg_hrnet.py``, kept as timm has them: its ``hrnet_w18`` config is
HRNet-W18-small-v2 (2 blocks per branch, 3 / 2 modules in stages 3 / 4) with ImageNet weights
``hrnet_w18_small_model_v2.pth``; GatedMTL's 9.8M / 28.9M are the full W18's (below). Its fuse
layers upsample bilinearly (``align_corners=False``), timm's by nearest; its BN momentum is 0.01,
timm's and the units' 0.1. No stage-wise protocol (HRNet's stages are multi-branch lists).

Counts (measured: torch 2.14.1, timm 1.0.31, fvcore 0.1.5; hand-derived in ``tests/models/test_hrnet.py``):
encoder 9,562,260 parameters (:data:`HRNET_W18_ENCODER_PARAMS`), 305 convs; head 73,710 + 271 out_dim.
NYUD ``[40, 1, 3]``: hard sharing 9,795,314 (REFERENCE 9.80M); single-task networks 9,646,810 /
9,636,241 / 9,636,783, sum 28,919,834 (REFERENCE 28.92M). fvcore at 1x3x480x640, MACs, eval mode:

=================  ==============================  ===============================================
model              convs only (REFERENCE's count)  everything fvcore counts (``complexity.count``)
=================  ==============================  ===============================================
hard sharing       24,520,910,400 (24.5 G)         24,804,740,400 (24.8 G)
STL, 3 networks    64,708,459,200 (64.7 G)         65,389,606,800 (65.4 G; ``flops_all_tasks``)
=================  ==============================  ===============================================

(STL per task: convs 21,700,814,400 / 21,498,638,400 / 21,509,006,400; all ops 21,958,993,200 /
21,708,894,000 / 21,721,719,600.) The second column adds fvcore's ``batch_norm`` (one per element in
eval mode: 0.20 G MTL) and ``upsample_*`` counts. REFERENCE's 24.5 / 64.7 equal the conv-only counts
(so does its dilated R50 + ASPP 341.5 G: convs 341.50 G, everything 341.95 G under this fvcore);
GatedMTL prints 24.5 / 65.1. Every count scales exactly with the pixel count for sides that are
multiples of 32 (64x64 x 75 = 480x640).

Backbone keyword arguments: ``pretrained`` (None, ``"imagenet1k"`` = timm's default tag
``ms_aug_in1k``, or ``"ms_in1k"`` / ``"ms_aug_in1k"``: loaded offline by
:func:`~mtlrepro.models.pretrained_timm.create_timm`, a missing file raises its ``DataError``),
``track_running_stats`` (True), ``in_channels`` (3).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..heads import HeadFactory
from ..heads.hrnet_head import HRNET_W18_CHANNELS, concat_branches
from ..pretrained_timm import create_timm
from ..registries import BACKBONES
from ..units import ConvSpec
from .protocol import Backbone

__all__ = ["HRNetEncoder", "build_hrnet18", "route_convs", "timm_hrnet_w18", "HRNET_W18_ENCODER_PARAMS",
           "HRNET_W18_CONVS", "PRETRAINED_TAGS"]

HRNET_W18_ENCODER_PARAMS = 9_562_260
HRNET_W18_CONVS = 305
BRANCH_STRIDES = (4, 8, 16, 32)
#: the backbone's ``pretrained`` spellings -> timm's tag (``"default"``: timm's default, ms_aug_in1k)
PRETRAINED_TAGS = {"imagenet1k": "default", "ms_aug_in1k": "ms_aug_in1k", "ms_in1k": "ms_in1k"}
_BLOCK_CONVS = ("conv1", "conv2", "conv3")


def timm_hrnet_w18(pretrained: str | None = None, in_channels: int = 3) -> nn.Module:
    """timm's HRNet-W18 returning the four raw branch outputs (``pretrained``: a timm tag)."""
    return create_timm("hrnet_w18", pretrained, features_only=True, feature_location="",
                       out_indices=(1, 2, 3, 4), in_chans=in_channels)


def _role(name: str, parent: nn.Module, attr: str) -> str:
    if "fuse_layers" in name:
        return "fuse"
    if name.startswith("transition"):
        return "transition"
    if ".downsample." in f".{name}":
        return "downsample"
    if "." not in name:
        return "stem"
    if attr in _BLOCK_CONVS and type(parent).__name__ in ("BasicBlock", "Bottleneck"):
        return attr
    raise ValueError(f"route_convs: no role for conv {name!r}")


def _trace(net: nn.Module, probe: Tensor) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """``(module, input, output)`` of every Conv2d / BatchNorm2d call, in call order (eval, no grad)."""
    events: list[tuple[nn.Module, Tensor, Tensor]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: events.append((m, i[0], o)))
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    was = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(probe)
    finally:
        net.train(was)
        for h in hooks:
            h.remove()
    return events


def _conv_bn_pairs(net: nn.Module, probe: Tensor) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every conv with the BN that reads its output, in forward order; raises unless the pairing
    is one-to-one and covers every Conv2d and BatchNorm2d of ``net``."""
    events = _trace(net, probe)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    pairs, seen_c, seen_n = [], set(), set()
    for k, (m, _, out) in enumerate(events):
        if not isinstance(m, nn.Conv2d):
            continue
        if id(m) in seen_c:
            raise ValueError("route_convs: a Conv2d is called more than once per forward pass")
        nxt = events[k + 1] if k + 1 < len(events) else None
        if nxt is None or not isinstance(nxt[0], nn.BatchNorm2d) or nxt[1] is not out:
            raise ValueError(f"route_convs: conv {len(pairs)} ({m}) is not followed by a BatchNorm2d "
                             f"reading its output")
        if id(nxt[0]) in seen_n:
            raise ValueError("route_convs: a BatchNorm2d is claimed by two convs")
        seen_c.add(id(m))
        seen_n.add(id(nxt[0]))
        pairs.append((m, nxt[0]))
    if len(seen_c) != len(convs) or len(seen_n) != len(norms) or len(pairs) != len(norms):
        raise ValueError(f"route_convs: {len(pairs)} conv/BN pairs in the forward pass, but the net has "
                         f"{len(convs)} Conv2d and {len(norms)} BatchNorm2d (unused or unpaired modules)")
    return pairs


def _single_conv_bn(unit: nn.Module, conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """The unit's one Conv2d / BatchNorm2d when they have ``conv`` / ``bn``'s shapes, else None."""
    cs = [m for m in unit.modules() if isinstance(m, nn.Conv2d)]
    ns = [m for m in unit.modules() if isinstance(m, nn.BatchNorm2d)]
    if len(cs) != 1 or len(ns) != 1 or cs[0].weight.shape != conv.weight.shape \
            or ns[0].num_features != bn.num_features or (cs[0].bias is None) != (conv.bias is None):
        return None
    return cs[0], ns[0]


def _copy(dst_c: nn.Conv2d, dst_n: nn.BatchNorm2d, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        dst_c.weight.copy_(conv.weight)
        if conv.bias is not None:
            dst_c.bias.copy_(conv.bias)
        if dst_n.affine:
            dst_n.weight.copy_(bn.weight)
            dst_n.bias.copy_(bn.bias)
        if dst_n.running_mean is not None and bn.running_mean is not None:
            dst_n.running_mean.copy_(bn.running_mean)
            dst_n.running_var.copy_(bn.running_var)
            dst_n.num_batches_tracked.copy_(bn.num_batches_tracked)


def route_convs(net: nn.Module, make_unit: Callable[[ConvSpec], nn.Module], *,
                track_running_stats: bool = True, require_copy: bool = False, in_channels: int = 3,
                probe_hw: tuple[int, int] = (64, 64)) -> list[nn.Module]:
    """Replace, in place, every ``Conv2d`` of ``net`` by ``make_unit(spec)`` and its BN by an
    ``Identity``; returns the units in forward order (see the module docstring). ``require_copy``:
    raise unless every unit can take the net's conv / BN tensors (pretrained weights)."""
    p = next(net.parameters())
    probe = torch.zeros(1, in_channels, *probe_hw, dtype=p.dtype, device=p.device)
    pairs = _conv_bn_pairs(net, probe)
    where: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for name, parent in net.named_modules(remove_duplicate=False):
        for attr, child in parent.named_children():
            where.setdefault(id(child), []).append((f"{name}.{attr}" if name else attr, parent, attr))
    units = []
    for i, (conv, bn) in enumerate(pairs):
        if len(where[id(conv)]) != 1 or len(where[id(bn)]) != 1:
            raise ValueError(f"route_convs: conv/BN pair {i} is registered at several places of the net")
        (cname, cparent, cattr), = where[id(conv)]
        (_, nparent, nattr), = where[id(bn)]
        k, s, pad, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        if conv.groups != 1 or len({*k}) != 1 or len({*s}) != 1 or isinstance(pad, str) \
                or len({*pad}) != 1 or len({*d}) != 1:
            raise ValueError(f"route_convs: conv {cname!r} is not a square, ungrouped conv")
        spec = ConvSpec(conv.in_channels, conv.out_channels, k[0], s[0], pad[0], index=i,
                        role=_role(cname, cparent, cattr), bias=conv.bias is not None,
                        track_running_stats=track_running_stats, dilation=d[0])
        unit = make_unit(spec).to(device=conv.weight.device, dtype=conv.weight.dtype)  # the net's
        target = _single_conv_bn(unit, conv, bn)
        if target is not None:
            _copy(*target, conv, bn)
        elif require_copy:
            raise ValueError(f"route_convs: unit {i} ({type(unit).__name__}, {cname}) does not hold exactly "
                             f"one Conv2d and one BatchNorm2d of the net's shapes: cannot take its weights")
        setattr(cparent, cattr, unit)
        setattr(nparent, nattr, nn.Identity())
        units.append(unit)
    return units


class HRNetEncoder(nn.Module):
    """timm's HRNet-W18 with every conv a ``make_unit`` unit; ``forward`` -> ``(B, 270, H/4, W/4)``."""

    widths = HRNET_W18_CHANNELS
    strides = BRANCH_STRIDES
    out_features = sum(HRNET_W18_CHANNELS)

    def __init__(self, make_unit: Callable[[ConvSpec], nn.Module], pretrained: str | None = None,
                 track_running_stats: bool = True, in_channels: int = 3, net: nn.Module | None = None):
        super().__init__()
        self.net = timm_hrnet_w18(pretrained, in_channels) if net is None else net
        self._units = route_convs(self.net, make_unit, track_running_stats=track_running_stats,
                                  require_copy=pretrained is not None, in_channels=in_channels)

    def forward_branches(self, x: Tensor) -> list[Tensor]:
        """The four branch outputs (18 / 36 / 72 / 144 channels, strides 4 / 8 / 16 / 32)."""
        return self.net(x)

    def forward(self, x: Tensor) -> Tensor:
        return concat_branches(self.net(x))

    def units(self) -> list[nn.Module]:
        return list(self._units)

    def last_shared_layer(self) -> nn.Module:
        """The last conv unit in forward order (stage 4's last fuse unit, into branch 4): HRNet has
        no single last layer, its representation gathers four branches."""
        return self._units[-1]


@BACKBONES.register("hrnet18")
def build_hrnet18(make_unit, **kwargs) -> Backbone:
    """The encoder and its default ``hrnet`` head factory; ``pretrained=`` (one of
    ``build_hrnet18.pretrained_weights``) loads timm's ImageNet weights (offline)."""
    pretrained = kwargs.pop("pretrained", None)
    if pretrained is not None and pretrained not in PRETRAINED_TAGS:
        raise ValueError(f"hrnet18 has no pretrained weights {pretrained!r}; it has {', '.join(PRETRAINED_TAGS)}")
    enc = HRNetEncoder(make_unit, pretrained=PRETRAINED_TAGS.get(pretrained), **kwargs)
    return Backbone(encoder=enc, feature_dim=enc.out_features, make_head=HeadFactory("hrnet", enc.out_features))


build_hrnet18.pretrained_weights = tuple(PRETRAINED_TAGS)  # what build_model(pretrained=) accepts
