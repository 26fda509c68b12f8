"""NYUv2 as preprocessed by MTAN: 288x384, 13 classes + depth + surface normals, ``.npy`` per sample.

MTAN's files (the setting of MTAN, Maximum Roaming, ETR-NLP, and LibMTL/CoNAL): 13-class
segmentation (``label/``, values 0..12, -1 = ignore), depth in metres (0 = invalid) and
surface normals (unit vectors, all-zero = invalid; MTAN took them from Eigen & Fergus).
795 train / 654 val samples; val is the test split. Reading, validation and the cache are
shared with Cityscapes: :mod:`mtlrepro.data.mtan_npy`.
"""
from __future__ import annotations

from pathlib import Path

from mtlrepro.data import vandenhende_io as vio
from mtlrepro.data.mtan_npy import DenseTensors, MtanSpec, expected_layout, load_mtan

#: The 13 classes in index order. ASSUMPTION (names only; indices are what is trained and
#: scored): the 13-class mapping of ankurhanda/nyuv2-meta-data, which MTAN points to, with its
#: class 0 "unknown" shifted to -1.
NYUV2_CLASSES: tuple[str, ...] = ("bed", "books", "ceiling", "chair", "floor", "furniture",
                                  "objects", "picture", "sofa", "table", "tv", "wall", "window")
NYUV2_SPLIT_SIZES: dict[str, int] = {"train": 795, "val": 654}
NYUV2_HW: tuple[int, int] = (288, 384)

NYUV2 = MtanSpec(
    name="nyuv2",
    title="NYUv2",
    hw=NYUV2_HW,
    label_dir="label",
    class_names=NYUV2_CLASSES,
    has_normals=True,
    full_counts=tuple(NYUV2_SPLIT_SIZES.items()),
    depth_desc="depth in metres",
    download=("MTAN's pre-processed NYUv2 (nyuv2.zip), linked from the README of "
              "https://github.com/lorenmt/mtan; unzip it into <root>."),
    hw_hints=(((480, 640), "480x640 is NYUv2's raw resolution; MTAN's preprocessed files are "
                           "288x384 (nyuv2.zip). Vandenhende's NYUD format is another dataset."),),
    depth_median_max=vio.METRIC_DEPTH_MEDIAN_MAX,   # metres: a median above 20 is millimetres
    depth_unit_hint=vio.MILLIMETRE_HINT,
)

EXPECTED_LAYOUT = expected_layout(NYUV2)


def load_nyuv2(root: str | Path, split: str, cache_dir: str | Path | None = None,
               expect: str = "full", **kw) -> DenseTensors:
    """One split (``"train"`` or ``"val"``) of MTAN's NYUv2 as cached CHW tensors.

    Returns :class:`~mtlrepro.data.mtan_npy.DenseTensors`: images N x 3 x 288 x 384 float16 in
    [0, 1], labels N x 288 x 384 int8 (-1 ignore), depth N x 1 x 288 x 384 float32 metres
    (0 invalid), normals N x 3 x 288 x 384 float32 (all-zero invalid). ``expect="full"``
    insists on 795 / 654 samples; keyword arguments go to
    :func:`~mtlrepro.data.mtan_npy.load_mtan`.
    """
    return load_mtan(NYUV2, root, split, cache_dir, expect, **kw)
