"""NYUD-v2 and PASCAL-Context in Vandenhende et al.'s settings (GatedMTL Tables 1-9): tasks, losses.

Task sets (``recipe.task_set``; tasks in the order of the repo's ``parse_task_dictionary``):

===========================  =====================================================================
set                          tasks (kind, outputs)
===========================  =====================================================================
nyud_mt ``gated3``           semseg (seg, 40), depth (depth, 1), normals (normals_l1, 3)
nyud_mt ``gated3_edge``      the three + edge (edge, 1)
pascal_mt ``pascal5``        semseg (seg, 21), human_parts (seg, 7), saliency (saliency, 1),
                             normals (normals_l1, 3), edge (edge, 1)
===========================  =====================================================================

Losses (``utils/common_config.py``: ``get_loss``; one per kind in :mod:`mtlrepro.tasks`):
cross-entropy with ignore for semseg and human parts (the repo's ``SoftMaxwithLoss``,
``ignore_index=255`` = our -1; a batch with no labelled pixel gives 0, the repo NaN), L1 over
valid depth (``DepthLoss``), L1 between the normalised output and the unit target
(``NormalsLoss``), class-balanced BCE with positive weight 0.95 for edges and with the batch's
negative fraction for saliency (``BalancedCrossEntropyLoss``). The task weights (uniform, or
Maninis et al.'s 1 / 2 / 5 / 10 / 50 for PASCAL) are the recipe's weighting
(:mod:`mtlrepro.methods.weightings.scalar`), not the problem's.

Inputs: uint8 images, cached at the training resolution (NYUD 480x640, PASCAL 512x512; the
tiny profile ``image_size`` high, the width at the aspect ratio in multiples of 32), scaled to
[0, 1] and normalised with the ImageNet mean / std per batch, as the repo's ``ToTensor`` +
``Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])``. Evaluation: the val split (the
papers' test set), :mod:`mtlrepro.problems.vandenhende_eval`.

Training augmentation (recipe ``augment: vandenhende``): the repo's flip and ``ScaleNRotate`` on the
device per batch (:mod:`mtlrepro.problems.vandenhende_augment`). Gap (documented): the repo's final
test evaluation at each PASCAL image's own size (here: its online meters at 512x512).
"""
from __future__ import annotations

import torch

from ..tasks import Task, batch_target, task_loss_fn
from .base import Split
from .dense import DenseProblem
from .paths import cache_dir_override, data_root_or_explain, ensure_tiny_dataset
from .vandenhende_eval import VandenhendeEvaluator, task_keys

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_TASKS: dict[str, dict[str, Task]] = {
    "nyud_mt": {"semseg": Task("semseg", "seg", 40), "depth": Task("depth", "depth", 1),
                "normals": Task("normals", "normals_l1", 3), "edge": Task("edge", "edge", 1)},
    "pascal_mt": {"semseg": Task("semseg", "seg", 21), "human_parts": Task("human_parts", "seg", 7),
                  "saliency": Task("saliency", "saliency", 1),
                  "normals": Task("normals", "normals_l1", 3), "edge": Task("edge", "edge", 1)},
}
TASK_SETS: dict[str, dict[str, tuple[str, ...]]] = {
    "nyud_mt": {"gated3": ("semseg", "depth", "normals"),
                "gated3_edge": ("semseg", "depth", "normals", "edge")},
    "pascal_mt": {"pascal5": ("semseg", "human_parts", "saliency", "normals", "edge")},
}
_NATIVE_HW = {"nyud_mt": (480, 640), "pascal_mt": (512, 512)}
_TITLE = {"nyud_mt": "NYUD_MT", "pascal_mt": "PASCAL_MT"}


def vandenhende_tasks(dataset: str, task_set: str) -> list[Task]:
    """The tasks of ``task_set`` on ``dataset`` ("nyud_mt": gated3 | gated3_edge; "pascal_mt": pascal5)."""
    from ..data.datasets import get_dataset
    get_dataset(dataset).task_set(task_set)   # unknown names raise with the known ones
    return [_TASKS[dataset][name] for name in TASK_SETS[dataset][task_set]]


def metric_keys(dataset: str, task_set: str) -> list[str]:
    """Every key the evaluator returns, the primary ones first."""
    keys = [k for ks in task_keys(vandenhende_tasks(dataset, task_set)) for k in ks]
    primary = primary_metric_keys(dataset, task_set)
    return primary + [k for k in keys if k not in primary]


def primary_metric_keys(dataset: str, task_set: str) -> list[str]:
    """GatedMTL's columns: semseg / parts mIoU, depth rmse, normals mean error, saliency mIoU,
    edge loss -- the first key of each task."""
    return [ks[0] for ks in task_keys(vandenhende_tasks(dataset, task_set))]


def input_hw(dataset: str, image_size: int) -> tuple[int, int]:
    """(H, W) the model sees: the native size when ``image_size`` is its height, else
    ``image_size`` high and the width at the native aspect ratio in multiples of 32."""
    h, w = _NATIVE_HW[dataset]
    if image_size == h:
        return h, w
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    return image_size, 32 * max(1, round(image_size * w / h / 32))


def _load(dataset: str, root, split: str, hw, cache_dir, expect: str, progress: bool):
    if dataset == "nyud_mt":
        from ..data.nyud_mt import load_nyud_mt
        return load_nyud_mt(root, split, hw, cache_dir, expect, progress=progress)
    from ..data.pascal_mt import load_pascal_mt
    return load_pascal_mt(root, split, hw, cache_dir, expect, progress=progress)


def _build(dataset: str, recipe, profile: str, data_root: str | None, device: torch.device) -> DenseProblem:
    title = _TITLE[dataset]
    tasks = vandenhende_tasks(dataset, recipe.task_set)
    if recipe.eval_split != "val":
        raise ValueError(f"{recipe.id}: eval_split {recipe.eval_split!r}; {title} has train and val "
                         "only, and val is the test split of the papers: use 'val'")
    hw = input_hw(dataset, recipe.image_size)
    if profile == "tiny":
        root, expect, synthetic = ensure_tiny_dataset(dataset), "any", True
    else:
        if hw != _NATIVE_HW[dataset]:
            nh, nw = _NATIVE_HW[dataset]
            raise ValueError(f"{recipe.id}: image_size {recipe.image_size}, but {title} is trained at "
                             f"{nh}x{nw} (Vandenhende et al., GatedMTL): set image_size: {nh}")
        root, expect, synthetic = data_root_or_explain(dataset, data_root), "full", False
    cache_dir = cache_dir_override(root, dataset)
    show = profile != "tiny"
    train = _load(dataset, root, "train", hw, cache_dir, expect, show)
    ev = _load(dataset, root, "val", hw, cache_dir, expect, show)

    def split(d) -> Split:
        return Split(d.images.to(device), [d.targets[t.name].to(device) for t in tasks])

    memory_format = torch.channels_last if recipe.channels_last else torch.contiguous_format
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255.0 - mean) / std).contiguous(memory_format=memory_format)

    losses = [task_loss_fn(t) for t in tasks]

    def task_loss(t: int, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return losses[t](out, target)

    def batch_targets(targets: list[torch.Tensor]) -> list[torch.Tensor]:
        return [batch_target(t, y) for t, y in zip(tasks, targets)]

    info = {"root": str(root), "n_train": len(train), "n_eval": len(ev), "eval_split": "val",
            "synthetic": synthetic, "dataset": dataset, "task_set": recipe.task_set,
            "native_hw": list(_NATIVE_HW[dataset]), "input_hw": list(hw),
            "normalisation": "ImageNet mean/std (Vandenhende's Normalize)",
            "augmentation": _augmentation_text(dataset, recipe),
            "evaluation": "Vandenhende's online meters on val at the training resolution"}
    if "has_person" in ev.info:
        info["n_eval_with_human_parts"] = int(ev.targets["human_parts"].flatten(1).ge(0).any(1).sum())
    augment, which = None, getattr(recipe, "augment", None)
    if which == "vandenhende":
        from .vandenhende_augment import augment_for
        augment = augment_for(dataset, [t.name for t in tasks])
    elif which:
        raise ValueError(f"{recipe.id}: augment {which!r}; {title} knows 'vandenhende' or none (null)")
    return DenseProblem(
        augment=augment,
        name=f"{dataset}/{recipe.task_set}", task_names=[t.name for t in tasks],
        out_dims=[t.out_dim for t in tasks], input_shape=(3, *hw),
        train=split(train), eval=split(ev), eval_split="val", synthetic=synthetic, data_info=info,
        prepare=prepare, task_loss=task_loss, new_evaluator=lambda: VandenhendeEvaluator(tasks),
        primary_metrics=primary_metric_keys(dataset, recipe.task_set), batch_targets=batch_targets)


def _augmentation_text(dataset: str, recipe) -> str:
    if getattr(recipe, "augment", None) != "vandenhende":
        return "none (recipe augment: null; Vandenhende's flip + ScaleNRotate is augment: vandenhende)"
    from .vandenhende_augment import describe
    return describe(dataset)


def build_nyud_mt_problem(recipe, profile: str, data_root: str | None, device: torch.device) -> DenseProblem:
    return _build("nyud_mt", recipe, profile, data_root, device)


def build_pascal_mt_problem(recipe, profile: str, data_root: str | None, device: torch.device) -> DenseProblem:
    return _build("pascal_mt", recipe, profile, data_root, device)


def _shape(dataset: str, recipe) -> tuple[list[int], tuple[int, ...]]:
    tasks = vandenhende_tasks(dataset, recipe.task_set)
    return [t.out_dim for t in tasks], (3, *input_hw(dataset, recipe.image_size))


def nyud_mt_shape(recipe) -> tuple[list[int], tuple[int, ...]]:
    return _shape("nyud_mt", recipe)


def pascal_mt_shape(recipe) -> tuple[list[int], tuple[int, ...]]:
    return _shape("pascal_mt", recipe)
