"""ImageNet weights for a backbone, from torchvision's weights API and the torch hub cache.

``load_imagenet(encoder, name="resnet50", weights="IMAGENET1K_V1")``:

1. the weights enum (``torchvision.models.ResNet50_Weights.IMAGENET1K_V1``) gives the URL; the
   file is ``torch.hub.get_dir()/checkpoints/<basename of the URL>`` (torch hub's own cache:
   ``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``), e.g.
   ``resnet50-0676ba61.pth``;
2. absent: :class:`~mtlrepro.data.errors.DataError` naming that path, that ``TORCH_HOME`` moves
   it, and the command that fetches it on a machine with a network. Nothing is downloaded
   unless ``download=True`` (then torchvision's ``get_state_dict`` downloads it into the cache);
3. verified: the file's sha256 must start with the hex digits torchvision puts in its name
   (``-<hash>.pth``, what ``torch.hub``'s ``check_hash`` checks);
4. mapped onto the encoder's conv units in forward order: torchvision's ``state_dict`` holds the
   convs and BNs in forward order (``conv1``/``bn1``, then per block ``conv1``/``bn1``,
   ``conv2``/``bn2``, ``conv3``/``bn3``, ``downsample.0``/``downsample.1``), and the backbone
   builds its units in that order, each with one ``Conv2d`` and one ``BatchNorm2d``; so the
   weights load into ANY scheme's units (``ConvBN``, a masked unit around one, ...). Every
   tensor except ``fc.*`` must be used exactly once, with the same shape.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from mtlrepro.data.errors import DataError

__all__ = ["load_imagenet", "weights_enum", "weights_path", "map_to_units", "PRETRAINED_CHOICES"]

#: the recipe spellings (``pretrained:``) and the torchvision weights they name
PRETRAINED_CHOICES = {"imagenet1k_v1": "IMAGENET1K_V1"}
_ENUMS = {"resnet50": "ResNet50_Weights", "resnet18": "ResNet18_Weights"}
_HASH = re.compile(r"-([a-f0-9]+)\.")


def weights_enum(name: str = "resnet50", weights: str = "IMAGENET1K_V1"):
    """torchvision's weights entry, e.g. ``ResNet50_Weights.IMAGENET1K_V1`` (``weights`` is
    case-insensitive and may be a recipe spelling such as ``"imagenet1k_v1"``)."""
    import torchvision.models as tvm

    if name not in _ENUMS:
        raise ValueError(f"no ImageNet weights known for {name!r}; known: {', '.join(sorted(_ENUMS))}")
    enum = getattr(tvm, _ENUMS[name])
    key = PRETRAINED_CHOICES.get(str(weights).lower(), str(weights).upper())
    try:
        return enum[key]
    except KeyError:
        raise ValueError(f"{_ENUMS[name]} has no {weights!r}; it has "
                         f"{', '.join(m.name for m in enum)}") from None


def weights_path(name: str = "resnet50", weights: str = "IMAGENET1K_V1") -> Path:
    """Where torch hub keeps the file: ``torch.hub.get_dir()/checkpoints/<URL basename>``."""
    url = weights_enum(name, weights).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_verified(path: Path) -> dict[str, Tensor]:
    m = _HASH.search(path.name)
    if m is None:
        raise DataError(f"{path}: no -<sha256 prefix>. in the file name to verify it against", path)
    digest = _sha256(path)
    if not digest.startswith(m.group(1)):
        raise DataError(f"{path} is corrupt or not torchvision's file: its sha256 is {digest[:16]}..., "
                        f"the name says {m.group(1)}...; delete it and fetch it again", path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _conv_and_norm(unit: nn.Module) -> tuple[nn.Conv2d, nn.BatchNorm2d | None]:
    convs = [m for m in unit.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in unit.modules() if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != 1 or len(norms) > 1:
        raise ValueError(f"cannot load ImageNet weights into {type(unit).__name__}: it holds "
                         f"{len(convs)} Conv2d and {len(norms)} BatchNorm2d (need 1 and at most 1)")
    return convs[0], (norms[0] if norms else None)


def _torchvision_groups(state: dict[str, Tensor]) -> list[tuple[str, str]]:
    """``(conv prefix, bn prefix)`` of every conv in ``state``, in ``state_dict`` order."""
    groups = []
    for k in state:
        if not k.endswith(".weight") or state[k].dim() != 4:
            continue
        conv = k[: -len(".weight")]
        if conv.endswith("downsample.0"):
            bn = conv[:-1] + "1"
        else:
            bn = re.sub(r"conv(\d)$", r"bn\1", conv)
        groups.append((conv, bn))
    return groups


def map_to_units(state: dict[str, Tensor], units: list[nn.Module]) -> dict[int, tuple[str, str]]:
    """Copy torchvision ``state`` into ``units`` (forward order); returns unit index -> the
    ``(conv, bn)`` prefixes it took. Raises on a count / shape mismatch or an unused tensor."""
    groups = _torchvision_groups(state)
    if len(groups) != len(units):
        raise ValueError(f"torchvision weights hold {len(groups)} convs, the encoder {len(units)} units")
    used: set[str] = set()
    plan = []
    for i, ((cp, bp), unit) in enumerate(zip(groups, units)):
        conv, norm = _conv_and_norm(unit)
        pairs = [(conv.weight, f"{cp}.weight")]
        if norm is not None:
            pairs += [(norm.weight, f"{bp}.weight"), (norm.bias, f"{bp}.bias")]
            if norm.running_mean is not None:
                pairs += [(norm.running_mean, f"{bp}.running_mean"), (norm.running_var, f"{bp}.running_var")]
                if f"{bp}.num_batches_tracked" in state:  # absent from older torchvision files
                    pairs.append((norm.num_batches_tracked, f"{bp}.num_batches_tracked"))
        for dst, key in pairs:
            if key not in state:
                raise ValueError(f"unit {i}: torchvision weights lack {key}")
            if tuple(state[key].shape) != tuple(dst.shape):
                raise ValueError(f"unit {i}: {key} is {tuple(state[key].shape)}, the unit's "
                                 f"{tuple(dst.shape)}")
            plan.append((dst, state[key]))
            used.add(key)
    unused = sorted(k for k in state if k not in used and not k.startswith("fc."))
    if unused:
        raise ValueError(f"torchvision weights not used by the encoder: {unused[:6]}"
                         f"{' ...' if len(unused) > 6 else ''}")
    with torch.no_grad():
        for dst, src in plan:
            dst.copy_(src)
    return {i: g for i, g in enumerate(groups)}


def load_imagenet(encoder: nn.Module, name: str = "resnet50", weights: str = "IMAGENET1K_V1",
                  download: bool = False) -> Path:
    """Load torchvision's ImageNet ``weights`` of ``name`` into ``encoder`` (which has
    ``units()``); returns the file read. See the module docstring."""
    entry = weights_enum(name, weights)
    path = weights_path(name, weights)
    if not path.is_file():
        if download:
            entry.get_state_dict(progress=True, check_hash=True)  # torchvision: into the hub cache
        else:
            raise DataError(
                f"ImageNet weights {type(entry).__name__}.{entry.name} ({name}) are not in the torch hub "
                f"cache: expected the file {path} (set TORCH_HOME to use another cache: the file is "
                f"$TORCH_HOME/hub/checkpoints/{path.name}). On a machine with a network run\n"
                f"  python -c \"import torchvision; torchvision.models.{name}(weights='{entry.name}')\"\n"
                f"and copy {path.name} there (or download {entry.url} into that folder).", path)
    map_to_units(_read_verified(path), list(encoder.units()))
    return path
