"""Reading Vandenhende et al.'s multi-task dense-prediction datasets: what NYUD_MT and PASCAL_MT share.

Both archives of ``SimonVandenhende/Multi-Task-Learning-PyTorch`` (``data/nyud.py``,
``data/pascal_context.py``; after ASTMT, Maninis et al. 2019) list their samples in a split file
(one id per line, read with ``f.read().splitlines()``) and keep one file per sample and task in
a folder per task. This module holds the pieces both readers use: locating the root, reading a
split file, file fingerprints for the cache, decoding images / PNGs / ``.npy`` / ``.mat`` with
errors that name the file, and the resizing of :class:`FixedResize` (the repo's only geometric
transform at test time):

* images: bicubic (OpenCV ``INTER_CUBIC``; torch's ``bicubic``, ``align_corners=False``, has
  the same a = -0.75 kernel and agrees with OpenCV to 7e-5 of a grey level), then, like the
  repo's ``ToTensor`` (``astype(np.uint8)``), truncated to integers -- after clamping to
  [0, 255], where the repo's cast would wrap bicubic over/undershoots around;
* labels, depth, edges, saliency: nearest (OpenCV ``INTER_NEAREST``: source index
  ``floor(i * in / out)``, which is torch's ``nearest``);
* surface normals: bicubic, then every vector divided by its norm + float32 eps, as
  ``FixedResize`` does (all-zero vectors, the invalid pixels, stay zero).

A size equal to the source size is the identity (``cv2.resize`` copies), except for the
normals' renormalisation, which the repo applies at every size.

Plausibility checks (run per file while a cache is built, shared with :mod:`mtlrepro.data.mtan_npy`)
catch realistic mis-encodings with a message saying what was seen: normals that are not unit length
(median length outside 0.9..1.1 on valid pixels), normals with no negative component anywhere in a
split (stored as (n + 1) / 2), depth whose valid median exceeds the dataset's metric range
(millimetres instead of metres).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtlrepro.data.cache import SUBSET_HINT
from mtlrepro.data.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val")
EXPECT_MODES: tuple[str, ...] = ("full", "any")
#: Tolerance on normal components (|n_i| <= 1 + tol): resampled normals may overshoot a hair.
NORMALS_TOL = 0.05
#: Unit normals: the median length of a file's valid (non-zero) vectors must lie in this band
#: (resampling shortens vectors at boundaries only, so the median of real normals is ~1).
UNIT_NORM_BAND: tuple[float, float] = (0.9, 1.1)
#: Depth in metres (NYUv2 / NYUD: Kinect, about 0.5 .. 10 m): a file whose median valid depth
#: exceeds this is in other units (millimetres give medians in the thousands).
METRIC_DEPTH_MEDIAN_MAX = 20.0
MILLIMETRE_HINT = " That is millimetres, not metres: divide the depth by 1000."


@dataclass
class MultiTaskTensors:
    """One split of a Vandenhende-format dataset, decoded once at the training resolution.

    ``images`` is N x 3 x H x W uint8 (RGB); ``targets`` maps a target name to its tensor
    (documented by each reader); ``ids`` are the split file's ids in file order.
    """

    images: torch.Tensor
    targets: dict[str, torch.Tensor]
    ids: list[str]
    split: str
    dataset: str
    root: Path
    hw: tuple[int, int]
    info: dict[str, Any] = field(default_factory=dict)
    cache_path: Path | None = field(default=None, compare=False)
    cache_sha256: str = field(default="", compare=False)    # sha256 of the cache file read
    source_sha256: str = field(default="", compare=False)   # sha256 of the source fingerprint

    def __len__(self) -> int:
        return self.images.shape[0]


# --------------------------------------------------------------------------- locating, listing


def find_root(root: str | Path, marker: str, folder: str, title: str, layout: str) -> Path:
    """The dataset folder: ``root`` itself if it holds ``marker``, else ``root/<folder>``
    (the archive extracts into ``NYUD_MT/`` / ``PASCAL_MT/``)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"{title} root {root} {what}.\n{layout}", root)
    for base in (root, root / folder):
        if (base / marker).is_dir():
            return base
    raise DataError(f"{title} not found under {root}: neither {root / marker} nor "
                    f"{root / folder / marker} is a folder.\n{layout}", root)


def read_ids(path: Path, title: str, layout: str) -> list[str]:
    """The ids of a split file, one per line (the repo's ``f.read().splitlines()``)."""
    if not path.is_file():
        raise DataError(f"{title}: split file {path} is missing.\n{layout}", path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({e}); expected one sample id per line.", path) from e
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if not line or line != line.strip() or any(c.isspace() for c in line) or "/" in line:
            raise DataError(f"{path}, line {n}: {line!r} is not a sample id; expected one id per "
                            "line (a file name without extension), no blanks or spaces.", path)
        if line in seen:
            raise DataError(f"{path}, line {n}: id {line!r} repeats line {seen[line]}.", path)
        seen[line] = n
    if not lines:
        raise DataError(f"{path} lists no samples; expected one id per line.\n{layout}", path)
    return lines


def check_count(n: int, split: str, sizes: dict[str, int], path: Path, title: str, expect: str,
                layout: str) -> None:
    if expect not in EXPECT_MODES:
        raise ValueError(f"expect must be one of {', '.join(EXPECT_MODES)}, got {expect!r}")
    if expect == "full" and n != sizes[split]:
        raise DataError(f"{path} lists {n} samples, expected {sizes[split]} for the full {title} "
                        f"{split} split ({' / '.join(f'{s} {c}' for s, c in sizes.items())}). The "
                        f"split file is incomplete or from another version; {SUBSET_HINT}.\n{layout}",
                        path)


def require_files(paths: list[Path], what: str, layout: str) -> None:
    """DataError naming the first missing file of ``paths`` (``what`` says what it should hold)."""
    for p in paths:
        if not p.is_file():
            missing = sum(1 for q in paths if not q.is_file())
            raise DataError(f"{p} is missing ({what}); {missing} of {len(paths)} such files are "
                            f"missing.\n{layout}", p)


def fingerprint(base: Path, paths: dict[str, list[Path]], ids: list[str], split_file: Path) -> dict:
    """What a cache is built from: the split file's content hash, and per folder the names,
    sizes and mtimes of its files plus the content of a few of them
    (:func:`mtlrepro.data.cache.fingerprint_files`). An empty (0-byte) file is refused here."""
    from mtlrepro.data import cache as _cache
    out: dict = {"n": len(ids), "ids_sha1": hashlib.sha1("\n".join(ids).encode()).hexdigest()}
    try:
        out["split_file"] = _cache.text_fingerprint(split_file)
        for folder, ps in paths.items():
            stats = _cache.stat_files(ps, base)
            empty = _cache.empty_files(stats)
            if empty:
                raise DataError(f"{base / empty[0]} is empty (0 bytes; {len(empty)} of {len(ps)} files "
                                f"in {base / folder} are): the copy was interrupted or the disk filled "
                                "up. Extract the archive again.", base / empty[0])
            out[folder] = _cache.fingerprint_files(stats, base, sample=4)
    except OSError as e:
        raise DataError(f"cannot read the dataset files under {base} ({e}).", base) from e
    return out


# --------------------------------------------------------------------------- decoding


def read_rgb(path: Path, what: str = "an RGB JPEG") -> np.ndarray:
    """H x W x 3 uint8 (the repo: ``Image.open(p).convert('RGB')``)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode {path} as an image ({e}); the file is corrupt (expected {what}): "
                        "extract the archive again.", path) from e


def read_png(path: Path, what: str) -> np.ndarray:
    """The PNG's values as the repo reads them (``np.array(Image.open(p))``: palette indices for
    a palette image)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.array(im)
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode {path} as a PNG ({e}); expected {what}.", path) from e


def read_npy(path: Path, what: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot load {path} as a .npy file ({e}); expected {what}.", path) from e
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path} has dtype {a.dtype}, expected numbers ({what}).", path)
    return a


def read_mat(path: Path, what: str) -> dict:
    """``scipy.io.loadmat`` with the repo's defaults (struct arrays as records, no squeezing)."""
    try:
        import scipy.io as sio
    except ImportError as e:  # pragma: no cover - scipy is installed wherever the tests run
        raise ImportError("reading PASCAL_MT's .mat files needs scipy: pip install scipy") from e
    try:
        return sio.loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises many types for corrupt files
        raise DataError(f"cannot read {path} as a MATLAB .mat file ({type(e).__name__}: {e}); "
                        f"expected {what}.", path) from e


def check_hw(a: np.ndarray, path: Path, hw: tuple[int, int], what: str, channels: int | None = None) -> None:
    """``a`` must be H x W (``channels`` None) or H x W x channels, matching ``hw``."""
    want = hw if channels is None else (*hw, channels)
    if a.shape != want:
        raise DataError(f"{path} has shape {a.shape}, expected {want} ({what}).", path)


def check_finite(a: np.ndarray, path: Path, what: str) -> None:
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError(f"{path}: {int((~np.isfinite(a)).sum())} values are NaN or inf; "
                        f"expected {what}.", path)


# --------------------------------------------------------------------------- plausibility
# Value checks that catch realistic mis-encodings (shared with mtlrepro.data.mtan_npy). Each runs
# once per file while a cache is built (one reduction, a few ms), never when a cache is reused.


def check_unit_normals(n: np.ndarray, path: Path, what: str,
                       band: tuple[float, float] = UNIT_NORM_BAND) -> tuple[bool, bool]:
    """H x W x 3 normals must be unit vectors where they are valid (not all-zero): the median of
    ``|n_p|`` over the valid pixels ``p`` must lie in ``band``. Returns (the file has valid vectors,
    one of them has a negative component), for :func:`check_normals_signed` over the split."""
    v = np.asarray(n, dtype=np.float32).reshape(-1, 3)
    sq = np.einsum("ij,ij->i", v, v)
    valid = sq > 0
    if not valid.any():
        return False, False
    negative = bool((v[valid] < 0).any())
    med = float(np.sqrt(np.median(sq[valid])))
    lo, hi = band
    if not lo <= med <= hi:
        hint = "" if negative else (" No component is negative, as in normals stored as (n + 1) / 2 "
                                    "in [0, 1]: store n = 2 x - 1.")
        raise DataError(f"{path}: the normals' median length on valid (non-zero) pixels is {med:.3g}; "
                        f"expected unit vectors (length 1, median {lo:g}..{hi:g} accepted).{hint} "
                        f"Expected {what}.", path)
    return True, negative


def check_normals_signed(has_valid: np.ndarray, has_negative: np.ndarray, paths: list[Path],
                         folder: Path, what: str) -> None:
    """Over a split: some valid normal must have a negative component (a scene's surfaces face
    both ways along x and y). None at all means normals stored as (n + 1) / 2 in [0, 1]."""
    has_valid, has_negative = np.asarray(has_valid, bool), np.asarray(has_negative, bool)
    if has_valid.any() and not has_negative[has_valid].any():
        first = paths[int(np.flatnonzero(has_valid)[0])]
        raise DataError(f"{folder}: no normal in the {int(has_valid.sum())} file(s) with valid pixels "
                        f"has a negative component (all of x, y, z >= 0, e.g. in {first}); surface "
                        "normals of a scene point both ways, so these look stored as (n + 1) / 2 in "
                        f"[0, 1]: store n = 2 x - 1. Expected {what}.", first)


def check_depth_scale(d: np.ndarray, path: Path, what: str, max_median: float, hint: str) -> None:
    """The median of the valid (> 0) depth values must be at most ``max_median``."""
    d = np.asarray(d)
    valid = d > 0
    if not valid.any():
        return
    med = float(np.median(d[valid]))
    if med > max_median:
        raise DataError(f"{path}: the median depth on valid (non-zero) pixels is {med:.4g}, expected at "
                        f"most {max_median:g} ({what}).{hint}", path)


# --------------------------------------------------------------------------- resizing


def resize_image(img: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x h x w uint8 (bicubic, clamp, truncate; see the module doc)."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    if tuple(t.shape[1:]) == tuple(hw):
        return t.clone()
    r = F.interpolate(t[None].float(), size=hw, mode="bicubic", align_corners=False)[0]
    return r.clamp_(0.0, 255.0).floor_().to(torch.uint8)


def resize_nearest(a: np.ndarray, hw: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """H x W -> h x w (nearest, OpenCV's source index), as ``dtype``; values are kept exactly."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if tuple(t.shape) != tuple(hw):
        t = F.interpolate(t[None, None].double(), size=hw, mode="nearest")[0, 0]
    return t.to(dtype)


def resize_normals(n: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """H x W x 3 float -> 3 x h x w float32: bicubic, then n / (|n| + eps) (zero stays zero)."""
    t = torch.from_numpy(np.ascontiguousarray(n, dtype=np.float32)).permute(2, 0, 1)
    if tuple(t.shape[1:]) != tuple(hw):
        t = F.interpolate(t[None], size=hw, mode="bicubic", align_corners=False)[0]
    return t / (torch.linalg.vector_norm(t, dim=0, keepdim=True) + float(np.finfo(np.float32).eps))
