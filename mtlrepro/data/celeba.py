"""CelebA: read and validate the official files, define the task settings, cache tensors.

Why a cache of decoded tensors: the papers train on 64x64 (or 64x78) images, and
decoding the 202,599 JPEGs every epoch costs far more than the tiny ResNet itself.
We decode once (thread pool, progress bar), store uint8 images + 0/1 labels + split
ids in one checksummed file (see :mod:`mtlrepro.data.cache`) and slice per split.
Normalisation is left to the trainer, which does it on the GPU batch.

Reading follows the public code the papers build on (Maximum Roaming's
``celeba/dataset.py``, torchvision's ``CelebA``): attribute values ``1`` -> 1 and
``-1`` -> 0, images in attribute-file order, split taken from
``list_eval_partition.txt`` (0 train, 1 val, 2 test).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mtlrepro.data import cache as _cache
from mtlrepro.data.errors import DataError

# --------------------------------------------------------------------------- constants

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")  # ids 0, 1, 2 in list_eval_partition.txt
CELEBA_SPLIT_SIZES: dict[str, int] = {"train": 162_770, "val": 19_867, "test": 19_962}
CELEBA_NUM_IMAGES = 202_599
#: (width, height) of every image in img_align_celeba/.
CELEBA_IMAGE_SIZE: tuple[int, int] = (178, 218)
RESIZE_MODES: tuple[str, ...] = ("square", "short_side")
EXPECT_MODES: tuple[str, ...] = ("full", "any")

# Per-channel statistics for the trainer's normalisation (images are cached as 0..255 uint8).
# These are the ImageNet statistics, the usual choice for ResNets on CelebA. Caveat, checked
# against the public code: Maximum Roaming's celeba/dataset.py does NOT normalise at all -- its
# default transform is Resize(image_size) + ToTensor(), i.e. inputs in [0, 1]. A recipe that
# wants to match it exactly should skip normalisation (mean 0, std 1 after /255).
CELEBA_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
CELEBA_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------- task settings


@dataclass(frozen=True)
class TaskDef:
    """One task = one sigmoid head over these attribute columns (file order indices)."""

    name: str
    attr_indices: tuple[int, ...]


#: Maximum Roaming / ETR-NLP's 8 groups (train_MR.py ``task_groups``). The order of indices
#: inside a group is kept as published: it fixes the column order of the group's targets.
CELEBA_GROUPS_8: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("global", (2, 10, 13, 14, 18, 20, 25, 26, 39)),
    ("eyes", (3, 15, 23, 1, 12)),
    ("hair", (4, 5, 8, 9, 11, 17, 28, 32, 33)),
    ("mouth", (6, 21, 31, 36)),
    ("nose", (7, 27)),
    ("beard", (0, 16, 22, 24, 30)),
    ("cheek", (19, 29)),
    ("wearings", (34, 35, 37, 38)),
)

#: CoNAL's 9-task CelebA, the subset chosen by Fifty et al. 2021 (TAG); one binary task each.
CONAL_9_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair", "Goatee", "Mustache",
    "No_Beard", "Rosy_Cheeks", "Wearing_Hat",
)

#: GatedMTL's gender / age / clothes tasks. ASSUMPTION: the paper names the three tasks but
#: does not say which attributes make them up. We take gender = Male, age = Young and
#: clothes = the accessories (hat, earrings, necklace, necktie, eyeglasses). Change this
#: constant (and record it in the recipe) if a better source turns up.
GATEDMTL_3_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gender": ("Male",),
    "age": ("Young",),
    "clothes": ("Wearing_Hat", "Wearing_Earrings", "Wearing_Necklace", "Wearing_Necktie",
                "Eyeglasses"),
}


def _idx(name: str) -> int:
    return CELEBA_ATTRIBUTES.index(name)


def celeba_tasks(setting: str) -> list[TaskDef]:
    """Task definitions for ``setting`` in {"attr40", "group8", "conal9", "gated3"}."""
    builders = {
        "attr40": lambda: [TaskDef(n, (i,)) for i, n in enumerate(CELEBA_ATTRIBUTES)],
        "group8": lambda: [TaskDef(n, tuple(ix)) for n, ix in CELEBA_GROUPS_8],
        "conal9": lambda: [TaskDef(n, (_idx(n),)) for n in CONAL_9_ATTRIBUTES],
        "gated3": lambda: [TaskDef(n, tuple(_idx(a) for a in attrs))
                           for n, attrs in GATEDMTL_3_ATTRIBUTES.items()],
    }
    if setting not in builders:
        from mtlrepro.registry import UnknownKeyError
        raise UnknownKeyError("CelebA task setting", setting, list(builders))
    return builders[setting]()


# --------------------------------------------------------------------------- locating files

# (layout name, image folder, attribute file, partition file) relative to the searched folder
_LAYOUTS: tuple[tuple[str, str, str, str], ...] = (
    ("torchvision", "celeba/img_align_celeba", "celeba/list_attr_celeba.txt",
     "celeba/list_eval_partition.txt"),
    ("torchvision", "img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"),
    ("official", "Img/img_align_celeba", "Anno/list_attr_celeba.txt",
     "Eval/list_eval_partition.txt"),
)

EXPECTED_LAYOUT = """\
Expected one of these layouts (<root> is the folder you pass):

  torchvision layout (what torchvision.datasets.CelebA downloads):
    <root>/celeba/img_align_celeba/000001.jpg ... 202599.jpg   (178x218 JPEGs)
    <root>/celeba/list_attr_celeba.txt
    <root>/celeba/list_eval_partition.txt
    (<root> may also be that celeba/ folder itself; torchvision's CelebA class also opens
    identity_CelebA.txt, list_bbox_celeba.txt and list_landmarks_align_celeba.txt there,
    which mtlrepro does not read)

  official layout (the CelebA release: Img/, Anno/, Eval/):
    <root>/Img/img_align_celeba/000001.jpg ... 202599.jpg
    <root>/Anno/list_attr_celeba.txt
    <root>/Eval/list_eval_partition.txt

Download: https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html ("Align&Cropped Images",
img_align_celeba.zip, plus list_attr_celeba.txt and list_eval_partition.txt); unzip
img_align_celeba.zip in place."""


@dataclass(frozen=True)
class CelebAFiles:
    """Where the three CelebA sources are, and which layout they were found in."""

    root: Path
    layout: str  # "torchvision" or "official"
    image_dir: Path
    attr_file: Path
    partition_file: Path


def find_celeba(root: str | Path) -> CelebAFiles:
    """Locate CelebA under ``root`` in either accepted layout; DataError with the layout if not."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"CelebA root {root} {what}.\n{EXPECTED_LAYOUT}", root)
    best: tuple[int, str, list[Path], list[Path]] | None = None
    for layout, img, attr, part in _LAYOUTS:
        paths = [root / img, root / attr, root / part]
        ok = [paths[0].is_dir(), paths[1].is_file(), paths[2].is_file()]
        if all(ok):
            return CelebAFiles(root, layout, *paths)
        score = sum(ok)
        if best is None or score > best[0]:
            best = (score, layout, [p for p, o in zip(paths, ok) if o],
                    [p for p, o in zip(paths, ok) if not o])
    assert best is not None
    msg = f"CelebA not found under {root} (looked in {root} and {root / 'celeba'})."
    if best[0] > 0:
        msg += (f"\nClosest match: the {best[1]} layout; found " + ", ".join(map(str, best[2]))
                + "; missing " + ", ".join(map(str, best[3])) + ".")
    for d in (root, root / "celeba", root / "Img"):
        if (d / "img_align_celeba.zip").is_file() and not (d / "img_align_celeba").is_dir():
            msg += f"\nFound {d / 'img_align_celeba.zip'}: unzip it there (it holds img_align_celeba/)."
        nested = d / "img_align_celeba" / "img_align_celeba"
        if nested.is_dir():
            msg += (f"\nFound a nested {nested}: move its JPEGs up one level into "
                    f"{d / 'img_align_celeba'}.")
    raise DataError(f"{msg}\n{EXPECTED_LAYOUT}", root)


# --------------------------------------------------------------------------- reading files

def _read_lines(path: Path, what: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as e:
        raise DataError(f"{what} {path} does not exist.\n{EXPECTED_LAYOUT}", path) from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {what} {path} as text ({e}); expected the official "
                        f"CelebA {Path(path).name}.", path) from e


def read_attributes(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt`` -> (attribute names, file names, N x 40 int8 in {0, 1}).

    Format: line 1 the image count, line 2 the 40 names, then ``000001.jpg -1  1 ...``
    (whitespace-separated, -1/1). Any deviation is a DataError naming file and line.
    """
    path = Path(path)
    lines = _read_lines(path, "attribute file")
    where = f"attribute file {path}"
    if not lines or not lines[0].strip():
        raise DataError(f"{where}, line 1: expected the number of images, found an empty line.", path)
    try:
        declared = int(lines[0].strip())
    except ValueError:
        raise DataError(f"{where}, line 1: expected the number of images (e.g. 202599), found "
                        f"{lines[0].strip()[:60]!r}.", path) from None
    names = lines[1].split() if len(lines) > 1 else []
    if len(names) != 40:
        raise DataError(f"{where}, line 2: expected the 40 attribute names separated by spaces, "
                        f"found {len(names)} names.", path)
    if tuple(names) != CELEBA_ATTRIBUTES:
        k = next(i for i, (a, b) in enumerate(zip(names, CELEBA_ATTRIBUTES)) if a != b)
        raise DataError(f"{where}, line 2: attribute {k + 1} is {names[k]!r}, expected "
                        f"{CELEBA_ATTRIBUTES[k]!r} (the names must be the official 40 in the "
                        "official order, since task groups index them by position).", path)
    files: list[str] = []
    rows: list[list[str]] = []
    line_nos: list[int] = []
    valid = {"1", "-1"}
    for no, line in enumerate(lines[2:], start=3):
        toks = line.split()
        if not toks:
            continue  # blank (e.g. trailing) lines carry nothing
        if len(toks) != 41:
            raise DataError(f"{where}, line {no}: expected an image name and 40 values, found "
                            f"{len(toks) - 1} values: {line.strip()[:80]!r}.", path)
        vals = toks[1:]
        if not valid.issuperset(vals):
            k = next(i for i, v in enumerate(vals) if v not in valid)
            raise DataError(f"{where}, line {no}: value {vals[k]!r} for {CELEBA_ATTRIBUTES[k]} "
                            f"(column {k + 2}) of {toks[0]}; values must be -1 or 1.", path)
        files.append(toks[0])
        rows.append(vals)
        line_nos.append(no)
    if declared != len(files):
        raise DataError(f"{where}, line 1: declares {declared} images but the file lists "
                        f"{len(files)} image lines.", path)
    if len(set(files)) != len(files):
        seen: dict[str, int] = {}
        for f, no in zip(files, line_nos):
            if f in seen:
                raise DataError(f"{where}, line {no}: {f} is listed twice (first on line "
                                f"{seen[f]}).", path)
            seen[f] = no
    # every token is now "1" or "-1", so numpy's text parser is exact (and ~4x faster than
    # building an array of strings)
    values = np.fromstring(" ".join(" ".join(r) for r in rows), dtype=np.int8, sep=" ") \
        if rows else np.zeros(0, np.int8)
    labels = (values.reshape(len(rows), 40) == 1).astype(np.int8)
    return names, files, labels


def read_partition(path: str | Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt`` (``000001.jpg 0``) -> {file name: 0 train/1 val/2 test}."""
    path = Path(path)
    where = f"partition file {path}"
    out: dict[str, int] = {}
    for no, line in enumerate(_read_lines(path, "partition file"), start=1):
        toks = line.split()
        if not toks:
            continue
        if len(toks) != 2 or toks[1] not in ("0", "1", "2"):
            raise DataError(f"{where}, line {no}: expected '<image name> <0|1|2>' (0 train, 1 val, "
                            f"2 test), found {line.strip()[:80]!r}.", path)
        if toks[0] in out:
            raise DataError(f"{where}, line {no}: {toks[0]} is listed twice.", path)
        out[toks[0]] = int(toks[1])
    return out


def _check_counts(counts: dict[str, int], files: CelebAFiles, expect: str,
                  unpartitioned: list[str] | None = None) -> None:
    """With ``expect="full"`` the split sizes must be the official ones (a partition file that
    omits images would otherwise train on fewer images without a word)."""
    if expect != "full" or counts == CELEBA_SPLIT_SIZES:
        return
    found = " / ".join(f"{s} {counts[s]}" for s in SPLITS)
    want = " / ".join(f"{s} {CELEBA_SPLIT_SIZES[s]}" for s in SPLITS)
    omitted = ""
    if unpartitioned:
        omitted = (f" {len(unpartitioned)} image(s) of the attribute file are in no split of the "
                   f"partition file, e.g. {', '.join(unpartitioned[:3])}.")
    raise DataError(
        f"partition file {files.partition_file} (with {files.attr_file}) gives split sizes "
        f"{found} (total {sum(counts.values())}), expected {want} (total {CELEBA_NUM_IMAGES}) "
        f"for the full CelebA release.{omitted} The files are incomplete or from another release; "
        f"{_cache.SUBSET_HINT}.", files.partition_file)


def _check_consistency(files: CelebAFiles, attr_files: list[str], part: dict[str, int]) -> None:
    """Every partitioned image must have attributes and exist on disk (one listdir, set ops)."""
    known = set(attr_files)
    no_attr = [f for f in part if f not in known]
    if no_attr:
        raise DataError(
            f"{len(no_attr)} image(s) of partition file {files.partition_file} have no line in "
            f"attribute file {files.attr_file}, e.g. {', '.join(no_attr[:5])}. The two files "
            "must come from the same CelebA release.", files.attr_file)
    try:
        present = set(os.listdir(files.image_dir))
    except OSError as e:
        raise DataError(f"cannot list image folder {files.image_dir} ({e}).", files.image_dir) from e
    missing = [f for f in part if f not in present]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {files.partition_file} are missing from "
            f"{files.image_dir}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}. "
            "Re-extract img_align_celeba.zip there.", files.image_dir)


# --------------------------------------------------------------------------- decoding


def output_hw(size: int, resize_mode: str) -> tuple[int, int]:
    """(H, W) of a cached image: square -> size x size; short_side -> 178 wide becomes ``size``."""
    if resize_mode == "square":
        return size, size
    w, h = CELEBA_IMAGE_SIZE  # torchvision: long = int(size * long / short)
    return (int(size * h / w), size) if w <= h else (size, int(size * w / h))


def _decode_image(path: str, size: int, resize_mode: str) -> np.ndarray:
    """Decode one JPEG -> H x W x 3 uint8, resized like torchvision on a PIL image.

    No ``Image.draft``: at size >= 45 its (2*size)^2 request cannot shrink a 178x218 JPEG
    (a 1/2 DCT scale gives 89x109), so it saves nothing; below that it changes pixels
    (DCT-domain downscaling), so we never use it.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.size != CELEBA_IMAGE_SIZE:
                raise DataError(f"image {path} is {im.size[0]}x{im.size[1]}, expected "
                                f"{CELEBA_IMAGE_SIZE[0]}x{CELEBA_IMAGE_SIZE[1]} (the aligned "
                                "crops of img_align_celeba, not the in-the-wild images).", path)
            im = im.convert("RGB")
            h, w = output_hw(size, resize_mode)
            # Exactly what torchvision.transforms.functional.resize(im, [size, size] or size,
            # antialias=True) does on a PIL image -- PIL's bilinear resample, which always
            # antialiases -- as transforms.Resize in the papers' pipelines; calling PIL directly
            # saves importing torchvision (tested equal in tests/data/test_celeba.py).
            out = im.resize((w, h), Image.Resampling.BILINEAR)
            return np.array(out, dtype=np.uint8)  # a writable copy for torch.from_numpy
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"cannot decode image {path} ({e}); the file is corrupt or not a JPEG. "
                        "Re-extract img_align_celeba.zip.", path) from e


def _decode_all(paths: list[str], size: int, resize_mode: str, num_workers: int,
                progress: bool) -> torch.Tensor:
    h, w = output_hw(size, resize_mode)
    images = torch.empty((len(paths), 3, h, w), dtype=torch.uint8)

    def work(lo: int, hi: int) -> int:
        for i in range(lo, hi):
            arr = _decode_image(paths[i], size, resize_mode)
            if arr.shape != (h, w, 3):
                raise DataError(f"image {paths[i]} resized to {arr.shape[1]}x{arr.shape[0]}, "
                                f"expected {w}x{h}.", paths[i])
            images[i] = torch.from_numpy(arr).permute(2, 0, 1)
        return hi - lo

    # threads: PIL decode/resize release the GIL, and rows are written in place
    _cache.fill_in_chunks(len(paths), work, chunk=256, num_workers=num_workers,
                          desc=f"CelebA: decoding to {w}x{h}", unit="img", progress=progress)
    return images


# --------------------------------------------------------------------------- loading


@dataclass
class CelebATensors:
    """One split, ready for a GPU trainer: uint8 images and 0/1 labels in file order.

    ``images`` and ``labels`` are slices of the memory-mapped cache file (copy-on-write:
    writing to them never changes the file); ``.to("cuda")`` or ``.clone()`` reads them in.
    """

    images: torch.Tensor            # N x 3 x H x W uint8 (0..255, not normalised)
    labels: torch.Tensor            # N x 40 uint8 in {0, 1}, columns = attr_names
    attr_names: list[str]
    split: str
    filenames: list[str]
    cache_path: Path | None = field(default=None, compare=False)
    cache_sha256: str = field(default="", compare=False)    # sha256 of the cache file read
    source_sha256: str = field(default="", compare=False)   # sha256 of the source fingerprint

    def __len__(self) -> int:
        return self.images.shape[0]

    def targets(self, tasks: list[TaskDef]) -> list[torch.Tensor]:
        """Per-task float32 targets (N x len(task.attr_indices)), columns in task order."""
        return [self.labels[:, list(t.attr_indices)].float() for t in tasks]




def _fingerprint(files: CelebAFiles) -> dict:
    """What the cache is built from: the content hash of both text files, and every JPEG's name,
    size and mtime plus the content of 16 of them (:func:`mtlrepro.data.cache.fingerprint_files`).
    One ``scandir`` of the image folder (about a second for 202,599 files). Empty JPEGs (an
    interrupted extraction, a full disk) are refused here, before any cache is touched."""
    try:
        with os.scandir(files.image_dir) as it:
            stats = sorted((e.name, st.st_size, st.st_mtime_ns) for e in it
                           if e.name.lower().endswith(".jpg") for st in [e.stat()])
    except OSError as e:
        raise DataError(f"cannot list image folder {files.image_dir} ({e}).", files.image_dir) from e
    empty = _cache.empty_files(stats)
    if empty:
        raise DataError(
            f"{len(empty)} of the {len(stats)} JPEGs in {files.image_dir} are empty (0 bytes), e.g. "
            f"{', '.join(empty[:5])}: the extraction was interrupted or the disk filled up. Expected "
            f"{CELEBA_IMAGE_SIZE[0]}x{CELEBA_IMAGE_SIZE[1]} JPEGs; re-extract img_align_celeba.zip "
            "there.", files.image_dir / empty[0])
    try:
        return {"attr_file": _cache.text_fingerprint(files.attr_file),
                "partition_file": _cache.text_fingerprint(files.partition_file),
                "images": _cache.fingerprint_files(stats, files.image_dir)}
    except OSError as e:
        raise DataError(f"cannot read the CelebA files under {files.root} ({e}).", files.root) from e


def _build(files: CelebAFiles, size: int, resize_mode: str, expect: str, num_workers: int,
           progress: bool) -> dict:
    names, attr_files, labels = read_attributes(files.attr_file)
    part = read_partition(files.partition_file)
    _check_consistency(files, attr_files, part)
    counts = {s: 0 for s in SPLITS}
    for sid in part.values():
        counts[SPLITS[sid]] += 1
    unpartitioned = [f for f in attr_files if f not in part]
    _check_counts(counts, files, expect, unpartitioned)  # fail before minutes of decoding
    # rows grouped by split (train, val, test), attribute-file order inside each split, so a
    # split is a contiguous slice of the (memory-mapped) cache.
    order = [i for sid in range(3) for i, f in enumerate(attr_files) if part.get(f) == sid]
    filenames = [attr_files[i] for i in order]
    img_dir = str(files.image_dir)  # os.path.join: 200k pathlib joins cost seconds
    images = _decode_all([os.path.join(img_dir, f) for f in filenames], size, resize_mode,
                         num_workers, progress)
    split_ids = torch.tensor([part[f] for f in filenames], dtype=torch.int8)
    return {
        "images": images,
        "labels": torch.from_numpy(labels[order].astype(np.uint8)),
        "split": split_ids,
        "split_counts": [counts[s] for s in SPLITS],
        "filenames": filenames,
        "attr_names": names,
    }


def load_celeba(root: str | Path, split: str, size: int = 64, resize_mode: str = "square",
                cache_dir: str | Path | None = None, expect: str = "full", *,
                num_workers: int | None = None, progress: bool = True,
                verify: bool = True) -> CelebATensors:
    """Load one split of CelebA as tensors, decoding all splits once into the cache.

    ``expect="full"`` insists on the official 162,770 / 19,867 / 19,962 split sizes;
    ``"any"`` (``--allow-subset``, tiny or generated data) only checks the files are consistent.
    ``verify`` re-hashes the cache file on load (about a second per GB).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
    if expect not in EXPECT_MODES:
        raise ValueError(f"expect must be one of {', '.join(EXPECT_MODES)}, got {expect!r}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    files = find_celeba(root)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _cache.default_cache_dir(root, "celeba")
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    params = {"dataset": "celeba", "size": size, "resize_mode": resize_mode,
              "resize": "PIL bilinear (torchvision resize on PIL image)", "draft": False,
              "row_order": "split, then attribute-file order"}
    result = _cache.load_or_build(
        cache_dir, f"celeba_{size}_{resize_mode}", fingerprint=_fingerprint(files), params=params,
        build=lambda: _build(files, size, resize_mode, expect, workers, progress), verify=verify,
        recheck=lambda: _fingerprint(files), source=files.root)
    p = result.payload
    counts = dict(zip(SPLITS, (int(c) for c in p["split_counts"])))
    _check_counts(counts, files, expect)  # the cache may have been built with expect="any"
    sid = SPLITS.index(split)
    lo = sum(counts[s] for s in SPLITS[:sid])
    hi = lo + counts[split]
    return CelebATensors(images=p["images"][lo:hi], labels=p["labels"][lo:hi],
                         attr_names=list(p["attr_names"]), split=split,
                         filenames=list(p["filenames"][lo:hi]), cache_path=result.data_path,
                         cache_sha256=result.sha256, source_sha256=result.source_sha256)
