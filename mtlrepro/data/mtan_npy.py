"""MTAN's preprocessed dense-prediction datasets (.npy per sample): locate, validate, cache.

MTAN (Liu et al., ``lorenmt/mtan``) distributes Cityscapes at 128x256 and NYUv2 at 288x384
as one ``.npy`` file per sample and per target::

    <root>/{train,val}/image/<i>.npy      H x W x 3 float, RGB in [0, 1]
    <root>/{train,val}/<label>/<i>.npy    H x W float, class index, -1 = ignore
    <root>/{train,val}/depth/<i>.npy      H x W x 1 float, 0 = invalid
    <root>/{train,val}/normal/<i>.npy     H x W x 3 float unit normals, all-zero = invalid (NYUv2)

with ``<i>`` = 0 .. N-1 (the loaders of MTAN, Maximum Roaming and LibMTL all read
``'{:d}.npy'.format(index)`` after counting ``*.npy`` in ``image/``). Maximum Roaming reads the
same files from ``<root>/low_res/{train,val}/...``; both layouts are accepted here. ``val`` is
the test split of these papers (there is no other held-out split).

What this module does, once per split:

* every load (cheap, a directory listing): the folders exist, every subfolder holds
  ``0.npy .. N-1.npy`` and nothing else named ``*.npy``, all subfolders hold the same N, and
  with ``expect="full"`` N is the official split size;
* when the cache is (re)built: the header of **every** file (shape, dtype; read without loading
  the array) before anything is read, then the values of **every** file as it is loaded
  (image in [0, 1], labels integer in {-1, 0..C-1}, depth >= 0 with a plausible median for the
  dataset's unit -- NYUv2 metres at most 20, Cityscapes disparity at most 2 --, normals in [-1, 1]
  of median length 0.9..1.1 on valid pixels and, over the split, with some negative component --
  not (n + 1) / 2 --, all finite; :mod:`mtlrepro.data.vandenhende_io`). Each problem is a
  :class:`DataError` naming the file and what was expected there.

The cache (:mod:`mtlrepro.data.cache`, one ``<dataset>_<split>.pt`` + manifest) holds CHW
tensors:

* images **float16** -- half the memory of float32 (the whole Cityscapes train split is
  ~1.2 GB as float32, 0.58 GB as float16). float16 has 11 significant bits: a value in
  [0, 1] is kept to within 2.4e-4 (about 3 significant digits, 1/16 of an 8-bit grey level).
  The trainer's ``prepare`` casts batches to float32; MTAN does no other normalisation.
* labels **int8** (-1 = ignore), exact;
* depth and normals **float32**, as MTAN's loaders feed them to the metrics (files stored as
  float64 are rounded to float32 once, like ``.float()`` in those loaders).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mtlrepro.data import cache as _cache
from mtlrepro.data import vandenhende_io as vio
from mtlrepro.data.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val")
EXPECT_MODES: tuple[str, ...] = ("full", "any")
LAYOUTS: tuple[str, ...] = ("plain", "low_res")

#: Tolerance on value ranges: resampled images/normals may overshoot [0, 1] / [-1, 1] by a
#: hair; 0..255 images, mean/std-normalised images or 0..1-encoded normals still fail.
VALUE_TOL = 0.05
#: Bump when the cached tensors change meaning (forces a rebuild of every cache; 2: the unit-length,
#: sign and depth-scale checks, so caches built without them are read again).
CACHE_VERSION = 2

_NPY_NAME = re.compile(r"^(0|[1-9][0-9]*)\.npy$")


@dataclass(frozen=True)
class MtanSpec:
    """What one MTAN-format dataset looks like on disk."""

    name: str                                  # "cityscapes": cache names, folder to look in
    title: str                                 # "Cityscapes": messages
    hw: tuple[int, int]                        # (H, W) of every file
    label_dir: str                             # "label_7" | "label"
    class_names: tuple[str, ...]
    has_normals: bool
    full_counts: tuple[tuple[str, int], ...]   # (("train", 2975), ("val", 500))
    depth_desc: str
    download: str
    #: other (H, W) found in the wild -> a hint (e.g. MTAN's 256x512 Cityscapes)
    hw_hints: tuple[tuple[tuple[int, int], str], ...] = ()
    #: a depth file whose median on valid pixels exceeds this is in other units (None: no check)
    depth_median_max: float | None = None
    depth_unit_hint: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def split_sizes(self) -> dict[str, int]:
        return dict(self.full_counts)

    @property
    def subdirs(self) -> tuple[str, ...]:
        return ("image", self.label_dir, "depth") + (("normal",) if self.has_normals else ())

    def shape(self, sub: str) -> tuple[int, ...]:
        h, w = self.hw
        return {"image": (h, w, 3), self.label_dir: (h, w), "depth": (h, w, 1),
                "normal": (h, w, 3)}[sub]

    def describe(self, sub: str) -> str:
        h, w = self.hw
        return {
            "image": f"{h}x{w}x3 float, RGB in [0, 1]",
            self.label_dir: f"{h}x{w} float, class 0..{self.n_classes - 1}, -1 = ignore",
            "depth": f"{h}x{w}x1 float, {self.depth_desc}, 0 = invalid",
            "normal": f"{h}x{w}x3 float, unit surface normals, all-zero = invalid",
        }[sub]


def expected_layout(spec: MtanSpec) -> str:
    """The layout text every DataError of ``spec`` ends with."""
    h, w = spec.hw
    sizes = spec.split_sizes
    lines = [f"Expected MTAN's preprocessed {spec.title} ({h}x{w}) under <root> (the folder you pass):"]
    for split in SPLITS:
        last = sizes[split] - 1
        for sub in spec.subdirs:
            path = f"<root>/{split}/{sub}/0.npy ... {last}.npy"
            lines.append(f"    {path:<44} {spec.describe(sub)}")
    lines += [
        f"  ({sizes['train']} train / {sizes['val']} val samples; val is the test split.)",
        "  Maximum Roaming's layout <root>/low_res/{train,val}/... is accepted too, and so is a",
        f"  {spec.name}/ folder inside <root> (<root>/{spec.name}/[low_res/]{{train,val}}/...).",
        "  Files are read as MTAN's loader reads them: <i>.npy for i = 0 .. N-1, H x W x C.",
        f"Download: {spec.download}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- locating


@dataclass(frozen=True)
class MtanFiles:
    """Where a dataset was found: ``base`` holds ``train/`` and/or ``val/``."""

    root: Path
    base: Path
    layout: str  # "plain" | "low_res"


def read_npy_header(path: str | Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a ``.npy`` file from its header only (no array data is read)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(f)
            else:  # rare (3.0: utf-8 header); let numpy parse it
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
                shape, dtype = arr.shape, arr.dtype
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DataError(f"cannot read {path} as a .npy file ({e}); the file is corrupt or not "
                        "written by numpy.save.", path) from e
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _first_image_hw(base: Path) -> tuple[int, ...] | None:
    for split in SPLITS:
        p = base / split / "image" / "0.npy"
        if p.is_file():
            try:
                return read_npy_header(p)[0][:2]
            except DataError:
                return None
    return None


def find_mtan(spec: MtanSpec, root: str | Path) -> MtanFiles:
    """Locate the dataset under ``root`` (plain or low_res layout, or a ``<name>/`` folder)."""
    root = Path(root).expanduser()
    layout_text = expected_layout(spec)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DataError(f"{spec.title} root {root} {what}.\n{layout_text}", root)
    candidates = [(root, "plain"), (root / "low_res", "low_res"),
                  (root / spec.name, "plain"), (root / spec.name / "low_res", "low_res")]
    found = [(b, lay) for b, lay in candidates if any((b / s).is_dir() for s in SPLITS)]
    if not found:
        looked = ", ".join(str(b) for b, _ in candidates)
        hint = ""
        if root.name in SPLITS or (root / "image").is_dir():
            hint = f" {root} looks like a split folder itself: pass the folder that holds train/ and val/."
        raise DataError(f"{spec.title} not found under {root}: none of {looked} has a train/ or "
                        f"val/ folder.{hint}\n{layout_text}", root)
    if len(found) > 1:  # prefer a folder with this dataset's subfolders (another MTAN dataset
        # may sit at <root> itself), then one at the papers' resolution (both zips side by side)
        complete = [fl for fl in found
                    if any(all((fl[0] / s / sub).is_dir() for sub in spec.subdirs) for s in SPLITS)]
        found = complete or found
        matching = [fl for fl in found if _first_image_hw(fl[0]) == spec.hw]
        found = matching or found
    base, layout = found[0]
    return MtanFiles(root, base, layout)


# --------------------------------------------------------------------------- listing a split


@dataclass(frozen=True)
class SplitListing:
    """One split's folders, checked: ``n`` samples, and a fingerprint of what is on disk."""

    split: str
    folder: Path
    n: int
    fingerprint: dict


def list_split(spec: MtanSpec, files: MtanFiles, split: str, expect: str = "full") -> SplitListing:
    """Check one split's folders and file names (no file is opened); DataError if anything is off."""
    layout_text = expected_layout(spec)
    sdir = files.base / split
    if not sdir.is_dir():
        raise DataError(f"{spec.title}: the {split} split is missing: folder {sdir} does not "
                        f"exist.\n{layout_text}", sdir)
    missing = [sdir / sub for sub in spec.subdirs if not (sdir / sub).is_dir()]
    if missing:
        present = sorted(p.name for p in sdir.iterdir() if p.is_dir())
        want = "; ".join(f"{p} ({spec.describe(p.name)})" for p in missing)
        raise DataError(f"{spec.title}: missing folder(s) {want}. {sdir} holds "
                        f"{', '.join(present) or 'no folders'}.\n{layout_text}", missing[0])
    counts: dict[str, int] = {}
    fp: dict[str, dict] = {}
    for sub in spec.subdirs:
        d = sdir / sub
        try:
            entries = [e for e in os.scandir(d) if e.name.endswith(".npy")]
        except OSError as e:
            raise DataError(f"cannot list {d} ({e}).", d) from e
        bad = sorted(e.name for e in entries if not _NPY_NAME.match(e.name))
        if bad:
            raise DataError(
                f"{d / bad[0]}: unexpected file name; every file in {d} must be <index>.npy with "
                f"index 0 .. N-1 written without leading zeros (MTAN's loader opens "
                f"'{{:d}}.npy'.format(index)). Found {len(bad)} such file(s): "
                f"{', '.join(bad[:5])}.\n{layout_text}", d / bad[0])
        idx = {int(e.name[:-4]) for e in entries}
        n = len(idx)
        if n == 0:
            raise DataError(f"{d} holds no .npy files; expected 0.npy .. N-1.npy "
                            f"({spec.describe(sub)}).\n{layout_text}", d)
        if max(idx) != n - 1:
            gap = min(set(range(max(idx) + 1)) - idx)
            raise DataError(f"{d / f'{gap}.npy'} is missing: {d} holds {n} files with indices up "
                            f"to {max(idx)}, and MTAN's loader reads 0.npy .. {n - 1}.npy.",
                            d / f"{gap}.npy")
        counts[sub] = n
        try:
            stats = sorted(((e.name, st.st_size, st.st_mtime_ns) for e in entries for st in [e.stat()]),
                           key=lambda t: int(t[0][:-4]))
            empty = _cache.empty_files(stats)
            if empty:
                raise DataError(f"{d / empty[0]} is empty (0 bytes; {len(empty)} of the {n} files in {d} "
                                "are): the copy was interrupted or the disk filled up. Re-extract the "
                                f"archive; expected {spec.describe(sub)}.", d / empty[0])
            fp[sub] = {"count": n, **_cache.fingerprint_files(stats, d, sample=4)}
        except OSError as e:
            raise DataError(f"cannot read the files in {d} ({e}).", d) from e
    if len(set(counts.values())) > 1:
        found = ", ".join(f"{sub}/ {c}" for sub, c in counts.items())
        raise DataError(f"{sdir}: the subfolders hold different numbers of samples ({found}); "
                        f"every sample needs one file in each of {', '.join(spec.subdirs)}. "
                        "The copy is incomplete: re-extract the archive.", sdir)
    n = counts["image"]
    want = spec.split_sizes[split]
    if expect == "full" and n != want:
        sizes = " / ".join(f"{s} {c}" for s, c in spec.full_counts)
        raise DataError(f"{sdir} holds {n} samples, expected {want} for the full {spec.title} "
                        f"{split} split (MTAN's release: {sizes}). The copy is incomplete or "
                        f"another version; {_cache.SUBSET_HINT}.\n{layout_text}", sdir)
    return SplitListing(split, sdir, n, fp)


# --------------------------------------------------------------------------- checking files


def _check_header(spec: MtanSpec, path: Path, sub: str) -> str:
    shape, dtype = read_npy_header(path)
    want = spec.shape(sub)
    if shape != want:
        hint = ""
        if len(shape) == 3 and len(want) == 3 and shape == (want[2], want[0], want[1]):
            hint = " It is channels-first; MTAN's files are H x W x C."
        elif len(shape) >= 2:
            hint = dict(spec.hw_hints).get(tuple(shape[:2]), "")  # type: ignore[arg-type]
            hint = f" {hint}" if hint else ""
        raise DataError(f"{path} has shape {shape}, expected {want} ({spec.describe(sub)}).{hint}",
                        path)
    ok = dtype.kind == "f" or (sub == spec.label_dir and dtype.kind == "i")
    if not ok or dtype.hasobject:
        want_dt = "a float or signed-integer" if sub == spec.label_dir else "a float"
        extra = " (0..255 images must be converted to floats in [0, 1])" if dtype == np.uint8 else ""
        raise DataError(f"{path} has dtype {dtype}, expected {want_dt} dtype "
                        f"({spec.describe(sub)}){extra}.", path)
    return str(dtype)


def _value_error(path: Path, sub: str, spec: MtanSpec, what: str) -> DataError:
    return DataError(f"{path}: {what}; expected {spec.describe(sub)}.", path)


def _check_values(spec: MtanSpec, path: Path, sub: str, a: np.ndarray) -> tuple[bool, bool] | None:
    """Value checks of one loaded file (vectorised, a few ms per file); for normals returns (has
    valid vectors, one has a negative component) for the split-level sign check."""
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise _value_error(path, sub, spec, f"{int((~np.isfinite(a)).sum())} values are NaN or inf")
    if sub == "image":
        lo, hi = float(a.min()), float(a.max())
        if lo < -VALUE_TOL or hi > 1 + VALUE_TOL:
            raise _value_error(path, sub, spec, f"values range from {lo:.4g} to {hi:.4g} (MTAN's "
                               "images are floats in [0, 1], neither 0..255 nor mean/std-normalised)")
    elif sub == spec.label_dir:
        r = np.rint(a)
        bad = (a != r) | (r < -1) | (r > spec.n_classes - 1)
        if bad.any():
            vals = np.unique(a[bad])[:6]
            raise _value_error(path, sub, spec, f"{int(bad.sum())} pixels hold values outside "
                               f"{{-1, 0, ..., {spec.n_classes - 1}}}, e.g. "
                               f"{', '.join(f'{v:g}' for v in vals)}")
    elif sub == "depth":
        lo = float(a.min())
        if lo < 0:
            raise _value_error(path, sub, spec, f"{int((a < 0).sum())} values are negative "
                               f"(minimum {lo:.4g})")
        if spec.depth_median_max is not None:
            vio.check_depth_scale(a, path, spec.describe(sub), spec.depth_median_max, spec.depth_unit_hint)
    elif sub == "normal":
        m = float(np.abs(a).max())
        if m > 1 + VALUE_TOL:
            raise _value_error(path, sub, spec, f"components reach {m:.4g} in magnitude (unit "
                               "normals have components in [-1, 1])")
        return vio.check_unit_normals(a, path, spec.describe(sub))
    return None


def _load_file(spec: MtanSpec, path: Path, sub: str, signs: np.ndarray | None = None) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot load {path} ({e}); the file is corrupt. Re-extract the "
                        "archive.", path) from e
    if a.shape != spec.shape(sub):  # the header was checked; this catches truncated files
        raise DataError(f"{path} has shape {a.shape}, expected {spec.shape(sub)}.", path)
    found = _check_values(spec, path, sub, a)
    if signs is not None and found is not None:
        signs[:] = found
    return a


# --------------------------------------------------------------------------- building the cache


def _build(spec: MtanSpec, listing: SplitListing, num_workers: int, progress: bool) -> dict:
    n, (h, w) = listing.n, spec.hw
    folder = listing.folder
    dtypes: dict[str, set[str]] = {sub: set() for sub in spec.subdirs}
    for sub in spec.subdirs:  # every header first: fail in seconds, before reading gigabytes
        d = folder / sub
        for i in range(n):
            dtypes[sub].add(_check_header(spec, d / f"{i}.npy", sub))

    images = torch.empty((n, 3, h, w), dtype=torch.float16)
    labels = torch.empty((n, h, w), dtype=torch.int8)
    depth = torch.empty((n, 1, h, w), dtype=torch.float32)
    normals = torch.empty((n, 3, h, w), dtype=torch.float32) if spec.has_normals else None
    signs = np.zeros((n, 2), dtype=bool)  # per file: has valid normals, one has a negative component

    def work(lo: int, hi: int) -> int:
        for i in range(lo, hi):
            name = f"{i}.npy"
            img = _load_file(spec, folder / "image" / name, "image")
            images[i].copy_(torch.from_numpy(img).permute(2, 0, 1))  # one rounding to float16
            lab = _load_file(spec, folder / spec.label_dir / name, spec.label_dir)
            labels[i].copy_(torch.from_numpy(np.rint(lab).astype(np.int8)))
            dep = _load_file(spec, folder / "depth" / name, "depth")
            depth[i].copy_(torch.from_numpy(dep).permute(2, 0, 1))
            if normals is not None:
                nor = _load_file(spec, folder / "normal" / name, "normal", signs[i])
                normals[i].copy_(torch.from_numpy(nor).permute(2, 0, 1))
        return hi - lo

    # threads: np.load's file reads and the numpy checks release the GIL; rows are written in place
    _cache.fill_in_chunks(n, work, chunk=64, num_workers=num_workers,
                          desc=f"{spec.title} {listing.split}: reading .npy", unit="sample", progress=progress)
    if normals is not None:  # over the split: some normal must point the negative way
        vio.check_normals_signed(signs[:, 0], signs[:, 1], [folder / "normal" / f"{i}.npy" for i in range(n)],
                                 folder / "normal", spec.describe("normal"))
    payload = {"images": images, "labels": labels, "depth": depth,
               "source_dtypes": [f"{sub}:{'/'.join(sorted(dtypes[sub]))}" for sub in spec.subdirs]}
    if normals is not None:
        payload["normals"] = normals
    return payload


# --------------------------------------------------------------------------- loading


@dataclass
class DenseTensors:
    """One split of an MTAN-format dataset, CHW tensors in file-index order.

    Tensors are memory-mapped slices of the cache (copy-on-write); ``.to(device)`` reads them in.
    """

    images: torch.Tensor                 # N x 3 x H x W float16 in [0, 1]
    labels: torch.Tensor                 # N x H x W int8 in {-1, 0..C-1}; -1 = ignore
    depth: torch.Tensor                  # N x 1 x H x W float32; 0 = invalid
    normals: torch.Tensor | None         # N x 3 x H x W float32; all-zero = invalid (NYUv2)
    split: str
    dataset: str
    class_names: tuple[str, ...]
    base: Path                           # the folder holding train/ and val/
    layout: str                          # "plain" | "low_res"
    source_dtypes: list[str] = field(default_factory=list)
    cache_path: Path | None = field(default=None, compare=False)
    cache_sha256: str = field(default="", compare=False)    # sha256 of the cache file read
    source_sha256: str = field(default="", compare=False)   # sha256 of the source fingerprint

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def n_classes(self) -> int:
        return len(self.class_names)




def load_mtan(spec: MtanSpec, root: str | Path, split: str, cache_dir: str | Path | None = None,
              expect: str = "full", *, num_workers: int | None = None, progress: bool = True,
              verify: bool = True) -> DenseTensors:
    """Load one split as tensors, reading and checking the ``.npy`` files once into the cache.

    ``expect="full"`` insists on the official split sizes; ``"any"`` (subsets, generated data)
    only checks that the files are consistent. ``verify`` re-hashes the cache file on load.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)} (MTAN's {spec.title} has no "
                         f"other split; val is the test set), got {split!r}")
    if expect not in EXPECT_MODES:
        raise ValueError(f"expect must be one of {', '.join(EXPECT_MODES)}, got {expect!r}")
    files = find_mtan(spec, root)
    listing = list_split(spec, files, split, expect)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else _cache.default_cache_dir(root, spec.name)
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    try:
        where = str(files.base.relative_to(files.root))
    except ValueError:
        where = str(files.base)
    fingerprint = {"base": where, "layout": files.layout, "split": split, "n": listing.n,
                   "folders": listing.fingerprint}
    params = {"dataset": spec.name, "version": CACHE_VERSION, "hw": list(spec.hw),
              "subdirs": list(spec.subdirs), "images": "float16 CHW", "labels": "int8 (-1 ignore)",
              "depth": "float32 CHW", "normals": "float32 CHW" if spec.has_normals else None}

    def recheck() -> dict:
        return {**fingerprint, "folders": list_split(spec, files, split, expect).fingerprint}

    result = _cache.load_or_build(
        cache_dir, f"{spec.name}_{split}", fingerprint=fingerprint, params=params,
        build=lambda: _build(spec, listing, workers, progress), verify=verify,
        recheck=recheck, source=listing.folder)
    p = result.payload
    return DenseTensors(images=p["images"], labels=p["labels"], depth=p["depth"],
                        normals=p.get("normals"), split=split, dataset=spec.name,
                        class_names=spec.class_names, base=files.base, layout=files.layout,
                        source_dtypes=list(p["source_dtypes"]), cache_path=result.data_path,
                        cache_sha256=result.sha256, source_sha256=result.source_sha256)
