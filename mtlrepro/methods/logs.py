"""Per-epoch averages of the per-step logs a weighting returns (``task_weights``, ...).

The update schemes hand every step's logs to an :class:`EpochLogs` (``step_fn(..., logs=acc)``);
sums stay on the device, so there is no host sync until :meth:`EpochLogs.means` at the end of
the epoch (one sync per key).

    >>> import torch
    >>> acc = EpochLogs()
    >>> acc.add({"task_weights": torch.tensor([1.0, 3.0])})
    >>> acc.add({"task_weights": torch.tensor([3.0, 1.0])})
    >>> acc.means()
    {'task_weights': [2.0, 2.0]}
"""
from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["EpochLogs"]


class EpochLogs:
    """Running sums of detached log tensors, averaged over the steps that reported each key.

    A key whose shape changes between steps raises ``ValueError`` (a method logs one shape).
    Sums are kept in float64 (float32 on MPS); integer logs (solver iterations) average as floats.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, logs: Mapping[str, torch.Tensor]) -> None:
        for k, v in logs.items():
            v = v.detach().to(torch.float32 if v.device.type == "mps" else torch.float64)
            if k in self._sums:
                if self._sums[k].shape != v.shape:
                    raise ValueError(f"log {k!r}: shape {tuple(v.shape)} after {tuple(self._sums[k].shape)}")
                self._sums[k] = self._sums[k] + v
                self._counts[k] += 1
            else:
                self._sums[k] = v.clone()
                self._counts[k] = 1

    def __len__(self) -> int:
        return max(self._counts.values(), default=0)

    def means(self) -> dict[str, float | list[float]]:
        """``{key: mean}``: a float for scalar logs, a list for vectors (one host sync per key)."""
        out: dict[str, float | list[float]] = {}
        for k, s in self._sums.items():
            m = (s / self._counts[k]).cpu()
            out[k] = m.item() if m.dim() == 0 else m.tolist()
        return out

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()
