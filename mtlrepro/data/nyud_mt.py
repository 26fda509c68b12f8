"""NYUD-v2 in Vandenhende et al.'s multi-task format (NYUD_MT): read, validate, cache.

The format of ``NYUD_MT.tgz`` as ``data/nyud.py`` (class ``NYUD_MT``) of
``SimonVandenhende/Multi-Task-Learning-PyTorch`` reads it, and GatedMTL (Tables 1-4, 7) uses it::

    <root>/gt_sets/{train,val}.txt      one id per line (795 train / 654 val; val is the test set)
    <root>/images/<id>.jpg              480x640 RGB
    <root>/segmentation/<id>.png        480x640, 0 = unlabelled, 1..40 = the 40 NYU classes
    <root>/depth/<id>.npy               480x640 (or 480x640x1) float, metres, 0 = no depth
    <root>/normals/<id>.npy             480x640x3 float surface normals, all-zero = invalid
    <root>/edge/<id>.npy                480x640 (or x1) edge map, 0 / 1

(``<root>`` may also be the folder holding ``NYUD_MT/``.) The repo asserts that all five files
exist for every id whatever tasks are trained; so does this reader. What it does with them
(the repo's loader, ``AddIgnoreRegions`` and ``FixedResize`` at 480x640):

* segmentation: ``_load_semseg`` maps 0 -> 255 (ignore) and k -> k - 1, i.e. 1..40 -> 0..39;
  stored here as int8 with **-1 = ignore**;
* depth: as stored (metres); ``AddIgnoreRegions`` marks depth 0 as ignore (255): stored here as
  float32 with **0 = invalid** (the convention of :mod:`mtlrepro.tasks.depth`);
* normals: ``FixedResize`` divides every vector by its norm + eps; ``AddIgnoreRegions`` marks
  zero-norm vectors ignore: stored as float16 unit vectors, **all-zero = invalid**. float16
  keeps a component to 4.9e-4; the problem renormalises in float32 per batch, so the stored
  direction is off by < 0.03 deg (half the memory of float32: 1.5 GB for the train split);
* edge: the loss binarises with ``label >= 0.5`` (any finite non-negative values are accepted,
  as the repo accepts them); stored as uint8 0 / 1.

Every file is checked when the cache is built (decodable, shape 480x640 as its image, values:
labels integer in 0..40, depth finite >= 0 with a median of at most 20 on valid pixels -- metres,
not millimetres --, normals finite within [-1, 1] with a median length in 0.9..1.1 on valid
pixels and, over the split, some negative component -- not (n + 1) / 2 --, edges finite >= 0;
:mod:`mtlrepro.data.vandenhende_io`);
every problem is a :class:`DataError` naming the file and what was expected, and nothing is
cached from a failed read. The cache (:mod:`mtlrepro.data.cache`) holds the split at the
training resolution ``hw``: the native 480x640 (no resampling) or, for smoke runs, a smaller
size (image bicubic, labels / depth / edges nearest, normals bicubic + renormalised; see
:mod:`mtlrepro.data.vandenhende_io`).

Training augmentation (Vandenhende's random horizontal flip with the normals' x negated,
``ScaleNRotate`` with scales {1, 1.2, 1.5} and depth divided by the scale) is applied to batches of
these tensors on the device: :mod:`mtlrepro.problems.vandenhende_augment`.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mtlrepro.data import cache as _cache
from mtlrepro.data import vandenhende_io as vio
from mtlrepro.data.errors import DataError

NYUD_HW: tuple[int, int] = (480, 640)
NYUD_SPLIT_SIZES: dict[str, int] = {"train": 795, "val": 654}
#: The 40 classes in label order 0..39 (the repo's ``evaluation/eval_semseg.py``, NYU_CATEGORY_NAMES).
NYUD_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop")
#: folder -> (file extension, what the file holds)
NYUD_FILES: dict[str, tuple[str, str]] = {
    "images": (".jpg", "480x640 RGB JPEG"),
    "segmentation": (".png", "480x640 PNG, 0 = unlabelled, 1..40 = class"),
    "depth": (".npy", "480x640 (or 480x640x1) float depth in metres, 0 = invalid"),
    "normals": (".npy", "480x640x3 float surface normals, all-zero = invalid"),
    "edge": (".npy", "480x640 (or 480x640x1) edge map with values 0 / 1"),
}
#: Bump when the cached tensors change meaning (2: the unit / sign / depth-scale checks, so caches
#: built without them are read again).
CACHE_VERSION = 2

EXPECTED_LAYOUT = "\n".join([
    "Expected Vandenhende et al.'s NYUD_MT (NYUD_MT.tgz of SimonVandenhende/Multi-Task-Learning-PyTorch)",
    "under <root> (the folder you pass, or the folder holding NYUD_MT/):",
    "    <root>/gt_sets/train.txt, val.txt         one id per line (795 / 654 ids)",
    *(f"    <root>/{d}/<id>{ext:<5}{'':<{24 - len(d)}} {what}" for d, (ext, what) in NYUD_FILES.items()),
    "Download: the Google Drive file 14EAEMXmd3zs2hIMY63UhHPSFPDAkiTzw (NYUD_MT.tgz) named in "
    "data/nyud.py of that repository; extract it into <root>.",
])


def _paths(base: Path, ids: list[str]) -> dict[str, list[Path]]:
    return {d: [base / d / f"{i}{ext}" for i in ids] for d, (ext, _) in NYUD_FILES.items()}


def _hw2(a: np.ndarray, path: Path, what: str) -> np.ndarray:
    """H x W or H x W x 1 -> H x W (both occur in derived copies; the repo accepts both)."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    vio.check_hw(a, path, NYUD_HW, what)
    return a


def _read_sample(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """One sample's arrays at 480x640, checked; raises DataError naming the file."""
    what = {d: w for d, (_, w) in NYUD_FILES.items()}
    img = vio.read_rgb(paths["images"], what["images"])
    if img.shape[:2] != NYUD_HW:
        raise DataError(f"{paths['images']} is {img.shape[1]}x{img.shape[0]} (width x height), "
                        f"expected 640x480 ({what['images']}).", paths["images"])
    seg = vio.read_png(paths["segmentation"], what["segmentation"])
    vio.check_hw(seg, paths["segmentation"], NYUD_HW, what["segmentation"])
    if seg.dtype.kind not in "iu":
        raise DataError(f"{paths['segmentation']} holds {seg.dtype} values; expected integer labels "
                        f"({what['segmentation']}).", paths["segmentation"])
    bad = (seg < 0) | (seg > len(NYUD_CLASSES))
    if bad.any():
        raise DataError(f"{paths['segmentation']}: {int(bad.sum())} pixels hold values "
                        f"{np.unique(seg[bad])[:6].tolist()} outside 0..{len(NYUD_CLASSES)}; expected "
                        f"{what['segmentation']}.", paths["segmentation"])
    depth = _hw2(vio.read_npy(paths["depth"], what["depth"]), paths["depth"], what["depth"])
    vio.check_finite(depth, paths["depth"], what["depth"])
    if depth.min() < 0:
        raise DataError(f"{paths['depth']}: {int((depth < 0).sum())} negative values (minimum "
                        f"{float(depth.min()):.4g}); expected {what['depth']}.", paths["depth"])
    vio.check_depth_scale(depth, paths["depth"], what["depth"], vio.METRIC_DEPTH_MEDIAN_MAX,
                          vio.MILLIMETRE_HINT)
    normals = vio.read_npy(paths["normals"], what["normals"])
    vio.check_hw(normals, paths["normals"], NYUD_HW, what["normals"], channels=3)
    vio.check_finite(normals, paths["normals"], what["normals"])
    if np.abs(normals).max() > 1 + vio.NORMALS_TOL:
        raise DataError(f"{paths['normals']}: components reach {float(np.abs(normals).max()):.4g} in "
                        f"magnitude; expected {what['normals']} (unit vectors, components in [-1, 1]).",
                        paths["normals"])
    signs = vio.check_unit_normals(normals, paths["normals"], what["normals"])
    edge = _hw2(vio.read_npy(paths["edge"], what["edge"]), paths["edge"], what["edge"])
    vio.check_finite(edge, paths["edge"], what["edge"])
    if edge.min() < 0:
        raise DataError(f"{paths['edge']}: values from {float(edge.min()):.4g} to {float(edge.max()):.4g}; "
                        f"expected {what['edge']} (non-negative; binarised at 0.5).", paths["edge"])
    return {"image": img, "semseg": seg, "depth": depth, "normals": normals, "edge": edge,
            "normals_signs": signs}


def _build(ids: list[str], paths: dict[str, list[Path]], hw: tuple[int, int], num_workers: int,
           progress: bool, desc: str) -> dict:
    n, (h, w) = len(ids), hw
    images = torch.empty((n, 3, h, w), dtype=torch.uint8)
    semseg = torch.empty((n, h, w), dtype=torch.int8)
    depth = torch.empty((n, 1, h, w), dtype=torch.float32)
    normals = torch.empty((n, 3, h, w), dtype=torch.float16)
    edge = torch.empty((n, h, w), dtype=torch.uint8)
    signs = np.zeros((n, 2), dtype=bool)  # per file: has valid normals, one has a negative component

    def work(lo: int, hi: int) -> int:
        for i in range(lo, hi):
            s = _read_sample({d: paths[d][i] for d in NYUD_FILES})
            signs[i] = s["normals_signs"]
            images[i] = vio.resize_image(s["image"], hw)
            seg = s["semseg"].astype(np.int16) - 1          # 0 -> -1 (ignore), k -> k - 1
            semseg[i] = vio.resize_nearest(seg, hw, torch.int8)
            depth[i, 0] = vio.resize_nearest(s["depth"].astype(np.float32), hw, torch.float32)
            normals[i] = vio.resize_normals(s["normals"], hw).to(torch.float16)
            edge[i] = vio.resize_nearest((s["edge"] >= 0.5).astype(np.uint8), hw, torch.uint8)
        return hi - lo

    _cache.fill_in_chunks(n, work, chunk=32, num_workers=num_workers, desc=desc, unit="sample",
                          progress=progress)
    vio.check_normals_signed(signs[:, 0], signs[:, 1], paths["normals"], paths["normals"][0].parent,
                             NYUD_FILES["normals"][1])
    return {"images": images, "semseg": semseg, "depth": depth, "normals": normals, "edge": edge}


def load_nyud_mt(root: str | Path, split: str, hw: tuple[int, int] = NYUD_HW,
                 cache_dir: str | Path | None = None, expect: str = "full", *,
                 num_workers: int | None = None, progress: bool = True,
                 verify: bool = True) -> vio.MultiTaskTensors:
    """One split (``"train"`` / ``"val"``) of NYUD_MT as cached tensors at ``hw``.

    Returns :class:`~mtlrepro.data.vandenhende_io.MultiTaskTensors` with ``images`` N x 3 x H x W
    uint8 and ``targets``: ``semseg`` N x H x W int8 (0..39, -1 ignore), ``depth`` N x 1 x H x W
    float32 metres (0 invalid), ``normals`` N x 3 x H x W float16 (unit, all-zero invalid),
    ``edge`` N x H x W uint8 (0 / 1). ``expect="full"`` insists on 795 / 654 ids.
    """
    if split not in vio.SPLITS:
        raise ValueError(f"split must be one of {', '.join(vio.SPLITS)} (NYUD_MT's val is its "
                         f"test set), got {split!r}")
    base = vio.find_root(root, "gt_sets", "NYUD_MT", "NYUD_MT", EXPECTED_LAYOUT)
    ids_file = base / "gt_sets" / f"{split}.txt"
    ids = vio.read_ids(ids_file, "NYUD_MT", EXPECTED_LAYOUT)
    vio.check_count(len(ids), split, NYUD_SPLIT_SIZES, ids_file, "NYUD_MT", expect, EXPECTED_LAYOUT)
    paths = _paths(base, ids)
    for d, (_, what) in NYUD_FILES.items():
        vio.require_files(paths[d], what, EXPECTED_LAYOUT)
    hw = (int(hw[0]), int(hw[1]))
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _cache.default_cache_dir(base, "nyud_mt")
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    fp = vio.fingerprint(base, paths, ids, ids_file)
    params = {"dataset": "nyud_mt", "version": CACHE_VERSION, "hw": list(hw), "split": split,
              "images": "uint8 CHW", "semseg": "int8 (-1 ignore)", "depth": "float32 (0 invalid)",
              "normals": "float16 unit (0 invalid)", "edge": "uint8 0/1"}
    result = _cache.load_or_build(
        cache_dir, f"nyud_mt_{split}_{hw[0]}x{hw[1]}", fingerprint=fp, params=params, verify=verify,
        build=lambda: _build(ids, paths, hw, workers, progress, f"NYUD_MT {split}: decoding"),
        recheck=lambda: vio.fingerprint(base, paths, ids, ids_file), source=base)
    p = result.payload
    return vio.MultiTaskTensors(
        images=p["images"], targets={k: p[k] for k in ("semseg", "depth", "normals", "edge")},
        ids=ids, split=split, dataset="nyud_mt", root=base, hw=hw,
        info={"native_hw": list(NYUD_HW)}, cache_path=result.data_path,
        cache_sha256=result.sha256, source_sha256=result.source_sha256)
