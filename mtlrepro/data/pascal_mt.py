"""PASCAL-Context in Vandenhende et al.'s multi-task format (PASCAL_MT): read, validate, cache.

The format of ``PASCAL_MT.tgz`` as ``data/pascal_context.py`` (class ``PASCALContext``) of
``SimonVandenhende/Multi-Task-Learning-PyTorch`` reads it, and GatedMTL (Tables 5, 6, 8, 9) uses it::

    <root>/ImageSets/Context/{train,val}.txt     one id per line (4,998 train / 5,105 val = test)
    <root>/JPEGImages/<id>.jpg                   RGB, any size (PASCAL: at most 500 per side)
    <root>/semseg/pascal-context/<id>.png        21 classes 0..20 (VOC), 255 = ignore
                                                 (<root>/semseg/VOC12/<id>.png is read first when
                                                 it exists, as the repo's _get_semseg_fname does)
    <root>/human_parts/<id>.mat                  PASCAL-Part annotation (mtlrepro.data.pascal_parts)
    <root>/pascal-context/trainval/<id>.mat      'LabelMap': the PASCAL-Context label map (459 classes)
    <root>/normals_distill/<id>.png              RGB distilled surface normals
    <root>/sal_distill/<id>.png                  grey distilled saliency, 0..255

(``<root>`` may also be the folder holding ``PASCAL_MT/``.) All six files must exist for every
id (the repo asserts it whatever tasks are trained). Per task, the repo's rule, then
``FixedResize`` to 512x512 and ``AddIgnoreRegions``:

* semseg: the PNG's values; stored int8, **255 -> -1 = ignore**;
* human parts: :func:`mtlrepro.data.pascal_parts.human_parts_from_mat` (7 classes, 0 =
  background); a target that is all zeros after resizing (no person, or persons without part
  masks) becomes **all -1 = ignore**;
* edge: ``thin(|Laplacian(LabelMap)| > 0)`` at the image's resolution
  (:func:`mtlrepro.data.edges.edges_from_labels`), stored uint8 0 / 1;
* normals: RGB -> ``2 x / 255 - 1``, kept only at pixels whose LabelMap class is one of
  :data:`NORMALS_VALID_CLASSES` (elsewhere 0), bicubic-resized and renormalised; stored
  float16, **all-zero = invalid** (the problem renormalises per batch in float32);
* saliency: ``x / 255 > 0.5``, stored uint8 0 / 1.

Labels, edges and saliency are resized with nearest, the image bicubic
(:mod:`mtlrepro.data.vandenhende_io`). Every file is checked when the cache is built (decodable;
image-sized; semseg values in 0..20 or 255; LabelMap a 2-D integer array >= 0; part names known
and the PASCAL-Part struct's fields present; normals RGB, decoding to vectors of median length
0.5..1.5 on the valid classes; saliency one channel) and every problem is a :class:`DataError` naming the file and what
was expected; nothing is cached from a failed read. ``.mat`` files are read with
``scipy.io.loadmat`` (scipy is needed at runtime for this dataset).

The split at 512x512 is 13 bytes per pixel (image 3, four label maps 4, normals 6): 17 GB per
split. The training augmentation of Vandenhende's code (random horizontal flip with the normals'
x negated, ``ScaleNRotate`` with rotations in +-20 deg and scales 0.75..1.25, the normals rotated
with the image) runs on batches of these tensors on the device
(:mod:`mtlrepro.problems.vandenhende_augment`). The repo's final test evaluation resizes predictions back to
each image's own size; the metrics here are its online meters at 512x512.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mtlrepro.data import cache as _cache
from mtlrepro.data import vandenhende_io as vio
from mtlrepro.data.edges import edges_from_labels
from mtlrepro.data.errors import DataError
from mtlrepro.data.pascal_parts import human_parts_from_mat

PASCAL_HW: tuple[int, int] = (512, 512)
PASCAL_SPLIT_SIZES: dict[str, int] = {"train": 4998, "val": 5105}
#: The 21 semseg classes in label order (the repo's VOC_CATEGORY_NAMES).
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")
SEMSEG_IGNORE = 255
#: PASCAL-Context classes (LabelMap values) on which the distilled normals are kept: the repo's
#: ``normals_valid_classes``, i.e. every class name of ``data/db_info/nyu_classes.json`` that is
#: also in ``data/db_info/context_classes.json`` (but 'unknown'), mapped to its context id, plus
#: 'tvmonitor' (427). 170 classes, derived from those two files.
NORMALS_VALID_CLASSES: tuple[int, ...] = (
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49,
    50, 51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101,
    104, 105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165,
    172, 174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228,
    230, 232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275,
    281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319,
    323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380,
    383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430,
    432, 440, 441, 442, 443, 444, 446, 454, 457)
#: folder -> (file extension, what the file holds); semseg has two candidate folders
PASCAL_FILES: dict[str, tuple[str, str]] = {
    "JPEGImages": (".jpg", "RGB JPEG"),
    "semseg/pascal-context": (".png", "PNG of the image's size, classes 0..20, 255 = ignore"),
    "human_parts": (".mat", "PASCAL-Part annotation struct 'anno' (objects with class_ind, mask, parts)"),
    "pascal-context/trainval": (".mat", "'LabelMap': PASCAL-Context label map of the image's size"),
    "normals_distill": (".png", "RGB PNG of the image's size, normal = 2 x / 255 - 1"),
    "sal_distill": (".png", "one-channel PNG of the image's size, saliency = x / 255 > 0.5"),
}
#: Bump when the cached tensors change meaning (2: the distilled normals' length check).
CACHE_VERSION = 2
#: Decoded distilled normals (2 x / 255 - 1) on valid classes: the median length must lie in this
#: band. Lenient (unit vectors quantised to 8 bits have length 1 +- 0.01), so only files that are no
#: normal map at all fail: a black or white image (length 1.73), a grey one (about 0).
DISTILLED_NORM_BAND: tuple[float, float] = (0.5, 1.5)

EXPECTED_LAYOUT = "\n".join([
    "Expected Vandenhende et al.'s PASCAL_MT (PASCAL_MT.tgz of SimonVandenhende/Multi-Task-Learning-PyTorch)",
    "under <root> (the folder you pass, or the folder holding PASCAL_MT/):",
    "    <root>/ImageSets/Context/train.txt, val.txt    one id per line (4998 / 5105 ids)",
    *(f"    <root>/{d}/<id>{ext:<5}{'':<{30 - len(d)}} {what}" for d, (ext, what) in PASCAL_FILES.items()),
    "  (<root>/semseg/VOC12/<id>.png, when present, is read instead of semseg/pascal-context/).",
    "Download: https://data.vision.ee.ethz.ch/kmaninis/share/MTL/PASCAL_MT.tgz (the URL in "
    "data/pascal_context.py of that repository); extract it into <root>.",
])


def _paths(base: Path, ids: list[str]) -> dict[str, list[Path]]:
    out = {d: [base / d / f"{i}{ext}" for i in ids] for d, (ext, _) in PASCAL_FILES.items()}
    voc = base / "semseg" / "VOC12"
    if voc.is_dir():  # the repo's _get_semseg_fname: VOC12 first, then pascal-context
        out["semseg/pascal-context"] = [voc / f"{i}.png" if (voc / f"{i}.png").is_file() else p
                                        for i, p in zip(ids, out["semseg/pascal-context"])]
    return out


def _what(d: str) -> str:
    return PASCAL_FILES[d][1]


def _label_map(path: Path, hw: tuple[int, int]) -> np.ndarray:
    mat = vio.read_mat(path, _what("pascal-context/trainval"))
    if "LabelMap" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path} has no variable 'LabelMap' (it holds {keys}); expected "
                        f"{_what('pascal-context/trainval')}.", path)
    lab = np.asarray(mat["LabelMap"])
    if lab.dtype.kind not in "biuf":
        raise DataError(f"{path}: LabelMap has dtype {lab.dtype} (shape {lab.shape}); expected a 2-D "
                        f"integer array of class ids >= 0, {hw[0]} x {hw[1]} like its image.", path)
    if lab.ndim != 2:
        raise DataError(f"{path}: LabelMap has shape {lab.shape}, expected {tuple(hw)} (a 2-D integer "
                        "array of class ids >= 0, the image's height x width).", path)
    vio.check_hw(lab, path, hw, _what("pascal-context/trainval"))
    vio.check_finite(lab, path, "integer class ids >= 0")
    if (lab < 0).any() or (lab != np.round(lab)).any():
        raise DataError(f"{path}: LabelMap holds values other than integer class ids >= 0.", path)
    return lab


def _read_sample(p: dict[str, Path]) -> dict[str, np.ndarray]:
    """One sample's arrays at the image's resolution, checked; DataError names the file."""
    img = vio.read_rgb(p["JPEGImages"], _what("JPEGImages"))
    hw = img.shape[:2]
    sp = p["semseg/pascal-context"]
    seg = vio.read_png(sp, _what("semseg/pascal-context"))
    vio.check_hw(seg, sp, hw, _what("semseg/pascal-context"))
    if seg.dtype.kind not in "iu":
        raise DataError(f"{sp} holds {seg.dtype} values; expected integer labels "
                        f"({_what('semseg/pascal-context')}).", sp)
    bad = ((seg > len(VOC_CLASSES) - 1) & (seg != SEMSEG_IGNORE)) | (seg < 0)
    if bad.any():
        raise DataError(f"{sp}: {int(bad.sum())} pixels hold values {np.unique(seg[bad])[:6].tolist()}; "
                        f"expected {_what('semseg/pascal-context')}.", sp)
    lab = _label_map(p["pascal-context/trainval"], hw)
    mat = vio.read_mat(p["human_parts"], _what("human_parts"))
    parts, has_person = human_parts_from_mat(mat, p["human_parts"], hw)
    np_ = p["normals_distill"]
    nrm = vio.read_png(np_, _what("normals_distill"))
    if nrm.ndim != 3 or nrm.shape[2] != 3:
        chans = 1 if nrm.ndim == 2 else nrm.shape[2]
        raise DataError(f"{np_} is not an RGB PNG: it has {chans} channel(s) (shape {nrm.shape}; a grey, "
                        f"palette or RGBA image); expected {_what('normals_distill')}.", np_)
    vio.check_hw(nrm, np_, hw, _what("normals_distill"), channels=3)
    if nrm.dtype != np.uint8:
        raise DataError(f"{np_} has {nrm.dtype} values; expected 8-bit RGB.", np_)
    normals = 2.0 * nrm.astype(np.float32) / 255.0 - 1.0
    normals[~np.isin(lab, NORMALS_VALID_CLASSES)] = 0.0
    vio.check_unit_normals(normals, np_, _what("normals_distill") + " (decoded on the classes with "
                           "distilled normals)", band=DISTILLED_NORM_BAND)
    sp_ = p["sal_distill"]
    sal = vio.read_png(sp_, _what("sal_distill"))
    if sal.ndim != 2:
        raise DataError(f"{sp_} has shape {sal.shape}, expected {tuple(hw)}: a one-channel (grey) PNG "
                        f"of the image's size, not {sal.shape[2]} channels.", sp_)
    vio.check_hw(sal, sp_, hw, _what("sal_distill"))
    if sal.dtype != np.uint8:
        raise DataError(f"{p['sal_distill']} has {sal.dtype} values; expected an 8-bit grey PNG.",
                        p["sal_distill"])
    return {"image": img, "semseg": seg, "human_parts": parts, "has_person": has_person,
            "edge": edges_from_labels(lab), "normals": normals,
            "saliency": sal.astype(np.float32) / 255.0 > 0.5}


def _build(ids: list[str], paths: dict[str, list[Path]], hw: tuple[int, int], num_workers: int,
           progress: bool, desc: str) -> dict:
    n, (h, w) = len(ids), hw
    images = torch.empty((n, 3, h, w), dtype=torch.uint8)
    maps = {k: torch.empty((n, h, w), dtype=torch.int8 if k in ("semseg", "human_parts") else torch.uint8)
            for k in ("semseg", "human_parts", "edge", "saliency")}
    normals = torch.empty((n, 3, h, w), dtype=torch.float16)
    has_person = torch.empty(n, dtype=torch.uint8)
    source_hw = torch.empty((n, 2), dtype=torch.int32)

    def work(lo: int, hi: int) -> int:
        for i in range(lo, hi):
            s = _read_sample({d: paths[d][i] for d in PASCAL_FILES})
            images[i] = vio.resize_image(s["image"], hw)
            seg = s["semseg"].astype(np.int16)
            seg[seg == SEMSEG_IGNORE] = -1
            maps["semseg"][i] = vio.resize_nearest(seg, hw, torch.int8)
            parts = vio.resize_nearest(s["human_parts"], hw, torch.int8)
            maps["human_parts"][i] = parts if parts.any() else torch.full_like(parts, -1)
            maps["edge"][i] = vio.resize_nearest(s["edge"].astype(np.uint8), hw, torch.uint8)
            maps["saliency"][i] = vio.resize_nearest(s["saliency"].astype(np.uint8), hw, torch.uint8)
            normals[i] = vio.resize_normals(s["normals"], hw).to(torch.float16)
            has_person[i] = int(s["has_person"])
            source_hw[i] = torch.tensor(s["image"].shape[:2], dtype=torch.int32)
        return hi - lo

    _cache.fill_in_chunks(n, work, chunk=32, num_workers=num_workers, desc=desc, unit="sample",
                          progress=progress)
    return {"images": images, **maps, "normals": normals, "has_person": has_person,
            "source_hw": source_hw}


def load_pascal_mt(root: str | Path, split: str, hw: tuple[int, int] = PASCAL_HW,
                   cache_dir: str | Path | None = None, expect: str = "full", *,
                   num_workers: int | None = None, progress: bool = True,
                   verify: bool = True) -> vio.MultiTaskTensors:
    """One split (``"train"`` / ``"val"``) of PASCAL_MT as cached tensors at ``hw``.

    ``images`` N x 3 x H x W uint8; ``targets``: ``semseg`` and ``human_parts`` N x H x W int8
    (-1 ignore), ``edge`` and ``saliency`` N x H x W uint8 (0 / 1), ``normals`` N x 3 x H x W
    float16 (unit, all-zero invalid). ``info`` holds ``has_person`` (N uint8: the image has human
    parts, rule 1 of :mod:`mtlrepro.data.pascal_parts`) and ``source_hw`` (N x 2, each image's
    own height and width). ``expect="full"`` insists on 4,998 / 5,105 ids.
    """
    if split not in vio.SPLITS:
        raise ValueError(f"split must be one of {', '.join(vio.SPLITS)} (PASCAL_MT's val is its "
                         f"test set), got {split!r}")
    base = vio.find_root(root, "ImageSets/Context", "PASCAL_MT", "PASCAL_MT", EXPECTED_LAYOUT)
    ids_file = base / "ImageSets" / "Context" / f"{split}.txt"
    ids = vio.read_ids(ids_file, "PASCAL_MT", EXPECTED_LAYOUT)
    vio.check_count(len(ids), split, PASCAL_SPLIT_SIZES, ids_file, "PASCAL_MT", expect, EXPECTED_LAYOUT)
    paths = _paths(base, ids)
    for d in PASCAL_FILES:
        vio.require_files(paths[d], _what(d), EXPECTED_LAYOUT)
    hw = (int(hw[0]), int(hw[1]))
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _cache.default_cache_dir(base, "pascal_mt")
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    fp = vio.fingerprint(base, paths, ids, ids_file)
    params = {"dataset": "pascal_mt", "version": CACHE_VERSION, "hw": list(hw), "split": split,
              "normals_valid_classes": len(NORMALS_VALID_CLASSES), "images": "uint8 CHW",
              "semseg": "int8 (-1 ignore)", "human_parts": "int8 (-1 ignore, all -1 without parts)",
              "edge": "uint8 thin(|laplacian(LabelMap)| > 0)", "saliency": "uint8 (x/255 > 0.5)",
              "normals": "float16 unit (0 invalid)"}
    result = _cache.load_or_build(
        cache_dir, f"pascal_mt_{split}_{hw[0]}x{hw[1]}", fingerprint=fp, params=params, verify=verify,
        build=lambda: _build(ids, paths, hw, workers, progress, f"PASCAL_MT {split}: decoding"),
        recheck=lambda: vio.fingerprint(base, paths, ids, ids_file), source=base)
    p = result.payload
    return vio.MultiTaskTensors(
        images=p["images"], ids=ids, split=split, dataset="pascal_mt", root=base, hw=hw,
        targets={k: p[k] for k in ("semseg", "human_parts", "saliency", "normals", "edge")},
        info={"has_person": p["has_person"], "source_hw": p["source_hw"]}, cache_path=result.data_path,
        cache_sha256=result.sha256, source_sha256=result.source_sha256)
