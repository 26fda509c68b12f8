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
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mtlrepro.data.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val")
EXPECT_MODES: tuple[str, ...] = ("full", "any")
#: Tolerance on normal components (|n_i| <= 1 + tol): resampled normals may overshoot a hair.
NORMALS_TOL = 0.05


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
                        f"{split} split ({' / '.join(f'{s} {c}' for s, c in sizes.items())}). For a "
                        f"subset or generated data pass expect='any'.\n{layout}", path)


def require_files(paths: list[Path], what: str, layout: str) -> None:
    """DataError naming the first missing file of ``paths`` (``what`` says what it should hold)."""
    for p in paths:
        if not p.is_file():
            missing = sum(1 for q in paths if not q.is_file())
            raise DataError(f"{p} is missing ({what}); {missing} of {len(paths)} such files are "
                            f"missing.\n{layout}", p)


def fingerprint(base: Path, paths: list[Path], ids: list[str]) -> dict:
    """Counts, bytes and a hash of (name, size, mtime) of ``paths`` plus the id list."""
    stats = []
    for p in paths:
        st = os.stat(p)
        stats.append((str(p.relative_to(base)), st.st_size, st.st_mtime_ns))
    blob = repr((ids, stats)).encode()
    return {"n": len(ids), "files": len(paths), "bytes": sum(s for _, s, _ in stats),
            "stat_sha1": hashlib.sha1(blob).hexdigest()}


# --------------------------------------------------------------------------- decoding


def read_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8 (the repo: ``Image.open(p).convert('RGB')``)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot decode {path} as an image ({e}); the file is corrupt.", path) from e


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
