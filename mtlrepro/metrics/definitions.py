"""What each metric key means: one key, one definition.

A run record's metrics and a published table's metric columns are joined by key (a column's
measured key is ``col.metric or col.key``). Two values are comparable, or may be averaged into
one Δ, only when their keys are equal, so a key must name exactly one definition (the quantity,
the estimator, the averaging rule). Different estimators of the same quantity (MTAN's
confusion-matrix mIoU vs Max Roaming's per-image binary IoU) get different keys with the same
``quantity``; :func:`incomparable_reason` says why two keys must not be compared.

A key may be qualified by a task, ``"<task>/<key>"`` (GatedMTL's PASCAL table has two mIoU
columns, ``semseg/miou`` and ``human_parts/miou``): the definition is the base key's, applied to
that task's outputs. :func:`get_def` resolves both forms.

Complexity columns have units instead (:data:`COMPLEXITY_UNITS`): ``MACs`` (one multiply-add
counted once, fvcore's count) and ``FLOPs`` (= 2 x MACs) are different definitions of "FLOPs"
as papers print them; ``FLOPs-as-printed`` marks a column whose convention is not established.

No torch import: the registry and the comparison use this module (``mtlrepro.metrics`` loads
its torch modules lazily, so importing this one stays torch-free).

References for the definitions: MTAN (Liu et al., CVPR 2019; repo ``lorenmt/mtan``, current
``im2im_pred/utils.py``), Maximum Roaming (Pascal et al., AAAI 2021; repo
``lucaspascal/Maximum-Roaming-Mutli-Task-Learning``, ``*/train_MR.py``), LibMTL
(``examples/{nyu,cityscapes}/utils.py``, used by CoNAL), Vandenhende et al. (NYUD / PASCAL
evaluation, used by GatedMTL).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class MetricDef:
    key: str
    quantity: str                 # what is measured, e.g. "segmentation mIoU" (shared by estimators)
    definition: str               # how: estimator, pixels or samples counted, averaging rule, reference
    higher_is_better: bool
    unit: str | None = None       # what the code reports: "%", "deg", None (unitless / data units)


METRIC_DEFS: Registry[MetricDef] = Registry("metric definition")


def define(key: str, quantity: str, definition: str, higher_is_better: bool, unit: str | None = None) -> MetricDef:
    d = MetricDef(key, quantity, definition, higher_is_better, unit)
    METRIC_DEFS.register(key, d)
    return d


def base_key(key: str) -> str:
    """``"human_parts/miou"`` -> ``"miou"``; an unqualified key is its own base."""
    return key.rsplit("/", 1)[-1]


def get_def(key: str) -> MetricDef | None:
    """The definition of ``key`` (or of its base key when task-qualified), None if undefined."""
    for k in (key, base_key(key)):
        if k in METRIC_DEFS:
            return METRIC_DEFS.get(k)
    return None


def incomparable_reason(a: str, b: str) -> str | None:
    """None when values under keys ``a`` and ``b`` may be compared; else the reason."""
    if a == b:
        return None
    da, db = get_def(a), get_def(b)
    if da is not None and db is not None and da.quantity == db.quantity:
        return (f"`{a}` ({da.definition}) and `{b}` ({db.definition}) are different estimators "
                f"of {da.quantity}")
    return f"`{a}` and `{b}` are different metrics"


def same_quantity(key: str) -> list[str]:
    """Other keys that estimate the same quantity as ``key`` (candidates a diff must refuse)."""
    d = get_def(key)
    if d is None:
        return []
    return [k for k in METRIC_DEFS if k != d.key and METRIC_DEFS.get(k).quantity == d.quantity]


# --------------------------------------------------------------------------- CelebA attributes

_PRF = ("per attribute, TP/FP/FN counted over the whole evaluated split at threshold 0.5 on the "
        "sigmoid; the unweighted mean over attributes, x100 (Maximum Roaming's CelebA code, "
        "MultiLabelPRF)")
define("precision", "attribute precision", "macro precision TP/(TP+FP), " + _PRF, True, "%")
define("recall", "attribute recall", "macro recall TP/(TP+FN), " + _PRF, True, "%")
define("fscore", "attribute F-score",
       "mean over attributes of each attribute's F = 2PR/(P+R) (not F of the mean P and R), " + _PRF,
       True, "%")
define("accuracy", "binary classification accuracy",
       "fraction of correct decisions (threshold 0.5) per label over the whole split, unweighted "
       "mean over the labels, x100 (BinaryAccuracy)", True, "%")
define("total_error", "summed classification error",
       "sum over the binary tasks of each task's error percentage over the split (CoNAL's CelebA-9 "
       "'total test error', TotalError)", False, "%")

# --------------------------------------------------------------------------- segmentation

define("miou", "segmentation mIoU",
       "multi-class mIoU from one confusion matrix accumulated over the whole split: predicted "
       "class = argmax over the class scores (softmax outputs, or the stacked one-vs-rest outputs), "
       "ignore pixels (-1) excluded, IoU_c = TP/(TP+FP+FN), mean over the classes seen in "
       "prediction or target, x100 (MTAN's current ConfMatrix, LibMTL's SegMetric, Vandenhende's "
       "evaluation; ConfusionMatrixIoU)", True, "%")
define("pixel_acc", "segmentation pixel accuracy",
       "fraction of non-ignore pixels whose argmax class is the label, over the whole split, x100 "
       "(MTAN's current ConfMatrix, LibMTL; ConfusionMatrixIoU)", True, "%")
define("miou_binary", "segmentation mIoU",
       "Maximum Roaming's one-vs-rest IoU: per class c and image, IoU of the binary masks "
       "'c predicted' and 'label = c' (ignore pixels are negatives for every class); 'c predicted' "
       "is sigmoid >= 0.5 for a one-vs-rest output and argmax = c for a multi-class output; per "
       "class the mean over the images of a test batch (0/0 images skipped), then the mean over "
       "batches (Cityscapes: empty batches count 0; NYUv2: skipped), then the mean over classes, "
       "x100 (BinaryIoUPerImage, averaging='batch')", True, "%")
define("pixel_acc_binary", "segmentation pixel accuracy",
       "Maximum Roaming's binary accuracy: fraction of correct (pixel, class) decisions with the "
       "masks of miou_binary, true negatives included, per test batch, mean over batches, mean over "
       "classes, x100; dominated by true negatives (BinaryIoUPerImage)", True, "%")
define("miou_best_threshold", "saliency mIoU",
       "binary saliency IoU: the mean Jaccard over images at each threshold of linspace(0.2, 0.9, "
       "15) on the predicted saliency, maximised over the thresholds (Vandenhende's PASCAL "
       "evaluation, as GatedMTL reports it)", True, "%")
define("maxf", "saliency max F-measure",
       "F = 2 P R / (P + R) of the precision and recall averaged over the images of the split at "
       "each threshold of linspace(0.2, 0.9, 15) on the sigmoid of the prediction, maximised over "
       "the thresholds, x100 (Vandenhende's SaliencyMeter 'maxF'; SaliencyMeter)", True, "%")

# --------------------------------------------------------------------------- depth

_BATCH = ("per test batch of the reference loader (Cityscapes 8, NYUv2 2 images), then the "
          "unweighted mean over batches (MTAN, Maximum Roaming)")
_POOLED = "over all valid pixels of the split at once (LibMTL, used by CoNAL; Vandenhende)"
define("abs_err", "depth absolute error",
       "mean |pred - gt| over pixels with gt != 0, " + _BATCH + " (DepthErrors, averaging='batch')",
       False)
define("rel_err", "depth relative error",
       "mean |pred - gt| / gt over pixels with gt != 0, " + _BATCH + " (DepthErrors, averaging='batch')",
       False)
define("abs_err_pooled", "depth absolute error",
       "mean |pred - gt| over pixels with gt != 0, " + _POOLED + " (DepthErrors, averaging='pooled')",
       False)
define("rel_err_pooled", "depth relative error",
       "mean |pred - gt| / gt over pixels with gt != 0, " + _POOLED
       + " (DepthErrors, averaging='pooled')", False)
define("rmse", "depth RMSE",
       "sqrt of the mean (pred - gt)^2 over the valid pixels of the whole split (Vandenhende's NYUD "
       "depth evaluation, as GatedMTL reports it; predictions clamped to >= 1e-9 as its DepthMeter does; "
       "DepthRMSE)", False)
define("log_rmse", "depth log RMSE",
       "sqrt of the mean (log gt - log pred)^2 over the valid pixels (gt != 0) of the whole split, "
       "predictions clamped to >= 1e-9 (Vandenhende's NYUD DepthMeter 'log_rmse'; DepthRMSE)", False)

# --------------------------------------------------------------------------- surface normals

_ANGLE = ("angle in degrees between the L2-normalised prediction and the target, "
          "acos(clamp(p.g, -1, 1)), on pixels whose target is not all-zero")
_NORMALS = {
    "mean_angle": ("normal mean angle error", "mean " + _ANGLE, False, "deg"),
    "median_angle": ("normal median angle error", "median " + _ANGLE, False, "deg"),
    "within_11_25": ("normals within 11.25 deg", "percentage of pixels with " + _ANGLE + " < 11.25",
                     True, "%"),
    "within_22_5": ("normals within 22.5 deg", "percentage of pixels with " + _ANGLE + " < 22.5",
                    True, "%"),
    "within_30": ("normals within 30 deg", "percentage of pixels with " + _ANGLE + " < 30", True, "%"),
}
for _key, (_q, _d, _hib, _unit) in _NORMALS.items():
    _median = _key == "median_angle"
    define(_key, _q, f"{_d}, {_BATCH} (NormalAngles, averaging='batch'"
           + ("; so the median is a mean of per-batch medians)" if _median else ")"), _hib, _unit)
    define(f"{_key}_pooled", _q, f"{_d}, {_POOLED} (NormalAngles, averaging='pooled'"
           + ("; median from a 0.01-deg histogram, within 0.005 deg of the exact one)" if _median else ")"),
           _hib, _unit)

# --------------------------------------------------------------------------- other tasks

define("edge_loss", "edge detection loss",
       "class-balanced binary cross-entropy of the edge map over the val split, as GatedMTL prints "
       "for 'Edge' (REFERENCE: consistent with the balanced BCE loss, not an odsF)", False)
define("success_rate", "RL success rate",
       "mean over the MT10 tasks of the fraction of successful evaluation episodes (CoNAL Table 5; "
       "out of scope: not a vision problem)", True)

# --------------------------------------------------------------------------- gradient conflict

for _m, _what in (("stem", "the stem (conv1 + bn1 + ReLU + max pool; CoNAL's f_S^(1))"),
                  ("layer1", "layer1 (f_S^(2))"), ("layer2", "layer2 (f_S^(3))"),
                  ("layer3", "layer3 (f_S^(4))"), ("layer4", "layer4 (f_S^(5))")):
    define(f"conflict_ratio_{_m}", "gradient-conflict ratio",
           f"percentage of (training batch, task pair) whose task gradients w.r.t. the shared parameters "
           f"of {_what} have a negative cosine, over the whole training split at the measured epoch "
           f"(CoNAL Table 1; mtlrepro.conflicts, recipe field measure_conflicts)", False, "%")

# --------------------------------------------------------------------------- complexity units

#: The units a complexity column may declare, and what each means.
COMPLEXITY_UNITS: dict[str, str] = {
    "params": ("learnable parameters: ETR-NLP counts those one task's forward pass uses "
               "(active_parameter_count(0)), CoNAL and GatedMTL the whole model"),
    "MACs": "multiply-accumulates, one per multiply-add: fvcore's count, which papers often print as 'FLOPs'",
    "FLOPs": "floating-point operations = 2 x MACs",
    "FLOPs-as-printed": "printed as FLOPs; whether they are MACs or 2 x MACs is not established",
    "ms": "milliseconds per iteration (timing)",
    "h": "hours of training (timing)",
}

__all__ = ["MetricDef", "METRIC_DEFS", "COMPLEXITY_UNITS", "define", "get_def", "base_key",
           "incomparable_reason", "same_quantity"]
