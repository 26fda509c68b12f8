"""The ``DATASETS`` registry: everything the project knows about one dataset, in one entry.

A :class:`DatasetSpec` names the problem builder (reader + tasks + losses + evaluator ready for the
trainer), the shape function (output sizes and input shape without touching data, for profiling),
the split sizes of the real dataset, the on-disk layout a user must provide (printed when data are
missing), the tiny generator that writes a small copy in exactly that format, and the task sets.
Adding a dataset is one new reader module plus one ``register(DatasetSpec(...))`` here.

Targets are lazy ``"module:attr"`` strings, so importing this module imports no torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..registry import Registry, load_target


@dataclass(frozen=True)
class TaskSet:
    """A named list of tasks of a dataset (what ``recipe.task_set`` selects)."""

    name: str
    n_tasks: int
    description: str
    source: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    problem: str                      # "module:attr" -> f(recipe, profile, data_root, device) -> Problem
    shape: str                        # "module:attr" -> f(recipe) -> (out_dims, input_shape)
    split_sizes: dict[str, int]       # the real dataset's splits (train size drives cost estimates)
    expected_layout: str              # what the user must put where under DATA_ROOT
    tiny_generator: str               # "module:attr" -> f(root, **tiny_kwargs, seed=...) writes the real format
    tiny_kwargs: dict[str, Any]       # sizes (and layout) of the generated copy
    task_sets: dict[str, TaskSet] = field(default_factory=dict)
    #: the splits the papers report as their test set (MTAN's data has no other: its "val" is it);
    #: choosing an epoch by its score on one of them is test-set selection
    test_splits: tuple[str, ...] = ("test",)
    version: int = 1                  # the data pipeline's implementation version (fingerprinted)

    def build_problem(self, recipe, profile: str, data_root: str | None, device) -> Any:
        return load_target(self.problem)(recipe, profile, data_root, device)

    def problem_shape(self, recipe) -> tuple[list[int], tuple[int, ...]]:
        return load_target(self.shape)(recipe)

    def task_set(self, name: str) -> TaskSet:
        if name not in self.task_sets:
            from ..registry import UnknownKeyError
            raise UnknownKeyError(f"{self.title} task set", name, list(self.task_sets))
        return self.task_sets[name]


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.register(spec.name, spec)
    return spec


def _sets(*sets: TaskSet) -> dict[str, TaskSet]:
    return {s.name: s for s in sets}


register(DatasetSpec(
    name="celeba", title="CelebA",
    problem="mtlrepro.problems.celeba:build_celeba_problem", shape="mtlrepro.problems.celeba:celeba_shape",
    split_sizes={"train": 162_770, "val": 19_867, "test": 19_962},
    expected_layout=(
        "CelebA (aligned faces) under DATA_ROOT, either torchvision's layout\n"
        "    DATA_ROOT/celeba/img_align_celeba/000001.jpg ... 202599.jpg\n"
        "    DATA_ROOT/celeba/list_attr_celeba.txt\n"
        "    DATA_ROOT/celeba/list_eval_partition.txt\n"
        "  or the official one\n"
        "    DATA_ROOT/Img/img_align_celeba/*.jpg\n"
        "    DATA_ROOT/Anno/list_attr_celeba.txt\n"
        "    DATA_ROOT/Eval/list_eval_partition.txt"),
    tiny_generator="mtlrepro.data.generate:generate_celeba",
    tiny_kwargs={"n_train": 32, "n_val": 16, "n_test": 16, "layout": "torchvision"},
    task_sets=_sets(TaskSet("group8", 8, "the 40 attributes in Maximum Roaming's 8 groups", "Max Roaming, ETR-NLP"),
                    TaskSet("attr40", 40, "one task per attribute", "Max Roaming, ETR-NLP"),
                    TaskSet("conal9", 9, "TAG's 9 attributes, one task each", "CoNAL Table 6 (TAG's CelebA setting)"),
                    TaskSet("gated3", 3, "gender, age, clothes attribute groups (a documented choice)", "GatedMTL")),
))

register(DatasetSpec(
    name="cityscapes", title="Cityscapes (MTAN's 128x256)",
    test_splits=("val",),
    problem="mtlrepro.problems.dense:build_cityscapes_problem", shape="mtlrepro.problems.dense:cityscapes_shape",
    split_sizes={"train": 2_975, "val": 500},
    expected_layout=(
        "MTAN's preprocessed Cityscapes (128x256, cityscapes2.zip from github.com/lorenmt/mtan)\n"
        "    DATA_ROOT/cityscapes/{train,val}/image/<i>.npy     128x256x3 float in [0, 1]\n"
        "    DATA_ROOT/cityscapes/{train,val}/label_7/<i>.npy   128x256 float, 0..6, -1 = ignore\n"
        "    DATA_ROOT/cityscapes/{train,val}/depth/<i>.npy     128x256x1 float, 0 = invalid\n"
        "  (i = 0..2974 train, 0..499 val); DATA_ROOT/cityscapes/low_res/{train,val}/... and\n"
        "  DATA_ROOT/{train,val}/... (DATA_ROOT = that folder itself) are accepted too"),
    tiny_generator="mtlrepro.data.generate:generate_cityscapes",
    tiny_kwargs={"n_train": 16, "n_val": 8},
    task_sets=_sets(TaskSet("mr8", 8, "7 one-vs-rest segmentations + depth", "Max Roaming, ETR-NLP"),
                    TaskSet("std2", 2, "7-class segmentation + depth", "MTAN, LibMTL/CoNAL")),
))

register(DatasetSpec(
    name="nyuv2", title="NYUv2 (MTAN's 288x384, 13 classes)",
    test_splits=("val",),
    problem="mtlrepro.problems.dense:build_nyuv2_problem", shape="mtlrepro.problems.dense:nyuv2_shape",
    split_sizes={"train": 795, "val": 654},
    expected_layout=(
        "MTAN's preprocessed NYUv2 (288x384, nyuv2.zip from github.com/lorenmt/mtan)\n"
        "    DATA_ROOT/nyuv2/{train,val}/image/<i>.npy    288x384x3 float in [0, 1]\n"
        "    DATA_ROOT/nyuv2/{train,val}/label/<i>.npy    288x384 float, 0..12, -1 = ignore\n"
        "    DATA_ROOT/nyuv2/{train,val}/depth/<i>.npy    288x384x1 float metres, 0 = invalid\n"
        "    DATA_ROOT/nyuv2/{train,val}/normal/<i>.npy   288x384x3 float unit normals, all-zero = invalid\n"
        "  (i = 0..794 train, 0..653 val); DATA_ROOT/nyuv2/low_res/{train,val}/... and\n"
        "  DATA_ROOT/{train,val}/... (DATA_ROOT = that folder itself) are accepted too"),
    tiny_generator="mtlrepro.data.generate:generate_nyuv2",
    tiny_kwargs={"n_train": 16, "n_val": 8},
    task_sets=_sets(TaskSet("mr15", 15, "13 one-vs-rest segmentations + depth + normals", "Max Roaming, ETR-NLP"),
                    TaskSet("std3", 3, "13-class segmentation + depth + normals", "MTAN, LibMTL/CoNAL")),
))

register(DatasetSpec(
    name="nyud_mt", title="NYUD-v2 (Vandenhende's NYUD_MT, 480x640, 40 classes)",
    test_splits=("val",),
    problem="mtlrepro.problems.vandenhende:build_nyud_mt_problem",
    shape="mtlrepro.problems.vandenhende:nyud_mt_shape",
    split_sizes={"train": 795, "val": 654},
    expected_layout=(
        "Vandenhende et al.'s NYUD_MT (NYUD_MT.tgz, SimonVandenhende/Multi-Task-Learning-PyTorch)\n"
        "    DATA_ROOT/[NYUD_MT/]gt_sets/{train,val}.txt   one id per line (795 / 654)\n"
        "    DATA_ROOT/[NYUD_MT/]images/<id>.jpg           480x640 RGB\n"
        "    DATA_ROOT/[NYUD_MT/]segmentation/<id>.png     0 = unlabelled, 1..40 = class\n"
        "    DATA_ROOT/[NYUD_MT/]depth/<id>.npy            480x640 float metres, 0 = invalid\n"
        "    DATA_ROOT/[NYUD_MT/]normals/<id>.npy          480x640x3 float, all-zero = invalid\n"
        "    DATA_ROOT/[NYUD_MT/]edge/<id>.npy             480x640 edge map 0 / 1"),
    tiny_generator="mtlrepro.data.generate_vandenhende:generate_nyud_mt",
    tiny_kwargs={"n_train": 8, "n_val": 4},
    task_sets=_sets(TaskSet("gated3", 3, "40-class semseg + depth + surface normals", "GatedMTL"),
                    TaskSet("gated3_edge", 4, "gated3 + edge detection", "Vandenhende et al.")),
))

register(DatasetSpec(
    name="pascal_mt", title="PASCAL-Context (Vandenhende's PASCAL_MT, 512x512, 5 tasks)",
    test_splits=("val",),
    problem="mtlrepro.problems.vandenhende:build_pascal_mt_problem",
    shape="mtlrepro.problems.vandenhende:pascal_mt_shape",
    split_sizes={"train": 4_998, "val": 5_105},
    expected_layout=(
        "Vandenhende et al.'s PASCAL_MT (PASCAL_MT.tgz, SimonVandenhende/Multi-Task-Learning-PyTorch)\n"
        "    DATA_ROOT/[PASCAL_MT/]ImageSets/Context/{train,val}.txt  one id per line (4998 / 5105)\n"
        "    DATA_ROOT/[PASCAL_MT/]JPEGImages/<id>.jpg                RGB\n"
        "    DATA_ROOT/[PASCAL_MT/]semseg/pascal-context/<id>.png     0..20, 255 = ignore\n"
        "    DATA_ROOT/[PASCAL_MT/]human_parts/<id>.mat               PASCAL-Part 'anno' struct\n"
        "    DATA_ROOT/[PASCAL_MT/]pascal-context/trainval/<id>.mat   'LabelMap' (edges, normals mask)\n"
        "    DATA_ROOT/[PASCAL_MT/]normals_distill/<id>.png           RGB, normal = 2x/255 - 1\n"
        "    DATA_ROOT/[PASCAL_MT/]sal_distill/<id>.png               grey, saliency = x/255 > 0.5\n"
        "  (.mat files are read with scipy)"),
    tiny_generator="mtlrepro.data.generate_vandenhende:generate_pascal_mt",
    tiny_kwargs={"n_train": 8, "n_val": 4},
    task_sets=_sets(TaskSet("pascal5", 5, "semseg + human parts + saliency + normals + edge",
                            "GatedMTL, Maninis et al.")),
))


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.get(name)
