"""Cityscapes as preprocessed by MTAN: 128x256, 7 classes + (inverse) depth, ``.npy`` per sample.

The setting of MTAN, Maximum Roaming and ETR-NLP (ETR-NLP's supplement, Table 2): the 7
Cityscapes categories flat, construction, object, nature, sky, human, vehicle (label_7 values
0..6 in that order; "void" is -1 = ignore), plus MTAN's depth map (rescaled inverse depth, i.e.
disparity, about 0..0.49; 0 = invalid). 2,975 train / 500 val samples; val is the test split.
Reading, validation and the cache are shared with NYUv2: :mod:`mtlrepro.data.mtan_npy`.
"""
from __future__ import annotations

from pathlib import Path

from mtlrepro.data.mtan_npy import DenseTensors, MtanSpec, expected_layout, load_mtan

#: label_7's classes in index order (ETR-NLP supplement Table 2's 7-class level; void = -1).
CITYSCAPES_CLASSES: tuple[str, ...] = ("flat", "construction", "object", "nature", "sky",
                                       "human", "vehicle")
CITYSCAPES_SPLIT_SIZES: dict[str, int] = {"train": 2975, "val": 500}
CITYSCAPES_HW: tuple[int, int] = (128, 256)
#: MTAN's depth is rescaled inverse depth, about 0..0.49: a file whose median on valid pixels exceeds
#: 2 holds something else (disparity in pixels, or depth in metres: medians of 10 and more).
CITYSCAPES_DEPTH_MEDIAN_MAX = 2.0

CITYSCAPES = MtanSpec(
    name="cityscapes",
    title="Cityscapes",
    hw=CITYSCAPES_HW,
    label_dir="label_7",
    class_names=CITYSCAPES_CLASSES,
    has_normals=False,
    full_counts=tuple(CITYSCAPES_SPLIT_SIZES.items()),
    depth_desc="inverse depth (disparity), about 0..0.49",
    download=("MTAN's 128x256 version (cityscapes2.zip, 651 MB), linked from the README of "
              "https://github.com/lorenmt/mtan ('Update - Jun 2019'); unzip it into <root>. "
              "label_2/ and label_19/ may stay; they are not read."),
    hw_hints=(((256, 512), "This is MTAN's 256x512 Cityscapes (cityscapes.zip); the papers use "
                           "the 128x256 version (cityscapes2.zip)."),),
    depth_median_max=CITYSCAPES_DEPTH_MEDIAN_MAX,
    depth_unit_hint=(" MTAN's Cityscapes depth is its rescaled inverse depth (about 0..0.49), not "
                     "disparity in pixels nor depth in metres: use the depth/ folder of cityscapes2.zip."),
)

EXPECTED_LAYOUT = expected_layout(CITYSCAPES)


def load_cityscapes(root: str | Path, split: str, cache_dir: str | Path | None = None,
                    expect: str = "full", **kw) -> DenseTensors:
    """One split (``"train"`` or ``"val"``) of MTAN's Cityscapes as cached CHW tensors.

    Returns :class:`~mtlrepro.data.mtan_npy.DenseTensors`: images N x 3 x 128 x 256 float16 in
    [0, 1], labels N x 128 x 256 int8 (-1 ignore), depth N x 1 x 128 x 256 float32 (0 invalid),
    normals None. ``expect="full"`` insists on 2,975 / 500 samples; keyword arguments
    (``num_workers``, ``progress``, ``verify``) go to :func:`~mtlrepro.data.mtan_npy.load_mtan`.
    """
    return load_mtan(CITYSCAPES, root, split, cache_dir, expect, **kw)
