"""Streaming evaluation metrics for the reproduced multi-task-learning tables.

Every accumulator follows the :class:`Accumulator` protocol::

    m.update(pred, target)   # any number of times; tensors stay on their device
    m.compute()              # -> dict[str, float]; the only host transfer
    m.reset()

Conventions (details in each class docstring):

* state lives on the device of the first ``update``; ``update`` does no
  host sync (no ``.item()``, no boolean-mask indexing, no ``torch.bincount``
  on accelerators);
* keys printed as percentages in the papers are returned in percent (x100);
* ``compute()`` on an accumulator that saw no (valid) data returns NaN for
  every key and emits :class:`EmptyMetricWarning`.

``METRICS`` maps a short name to each accumulator class.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from .classification import BinaryAccuracy, EmptyMetricWarning, MultiLabelPRF, TotalError
    from .depth import DepthErrors
    from .normals import THRESHOLDS_DEG, NormalAngles
    from .segmentation import BinaryIoUPerImage, ConfusionMatrixIoU

# The accumulators import torch; they are loaded on first access so that the torch-free
# ``mtlrepro.metrics.definitions`` (used by the registry and the diff) can be imported alone.
_LAZY: dict[str, str] = {
    "MultiLabelPRF": "classification", "BinaryAccuracy": "classification",
    "TotalError": "classification", "EmptyMetricWarning": "classification",
    "DepthErrors": "depth", "NormalAngles": "normals", "THRESHOLDS_DEG": "normals",
    "ConfusionMatrixIoU": "segmentation", "BinaryIoUPerImage": "segmentation",
    "SaliencyMeter": "saliency", "EdgeLoss": "edge", "DepthRMSE": "depth_rmse",
}
_METRIC_CLASSES: dict[str, str] = {
    "multilabel_prf": "MultiLabelPRF",
    "binary_accuracy": "BinaryAccuracy",
    "total_error": "TotalError",
    "confusion_miou": "ConfusionMatrixIoU",
    "binary_iou_per_image": "BinaryIoUPerImage",
    "depth_errors": "DepthErrors",
    "normal_angles": "NormalAngles",
    "saliency": "SaliencyMeter",
    "edge_loss": "EdgeLoss",
    "depth_rmse": "DepthRMSE",
}


@runtime_checkable
class Accumulator(Protocol):
    """Streaming metric: ``update`` per batch, ``compute`` once, ``reset`` to reuse."""

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None: ...

    def compute(self) -> dict[str, float]: ...

    def reset(self) -> None: ...


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name == "METRICS":  # short name -> accumulator class
        value = {short: __getattr__(cls) for short, cls in _METRIC_CLASSES.items()}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "Accumulator",
    "METRICS",
    "EmptyMetricWarning",
    "MultiLabelPRF",
    "BinaryAccuracy",
    "TotalError",
    "ConfusionMatrixIoU",
    "BinaryIoUPerImage",
    "DepthErrors",
    "NormalAngles",
    "THRESHOLDS_DEG",
    "SaliencyMeter",
    "EdgeLoss",
    "DepthRMSE",
]
