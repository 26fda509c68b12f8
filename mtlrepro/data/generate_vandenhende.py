"""Tiny NYUD_MT and PASCAL_MT copies in Vandenhende et al.'s exact on-disk formats.

The layouts are those of :mod:`mtlrepro.data.nyud_mt` and :mod:`mtlrepro.data.pascal_mt`
(file names, folders, image sizes, PNG modes, ``.npy`` shapes, the PASCAL-Part ``anno`` struct and
the PASCAL-Context ``LabelMap`` written with ``scipy.io.savemat``). Scenes are grids of blocks
whose colour codes the class and whose brightness codes depth, so that a tiny run can learn; the
ignore / invalid cases of every task occur (unlabelled pixels, zero depth, zero normals, images
without persons, persons without part annotations, normals on classes without distilled normals).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlrepro.data.generate import dense_class_colour
from mtlrepro.data.nyud_mt import NYUD_CLASSES, NYUD_HW
from mtlrepro.data.pascal_mt import NORMALS_VALID_CLASSES, VOC_CLASSES
from mtlrepro.data.pascal_parts import PERSON_CLASS

__all__ = ["generate_nyud_mt", "generate_pascal_mt", "write_part_annotation", "write_label_map",
           "CONTEXT_OF_VOC", "PASCAL_TINY_SIZES"]

#: PASCAL-Context id of each VOC class (the repo's CONTEXT_CATEGORY_LABELS), so that the
#: generated semseg agrees with the generated LabelMap.
CONTEXT_OF_VOC: tuple[int, ...] = (0, 2, 23, 25, 31, 34, 45, 59, 65, 72, 98, 397, 113, 207, 258,
                                   284, 308, 347, 368, 416, 427)
#: (height, width) of the generated PASCAL images, in turn (PASCAL's usual sizes).
PASCAL_TINY_SIZES: tuple[tuple[int, int], ...] = ((375, 500), (500, 375), (333, 500))
#: context classes of the generated backgrounds: two with distilled normals (wall 440, floor
#: 158), two without (sky 360, grass 187)
_BACKGROUND = (440, 158, 360, 187)


def _blocks(grid: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Upsample a (gh, gw, ...) grid to (H, W, ...) blocks (the last blocks absorb the remainder)."""
    h, w = hw
    rows = np.minimum(np.arange(h) * grid.shape[0] // h, grid.shape[0] - 1)
    cols = np.minimum(np.arange(w) * grid.shape[1] // w, grid.shape[1] - 1)
    return grid[rows][:, cols]


def _boundaries(lab: np.ndarray) -> np.ndarray:
    e = np.zeros(lab.shape, bool)
    e[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    e[1:, :] |= lab[1:, :] != lab[:-1, :]
    return e


def _unit(rng, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    v[:, 2] = np.abs(v[:, 2]) + 1.0
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(np.clip(image * 255.0, 0, 255).astype(np.uint8), "RGB").save(path, "JPEG", quality=90)


# --------------------------------------------------------------------------- NYUD_MT


def generate_nyud_mt(root: str | Path, n_train: int = 8, n_val: int = 4, seed: int = 0,
                     depth_channel: bool = False) -> Path:
    """Write a tiny NYUD_MT under ``root`` (the dataset folder itself) and return ``root``.

    Files: ``gt_sets/{train,val}.txt`` (ids ``0001``, ``0002``, ... one per line), ``images/<id>.jpg``
    480x640 RGB JPEG (quality 90), ``segmentation/<id>.png`` 8-bit grey (0 unlabelled, 1..40),
    ``depth/<id>.npy`` float32 480x640 (480x640x1 with ``depth_channel``) metres,
    ``normals/<id>.npy`` float32 480x640x3, ``edge/<id>.npy`` float32 480x640 0 / 1.

    Scene rule: an 8 x 8 grid of 60x80 blocks, each with a class (10 % unlabelled, label 0,
    drawn grey) and a brightness b in [0.45, 1]; colour = the class's hue times b plus noise
    (sigma 0.02). Depth = 0.5 + 9.5 (1 - b) / 0.55 m, 0 on 10 % of the blocks; the normal of a
    block is a class-specific unit vector, all-zero on 10 % of the blocks; edges are the pixels
    whose label differs from the pixel left of or above them.
    """
    from PIL import Image

    root = Path(root)
    for d in ("gt_sets", "images", "segmentation", "depth", "normals", "edge"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_classes = len(NYUD_CLASSES)
    palette = np.array([dense_class_colour(c, n_classes) for c in range(n_classes)])
    directions = _unit(np.random.default_rng(4242), n_classes)
    ids = [f"{k + 1:04d}" for k in range(n_train + n_val)]
    for i in ids:
        cls = rng.integers(1, n_classes + 1, size=(8, 8))
        cls[rng.random((8, 8)) < 0.1] = 0
        bright = rng.uniform(0.45, 1.0, size=(8, 8))
        colour = np.where((cls > 0)[..., None], palette[np.maximum(cls, 1) - 1], 0.3) * bright[..., None]
        image = _blocks(colour, NYUD_HW) + rng.normal(0.0, 0.02, size=(*NYUD_HW, 3))
        depth = 0.5 + 9.5 * (1.0 - bright) / 0.55
        depth[rng.random((8, 8)) < 0.1] = 0.0
        normals = directions[np.maximum(cls, 1) - 1]
        normals[rng.random((8, 8)) < 0.1] = 0.0
        label = _blocks(cls, NYUD_HW)
        _save_jpeg(root / "images" / f"{i}.jpg", image)
        Image.fromarray(label.astype(np.uint8), "L").save(root / "segmentation" / f"{i}.png")
        d = _blocks(depth, NYUD_HW).astype(np.float32)
        np.save(root / "depth" / f"{i}.npy", d[..., None] if depth_channel else d)
        np.save(root / "normals" / f"{i}.npy", _blocks(normals, NYUD_HW).astype(np.float32))
        np.save(root / "edge" / f"{i}.npy", _boundaries(label).astype(np.float32))
    (root / "gt_sets" / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "gt_sets" / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


# --------------------------------------------------------------------------- PASCAL_MT


def write_label_map(path: Path, labels: np.ndarray) -> None:
    """``pascal-context/trainval/<id>.mat``: one variable ``LabelMap`` (uint16, H x W)."""
    import scipy.io as sio
    sio.savemat(str(path), {"LabelMap": np.asarray(labels, dtype=np.uint16)}, do_compression=True)


def write_part_annotation(path: Path, imname: str, objects: list[dict]) -> None:
    """A PASCAL-Part annotation ``anno`` (fields imname, objects) as ``scipy.io.savemat`` writes
    MATLAB structs. Each object is ``{"class": name, "class_ind": int, "mask": H x W,
    "parts": [(part_name, H x W mask), ...]}``; an empty ``parts`` list is written as a 0 x 0 struct
    array, as objects without part annotations are in PASCAL-Part."""
    import scipy.io as sio
    part_dt = [("part_name", "O"), ("mask", "O")]
    objs = np.zeros((1, len(objects)), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"),
                                              ("parts", "O")])
    for k, o in enumerate(objects):
        parts = np.zeros((1, len(o["parts"])) if o["parts"] else (0, 0), dtype=part_dt)
        for j, (name, mask) in enumerate(o["parts"]):
            parts[0, j]["part_name"] = name
            parts[0, j]["mask"] = np.asarray(mask, dtype=np.uint8)
        objs[0, k]["class"] = o["class"]
        objs[0, k]["class_ind"] = np.array([[float(o["class_ind"])]])
        objs[0, k]["mask"] = np.asarray(o["mask"], dtype=np.uint8)
        objs[0, k]["parts"] = parts
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"] = imname
    anno[0, 0]["objects"] = objs
    sio.savemat(str(path), {"anno": anno}, do_compression=True)


def _person(hw: tuple[int, int], top: int, left: int, height: int, width: int) -> tuple[np.ndarray, list]:
    """A box-shaped person: its instance mask and the PASCAL-Part parts of its body regions."""
    def box(r0, r1, c0, c1):
        m = np.zeros(hw, np.uint8)
        m[top + int(r0 * height):top + int(r1 * height), left + int(c0 * width):left + int(c1 * width)] = 1
        return m
    parts = [("hair", box(0.0, 0.05, 0.35, 0.65)), ("head", box(0.05, 0.2, 0.35, 0.65)),
             ("neck", box(0.2, 0.25, 0.4, 0.6)), ("torso", box(0.25, 0.55, 0.25, 0.75)),
             ("luarm", box(0.25, 0.4, 0.0, 0.25)), ("ruarm", box(0.25, 0.4, 0.75, 1.0)),
             ("llarm", box(0.4, 0.5, 0.0, 0.25)), ("rhand", box(0.4, 0.55, 0.75, 1.0)),
             ("luleg", box(0.55, 0.75, 0.25, 0.5)), ("ruleg", box(0.55, 0.75, 0.5, 0.75)),
             ("llleg", box(0.75, 0.95, 0.25, 0.5)), ("rfoot", box(0.75, 1.0, 0.5, 0.75))]
    return box(0.0, 1.0, 0.0, 1.0), parts


def generate_pascal_mt(root: str | Path, n_train: int = 8, n_val: int = 4, seed: int = 0) -> Path:
    """Write a tiny PASCAL_MT under ``root`` (the dataset folder itself) and return ``root``.

    Files: ``ImageSets/Context/{train,val}.txt``, ``JPEGImages/<id>.jpg`` (sizes cycling through
    :data:`PASCAL_TINY_SIZES`), ``semseg/pascal-context/<id>.png`` (palette PNG, 0..20 and 255),
    ``human_parts/<id>.mat`` (PASCAL-Part ``anno``), ``pascal-context/trainval/<id>.mat``
    (``LabelMap`` uint16), ``normals_distill/<id>.png`` (RGB) and ``sal_distill/<id>.png`` (grey).

    Scene rule: a 6 x 6 grid of blocks over a background class (wall, floor, sky or grass; the
    first two have distilled normals, the last two do not); 30 % of the blocks hold a VOC object
    (its PASCAL-Context id in the LabelMap, its VOC class in semseg). Image ``k`` shows, by
    ``k % 3``: 0 a person with 12 part masks (so human parts are labelled), 1 no person (human
    parts all-ignore), 2 a person whose annotation has no parts (all-ignore too). A one-pixel band
    around every object is 255 (ignore) in semseg. Saliency is 230 on objects and persons and 20
    elsewhere; normals are a class-specific unit vector encoded as round((n + 1) 127.5).
    """
    from PIL import Image

    root = Path(root)
    dirs = ("ImageSets/Context", "JPEGImages", "semseg/pascal-context", "human_parts",
            "pascal-context/trainval", "normals_distill", "sal_distill")
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    directions = _unit(np.random.default_rng(4243), 460)
    voc_palette = np.array([dense_class_colour(c, len(VOC_CLASSES)) for c in range(len(VOC_CLASSES))])
    png_palette = (np.arange(256 * 3) % 256).astype(np.uint8).tolist()
    ids = [f"{2008 + k % 3}_{k + 1:06d}" for k in range(n_train + n_val)]
    for k, i in enumerate(ids):
        hw = PASCAL_TINY_SIZES[k % len(PASCAL_TINY_SIZES)]
        voc = np.where(rng.random((6, 6)) < 0.3, rng.integers(1, len(VOC_CLASSES), size=(6, 6)), 0)
        voc[voc == PERSON_CLASS] = 9  # persons are placed explicitly below
        bg = _BACKGROUND[k % len(_BACKGROUND)]
        semseg = _blocks(voc, hw).astype(np.uint8)
        lab = np.where(semseg > 0, np.array(CONTEXT_OF_VOC)[semseg], bg).astype(np.int64)
        objects = [{"class": VOC_CLASSES[c], "class_ind": c, "mask": _blocks(voc == c, hw), "parts": []}
                   for c in np.unique(voc[voc > 0])]
        if k % 3 != 1:
            h, w = hw
            pmask, parts = _person(hw, h // 6, w // 3, h // 2, w // 4)
            semseg[pmask > 0], lab[pmask > 0] = PERSON_CLASS, CONTEXT_OF_VOC[PERSON_CLASS]
            objects.append({"class": "person", "class_ind": PERSON_CLASS, "mask": pmask,
                            "parts": parts if k % 3 == 0 else []})
        seg_png = semseg.copy()
        seg_png[_boundaries(semseg) & (semseg > 0)] = 255
        bright = _blocks(rng.uniform(0.5, 1.0, size=(6, 6)), hw)[..., None]
        colour = np.where((semseg > 0)[..., None], voc_palette[semseg], 0.35 + 0.1 * (bg % 3))
        image = colour * bright + rng.normal(0.0, 0.02, size=(*hw, 3))
        normals = np.round((directions[lab] + 1.0) * 127.5).astype(np.uint8)
        sal = np.where(semseg > 0, 230, 20).astype(np.uint8)
        _save_jpeg(root / "JPEGImages" / f"{i}.jpg", image)
        png = Image.fromarray(seg_png, "P")
        png.putpalette(png_palette)
        png.save(root / "semseg" / "pascal-context" / f"{i}.png")
        write_part_annotation(root / "human_parts" / f"{i}.mat", i, objects)
        write_label_map(root / "pascal-context" / "trainval" / f"{i}.mat", lab)
        Image.fromarray(normals, "RGB").save(root / "normals_distill" / f"{i}.png")
        Image.fromarray(sal, "L").save(root / "sal_distill" / f"{i}.png")
    (root / "ImageSets" / "Context" / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (root / "ImageSets" / "Context" / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root

