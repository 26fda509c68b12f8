"""Tiny look-alike datasets in the real on-disk formats, for tests and smoke runs.

Why: every reader must be exercised on the exact file formats (header lines,
spacing, JPEG files) without the multi-GB downloads, and a tiny training run
must be able to show learning -- so labels are drawn into the images.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlrepro.data.celeba import CELEBA_ATTRIBUTES, CELEBA_IMAGE_SIZE

#: Bumped when a generator writes different files; :func:`mtlrepro.problems.paths.ensure_tiny`
#: regenerates a tiny copy made by an older version (2: CelebA's identity, bbox and landmark files).
GENERATOR_VERSION = 2

#: Header line 2 of ``list_bbox_celeba.txt`` and ``list_landmarks_align_celeba.txt``.
CELEBA_BBOX_HEADER = "image_id x_1 y_1 width height"
CELEBA_LANDMARK_HEADER = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x "
                          "leftmouth_y rightmouth_x rightmouth_y")
#: Mean aligned landmarks (x, y) in the 178x218 crops: left eye, right eye, nose, mouth corners.
_CELEBA_LANDMARKS = ((69, 111), (108, 111), (89, 136), (72, 152), (106, 152))

#: The generated CelebA draws attribute k into grid cell (row k // 5, column k % 5).
CELEBA_GRID: tuple[int, int] = (8, 5)  # rows, columns


def celeba_cell_box(k: int) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of attribute ``k``'s patch in a 178x218 image."""
    rows, cols = CELEBA_GRID
    w, h = CELEBA_IMAGE_SIZE
    mx, my = 4, 5  # outer margins
    cw, ch = (w - 2 * mx) // cols, (h - 2 * my) // rows  # 34 x 26 cells
    r, c = divmod(k, cols)
    inset = 3
    return (mx + c * cw + inset, my + r * ch + inset, mx + (c + 1) * cw - inset,
            my + (r + 1) * ch - inset)


def _celeba_colour(k: int) -> tuple[int, int, int]:
    """A bright, attribute-specific colour (every channel >= 150)."""
    rng = np.random.default_rng(1000 + k)
    return tuple(int(v) for v in rng.integers(150, 256, size=3))  # type: ignore[return-value]


def generate_celeba(root: str | Path, n_train: int = 48, n_val: int = 16, n_test: int = 16,
                    layout: str = "torchvision", seed: int = 0) -> Path:
    """Write a tiny CelebA under ``root`` and return ``root`` (pass it to ``load_celeba``).

    Files are exactly the official formats: ``list_attr_celeba.txt`` (count, the 40 names,
    then ``000001.jpg -1  1 ...`` with each value right-aligned in 2 characters, hence the
    double spaces), ``list_eval_partition.txt`` (``000001.jpg 0``; train, then val, then
    test) and 178x218 RGB JPEGs (quality 90) named 000001.jpg, ... in
    ``<root>/celeba/`` (layout "torchvision") or ``<root>/{Img,Anno,Eval}/`` ("official").
    Beside them the three annotation files torchvision's ``CelebA`` also opens, in the release's
    formats (:func:`write_celeba_extras`), so that it reads the same root.

    Label rule (so that tiny runs can learn): the image is a mid-grey canvas split into an
    8 x 5 grid; attribute k owns cell (k // 5, k % 5) (see :func:`celeba_cell_box`). Label 1
    paints the cell in a bright attribute-specific colour (every channel >= 150), label 0
    paints it dark grey (40). On top: a per-image brightness offset in [-15, 15] and
    Gaussian pixel noise (sigma 10). Labels themselves are noise-free: the cell's mean
    brightness determines the label, also after resizing to 64x64 or 32x32. Each attribute
    is positive with its own probability in [0.3, 0.7]. Deterministic for a given seed.
    """
    from PIL import Image

    if layout not in ("torchvision", "official"):
        raise ValueError(f"layout must be 'torchvision' or 'official', got {layout!r}")
    root = Path(root)
    if layout == "torchvision":
        base = root / "celeba"
        img_dir, attr_file, part_file = (base / "img_align_celeba", base / "list_attr_celeba.txt",
                                         base / "list_eval_partition.txt")
    else:
        img_dir, attr_file, part_file = (root / "Img" / "img_align_celeba",
                                         root / "Anno" / "list_attr_celeba.txt",
                                         root / "Eval" / "list_eval_partition.txt")
    for p in (img_dir, attr_file.parent, part_file.parent):
        p.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    prior = rng.uniform(0.3, 0.7, size=40)
    labels = rng.random((n, 40)) < prior  # n x 40 bool
    splits = [0] * n_train + [1] * n_val + [2] * n_test
    names = [f"{i + 1:06d}.jpg" for i in range(n)]

    w, h = CELEBA_IMAGE_SIZE
    boxes = [celeba_cell_box(k) for k in range(40)]
    colours = [np.array(_celeba_colour(k), np.float32) for k in range(40)]
    for i in range(n):
        canvas = np.full((h, w, 3), 110.0, np.float32)
        for k, (l, t, r, b) in enumerate(boxes):
            canvas[t:b, l:r] = colours[k] if labels[i, k] else 40.0
        canvas += rng.uniform(-15, 15) + rng.normal(0, 10, size=canvas.shape)
        img = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
        img.save(img_dir / names[i], "JPEG", quality=90)

    lines = [f"{n}", " ".join(CELEBA_ATTRIBUTES)]
    lines += [f"{names[i]} " + " ".join(f"{1 if v else -1:2d}" for v in labels[i]) for i in range(n)]
    attr_file.write_text("\n".join(lines) + "\n")
    part_file.write_text("".join(f"{names[i]} {splits[i]}\n" for i in range(n)))
    write_celeba_extras(attr_file.parent, names, seed)
    return root


def write_celeba_extras(folder: str | Path, names: list[str], seed: int = 0) -> None:
    """``identity_CelebA.txt``, ``list_bbox_celeba.txt`` and ``list_landmarks_align_celeba.txt``
    in ``folder``, in the formats of the CelebA release as torchvision's ``datasets/celeba.py``
    parses them (``csv.reader(delimiter=" ", skipinitialspace=True)``, so no trailing blanks):

    * identity: no header, ``000001.jpg 2880`` (an identity id per image);
    * bbox: the image count, ``image_id x_1 y_1 width height``, then
      ``000001.jpg    95  71 226 313`` (box in the in-the-wild image, right-aligned columns);
    * landmarks: the image count, the 10 column names, then
      ``000001.jpg    69  109  106  113   77  142   73  152  108  154`` (x, y of eyes, nose and
      mouth corners in the aligned 178x218 crop).

    Values are plausible draws (a separate generator, so images and labels do not change);
    nothing in mtlrepro reads them.
    """
    folder = Path(folder)
    rng = np.random.default_rng(10_000 + seed)
    n = len(names)
    ident = rng.integers(1, 10_178, size=n)
    box = np.stack([rng.integers(20, 400, n), rng.integers(20, 300, n),
                    rng.integers(100, 500, n), rng.integers(120, 600, n)], axis=1)
    marks = np.array(_CELEBA_LANDMARKS).reshape(-1)[None] + rng.integers(-4, 5, size=(n, 10))
    (folder / "identity_CelebA.txt").write_text("".join(f"{f} {i}\n" for f, i in zip(names, ident)))
    (folder / "list_bbox_celeba.txt").write_text(
        f"{n}\n{CELEBA_BBOX_HEADER}\n"
        + "".join(f"{f} {b[0]:5d} {b[1]:3d} {b[2]:3d} {b[3]:3d}\n" for f, b in zip(names, box)))
    (folder / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\n{CELEBA_LANDMARK_HEADER}\n"
        + "".join(f"{f} {m[0]:5d}" + "".join(f" {v:4d}" for v in m[1:]) + "\n"
                  for f, m in zip(names, marks)))


# --------------------------------------------------------------------------- MTAN .npy (dense)
#
# Tiny Cityscapes / NYUv2 in MTAN's preprocessed format (see mtlrepro.data.mtan_npy): one .npy
# per sample and target, at the real resolutions, with ignore labels, invalid depth and
# invalid normals present. Targets are drawn from the image so that a tiny run can learn them.

#: The generated dense scenes are an 8 x 8 grid of rectangular blocks (16x32 px on Cityscapes,
#: 36x48 px on NYUv2).
DENSE_GRID: tuple[int, int] = (8, 8)


def dense_class_colour(c: int, n_classes: int) -> tuple[float, float, float]:
    """Class ``c``'s fully bright RGB colour in the generated scenes: hue c / n_classes."""
    import colorsys

    return colorsys.hsv_to_rgb(c / n_classes, 0.85, 1.0)


def _dense_blocks(x, bh: int, bw: int):
    return np.repeat(np.repeat(x, bh, axis=0), bw, axis=1)


def _dense_sample(rng, hw: tuple[int, int], n_classes: int, depth_range: tuple[float, float],
                  normals: bool) -> dict:
    """One generated scene: {"image", "label", "depth"[, "normal"]} as float64 arrays."""
    h, w = hw
    gh, gw = DENSE_GRID
    bh, bw = h // gh, w // gw
    cls = rng.integers(0, n_classes, size=(gh, gw))
    cls[rng.random((gh, gw)) < 0.1] = -1                      # void blocks: label -1 (ignore)
    bright = rng.uniform(0.45, 1.0, size=(gh, gw))            # brightness codes depth
    palette = np.array([dense_class_colour(c, n_classes) for c in range(n_classes)])
    colour = np.where((cls >= 0)[..., None], palette[np.maximum(cls, 0)], 0.3)  # void: grey
    image = _dense_blocks(colour * bright[..., None], bh, bw)
    image = np.clip(image + rng.normal(0.0, 0.02, size=image.shape), 0.0, 1.0)
    lo, hi = depth_range
    depth = lo + (hi - lo) * (1.0 - bright) / 0.55              # darker = farther (Cityscapes:
    depth[rng.random((gh, gw)) < 0.1] = 0.0                   # disparity, so nearer is larger;
    out = {"image": image,                                    # the direction does not matter)
           "label": _dense_blocks(cls.astype(np.float64), bh, bw),
           "depth": _dense_blocks(depth, bh, bw)[..., None]}
    if normals:
        # a class-specific direction, tilted along x by the brightness; all-zero = invalid
        base = np.random.default_rng(4242).normal(size=(n_classes + 1, 3))
        base[:, 2] = np.abs(base[:, 2]) + 1.0
        n = base[cls] + np.stack([bright - 0.725, np.zeros_like(bright), np.zeros_like(bright)], -1)
        n /= np.linalg.norm(n, axis=-1, keepdims=True)
        n[rng.random((gh, gw)) < 0.1] = 0.0
        out["normal"] = _dense_blocks(n, bh, bw)
    return out


def _generate_mtan(root, spec, n_train: int, n_val: int, seed: int, layout: str,
                   depth_range: tuple[float, float], dtype) -> Path:
    from mtlrepro.data.mtan_npy import LAYOUTS

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a float dtype (MTAN's files are floats), got {dtype}")
    root = Path(root)
    base = root / "low_res" if layout == "low_res" else root
    rng = np.random.default_rng(seed)
    files = {"image": "image", "label": spec.label_dir, "depth": "depth", "normal": "normal"}
    for split, n in (("train", n_train), ("val", n_val)):
        for sub in spec.subdirs:
            (base / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            sample = _dense_sample(rng, spec.hw, spec.n_classes, depth_range, spec.has_normals)
            for key, arr in sample.items():
                np.save(base / split / files[key] / f"{i}.npy", arr.astype(dtype))
    return root


def generate_cityscapes(root: str | Path, n_train: int = 16, n_val: int = 8, seed: int = 0,
                        layout: str = "plain", dtype="float32") -> Path:
    """Write a tiny Cityscapes in MTAN's format under ``root``; returns ``root``.

    Files: ``<root>/{train,val}/{image,label_7,depth}/<i>.npy`` (``layout="plain"``) or the
    same under ``<root>/low_res/`` (``"low_res"``, Maximum Roaming's path): image 128x256x3,
    label_7 128x256 (values -1, 0..6), depth 128x256x1, all ``dtype`` (float32 by default;
    MTAN's release is float too, and the reader accepts any float dtype).

    Scene rule (learnable): an 8 x 8 grid of 16x32 blocks. Each block has a class (10 % are
    void, label -1, drawn grey) and a brightness b in [0.45, 1]; its colour is the class's hue
    (:func:`dense_class_colour`) times b, plus Gaussian noise (sigma 0.02), clipped to [0, 1].
    Depth is ``0.02 + 0.45 (1 - b) / 0.55`` (inverse-depth-like values in [0.02, 0.47]), and 0
    (invalid) on 10 % of the blocks. Deterministic for a given seed.
    """
    from mtlrepro.data.cityscapes import CITYSCAPES

    return _generate_mtan(root, CITYSCAPES, n_train, n_val, seed, layout, (0.02, 0.47), dtype)


def generate_nyuv2(root: str | Path, n_train: int = 16, n_val: int = 8, seed: int = 0,
                   layout: str = "plain", dtype="float32") -> Path:
    """Write a tiny NYUv2 in MTAN's format under ``root``; returns ``root``.

    Files: ``<root>/{train,val}/{image,label,depth,normal}/<i>.npy`` (or under
    ``<root>/low_res/``): image 288x384x3, label 288x384 (-1, 0..12), depth 288x384x1 metres,
    normal 288x384x3, all ``dtype``.

    Scene rule: as :func:`generate_cityscapes` with 36x48 blocks and 13 classes; depth is
    ``0.5 + 9.5 (1 - b) / 0.55`` metres (0 on 10 % of the blocks); the normal of a block is a
    fixed class-specific unit vector tilted along x by ``b - 0.725`` and renormalised, and
    all-zero (invalid) on 10 % of the blocks.
    """
    from mtlrepro.data.nyuv2 import NYUV2

    return _generate_mtan(root, NYUV2, n_train, n_val, seed, layout, (0.5, 10.0), dtype)
