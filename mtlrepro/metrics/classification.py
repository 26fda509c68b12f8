"""Streaming multi-label classification metrics (CelebA attributes).

All accumulators here keep integer counts on the device of the first
``update`` call; ``update`` never synchronises with the host (no ``.item()``,
no boolean-mask indexing). Only ``compute`` moves the counts to the CPU.

Conventions shared by every accumulator in :mod:`mtlrepro.metrics`:

* ``compute()`` returns ``dict[str, float]``; values that the papers print as
  percentages are returned **in percent** (x100) - each class docstring says
  which keys are percentages.
* If ``compute()`` is called before any sample was seen, every value is
  ``float('nan')`` and an :class:`EmptyMetricWarning` is emitted (a 0 would be
  indistinguishable from a real, terrible score).
* ``reset()`` drops all state; the next ``update`` may use another device.

Binarisation (shared by all classes here): a prediction is positive iff
``sigmoid(pred) >= threshold`` (``from_logits=True``) or ``pred >= threshold``
(``from_logits=False``; boolean / {0, 1} predictions work with the default
threshold 0.5). The ``>=`` follows Maximum Roaming's CelebA code
(``preds = (sigmoid(x) >= 0.5)``). A target is positive iff ``target > 0``,
so both {0, 1} labels and CelebA's raw {-1, 1} labels are accepted.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["EmptyMetricWarning", "MultiLabelPRF", "BinaryAccuracy", "TotalError"]


class EmptyMetricWarning(RuntimeWarning):
    """Emitted by ``compute()`` when an accumulator has seen no (valid) data."""


def _warn_empty(name: str) -> None:
    warnings.warn(
        f"{name}.compute() called with no accumulated (valid) samples; returning NaN",
        EmptyMetricWarning,
        stacklevel=3,
    )


def _binarize(pred: torch.Tensor, threshold: float, from_logits: bool) -> torch.Tensor:
    """Boolean positive-prediction mask (see module docstring)."""
    if pred.dtype == torch.bool:
        return pred
    if from_logits:
        pred = torch.sigmoid(pred.float() if not pred.is_floating_point() else pred)
    return pred >= threshold


def _positive_target(target: torch.Tensor) -> torch.Tensor:
    return target if target.dtype == torch.bool else target > 0


def _check_2d(pred: torch.Tensor, target: torch.Tensor, n: int, what: str) -> None:
    if pred.dim() != 2 or pred.shape[1] != n:
        raise ValueError(f"pred must have shape (B, {n}) ({what}), got {tuple(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} != pred shape {tuple(pred.shape)}")


class _ThresholdedLabels:
    """What the per-label binary metrics share: the constructor, and turning one batch into
    boolean predictions / targets (shape check, binarisation, sample count). Subclasses define
    ``reset``, which the constructor calls."""

    n_samples: int

    def __init__(self, n_labels: int, threshold: float = 0.5, from_logits: bool = True) -> None:
        if n_labels < 1:
            raise ValueError("n_labels must be >= 1")
        self.n_labels = int(n_labels)
        self.threshold = float(threshold)
        self.from_logits = bool(from_logits)
        self.reset()

    def _binary_batch(self, pred: torch.Tensor, target: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        _check_2d(pred, target, self.n_labels, what)
        p = _binarize(pred.detach(), self.threshold, self.from_logits)
        t = _positive_target(target.detach()).to(p.device)
        self.n_samples += pred.shape[0]
        return p, t


class MultiLabelPRF(_ThresholdedLabels):
    r"""Macro precision / recall / F-score over attributes, counted over the whole split.

    Follows the CelebA evaluation of Maximum Roaming (Pascal et al., 2021,
    ``celeba/train_MR.py``) reused by ETR-NLP: per attribute ``a`` the counts
    :math:`TP_a, FP_a, FN_a` are summed over *all* evaluated samples, then

    .. math::
        P_a = \frac{TP_a}{TP_a + FP_a},\quad
        R_a = \frac{TP_a}{TP_a + FN_a},\quad
        F_a = \frac{2 P_a R_a}{P_a + R_a}

    and the reported numbers are the **unweighted means over attributes**,
    x100: ``precision = 100 * mean_a P_a``, ``recall = 100 * mean_a R_a``,
    ``fscore = 100 * mean_a F_a`` (all three keys are percentages).
    Note that ``fscore`` is the mean of the per-attribute F-scores, *not*
    ``2 P R / (P + R)`` of the mean precision and mean recall.

    0/0 cases (``zero_division=0`` as in scikit-learn's
    ``precision_recall_fscore_support``): an attribute never predicted positive
    has :math:`P_a = 0`; an attribute never positive in the targets has
    :math:`R_a = 0`; if :math:`P_a + R_a = 0` then :math:`F_a = 0`. Maximum
    Roaming's code adds ``1e-7`` to the denominators instead, which gives the
    same zeros and differs elsewhere by less than 1e-6 relative.

    ``update(pred, target)``: ``pred`` (B, n_labels) logits (or probabilities
    with ``from_logits=False``, or booleans); ``target`` (B, n_labels) with
    positives ``> 0``. Per-attribute arrays: :meth:`compute_per_label`.

    Example:
        >>> m = MultiLabelPRF(2, from_logits=False)
        >>> m.update(torch.tensor([[1., 0.], [1., 0.]]), torch.tensor([[1, 1], [0, 0]]))
        >>> {k: round(v, 2) for k, v in m.compute().items()}
        {'precision': 25.0, 'recall': 50.0, 'fscore': 33.33}
    """

    def reset(self) -> None:
        self._tp: torch.Tensor | None = None
        self._fp: torch.Tensor | None = None
        self._fn: torch.Tensor | None = None
        self.n_samples = 0  # host int from shapes only (no device sync)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, t = self._binary_batch(pred, target, "one column per attribute")
        if self._tp is None:
            z = torch.zeros(self.n_labels, dtype=torch.int64, device=p.device)
            self._tp, self._fp, self._fn = z, z.clone(), z.clone()
        self._tp += (p & t).sum(0)
        self._fp += (p & ~t).sum(0)
        self._fn += (~p & t).sum(0)

    def compute_per_label(self) -> dict[str, np.ndarray]:
        """Per-attribute arrays (length ``n_labels``): ``precision``, ``recall``,
        ``fscore`` in percent (float64) and integer ``tp``, ``fp``, ``fn``,
        ``support`` (= tp + fn). All-NaN float arrays (with a warning) if empty."""
        if self._tp is None or self.n_samples == 0:
            _warn_empty(type(self).__name__)
            nan = np.full(self.n_labels, np.nan)
            zeros = np.zeros(self.n_labels, dtype=np.int64)
            return {"precision": nan, "recall": nan.copy(), "fscore": nan.copy(),
                    "tp": zeros, "fp": zeros.copy(), "fn": zeros.copy(), "support": zeros.copy()}
        tp = self._tp.cpu().numpy().astype(np.int64)
        fp = self._fp.cpu().numpy().astype(np.int64)
        fn = self._fn.cpu().numpy().astype(np.int64)
        tpf, fpf, fnf = tp.astype(np.float64), fp.astype(np.float64), fn.astype(np.float64)
        prec = np.divide(tpf, tpf + fpf, out=np.zeros_like(tpf), where=(tp + fp) > 0)
        rec = np.divide(tpf, tpf + fnf, out=np.zeros_like(tpf), where=(tp + fn) > 0)
        f = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tpf), where=(prec + rec) > 0)
        return {"precision": 100.0 * prec, "recall": 100.0 * rec, "fscore": 100.0 * f,
                "tp": tp, "fp": fp, "fn": fn, "support": tp + fn}

    def compute(self) -> dict[str, float]:
        """``{"precision", "recall", "fscore"}``: means over attributes, in percent."""
        per = self.compute_per_label()
        return {k: float(np.mean(per[k])) for k in ("precision", "recall", "fscore")}


class BinaryAccuracy(_ThresholdedLabels):
    r"""Per-label binary accuracy, pooled over the whole split.

    .. math:: \mathrm{acc}_a = \frac{\#\{i : \hat y_{ia} = y_{ia}\}}{N}

    ``compute()`` returns ``{"accuracy": 100 * mean_a acc_a}`` (percent);
    :meth:`compute_per_label` returns the per-label accuracies in percent.
    Binarisation as in the module docstring (``>= threshold``).

    Convention note: Maximum Roaming averages per-batch accuracies over batches;
    that equals this pooled value whenever all batches have the same size
    (they differ only through a smaller last batch).

    Example:
        >>> m = BinaryAccuracy(2, from_logits=False)
        >>> m.update(torch.tensor([[1., 0.], [1., 0.]]), torch.tensor([[1, 1], [0, 0]]))
        >>> m.compute(), m.compute_per_label().tolist()
        ({'accuracy': 50.0}, [50.0, 50.0])
    """

    def reset(self) -> None:
        self._correct: torch.Tensor | None = None
        self.n_samples = 0

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        p, t = self._binary_batch(pred, target, "one column per label")
        if self._correct is None:
            self._correct = torch.zeros(self.n_labels, dtype=torch.int64, device=p.device)
        self._correct += (p == t).sum(0)

    def compute_per_label(self) -> np.ndarray:
        """Per-label accuracy in percent (float64 array); all NaN (with a warning) if empty."""
        if self._correct is None or self.n_samples == 0:
            _warn_empty(type(self).__name__)
            return np.full(self.n_labels, np.nan)
        return 100.0 * self._correct.cpu().numpy().astype(np.float64) / self.n_samples

    def compute(self) -> dict[str, float]:
        """``{"accuracy": mean over labels of the per-label accuracy, in percent}``."""
        return {"accuracy": float(np.mean(self.compute_per_label()))}


class TotalError:
    r"""Sum over binary tasks of the per-task test error percentages (CoNAL's CelebA-9).

    CoNAL reports a single "total test error" on CelebA-9: the **sum of the
    per-task error percentages**,

    .. math:: \mathrm{total\_error} = \sum_{t=1}^{T} 100\cdot
              \frac{\#\{i : \hat y_{it} \ne y_{it}\}}{N}

    (so with 9 tasks it ranges over [0, 900]). ``compute()`` returns
    ``{"total_error": ...}`` (percentage points); :meth:`compute_per_task`
    gives the per-task error percentages. Each column of ``pred`` / ``target``
    (B, n_tasks) is one binary task, binarised as in the module docstring.

    Example:
        >>> m = TotalError(3, from_logits=False)
        >>> m.update(torch.tensor([[1., 0., 0.], [1., 1., 0.]]), torch.tensor([[1, 1, 0], [0, 1, 0]]))
        >>> m.compute(), m.compute_per_task().tolist()   # errors 50% + 50% + 0%
        ({'total_error': 100.0}, [50.0, 50.0, 0.0])
    """

    def __init__(self, n_tasks: int, threshold: float = 0.5, from_logits: bool = True) -> None:
        self._acc = BinaryAccuracy(n_tasks, threshold=threshold, from_logits=from_logits)
        self.n_tasks = int(n_tasks)

    def reset(self) -> None:
        self._acc.reset()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self._acc.update(pred, target)

    def compute_per_task(self) -> np.ndarray:
        """Per-task error in percent (float64 array); all NaN (with a warning) if empty."""
        return 100.0 - self._acc.compute_per_label()

    def compute(self) -> dict[str, float]:
        """``{"total_error": sum of the per-task error percentages}``."""
        return {"total_error": float(np.sum(self.compute_per_task()))}
