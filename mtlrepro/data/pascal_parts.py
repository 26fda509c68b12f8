"""Human-part labels from PASCAL-Part annotations, as Vandenhende et al.'s PASCAL_MT loader builds them.

``PASCAL_MT/human_parts/<id>.mat`` holds the PASCAL-Part annotation of an image (Chen et al.,
CVPR 2014) as ``scipy.io.loadmat`` reads it: a struct ``anno`` with fields ``imname`` and
``objects``; ``objects`` is a 1 x K struct array with fields ``class`` (name), ``class_ind``
(VOC index, 1 x 1), ``mask`` (H x W instance mask) and ``parts`` (1 x P struct array with
fields ``part_name`` and ``mask``, or empty when the object has no part annotation). The repo
(``data/pascal_context.py``) indexes these fields by position -- ``anno[0][0][1][0]`` are the
objects, ``obj[1]`` the class index, ``obj[2]`` the mask, ``obj[3]`` the parts, ``part[0][0]``
the part name and ``part[1]`` its mask -- and so does :func:`human_parts_from_mat`.

The rule (``PASCALContext._preprocess_parts`` / ``_load_human_parts`` with ``num_human_parts=6``
and ``area_thres=0``):

1. an image *has human parts* iff one of its objects has ``class_ind`` 15 (person) and a mask
   area above ``area_thres`` (0);
2. if it has, the target starts as zeros (0 = background) and, for every person object with a
   non-empty ``parts`` array, in object order then part order, each part's mask pixels are set
   to its class in :data:`PERSON_PARTS_6` (a later part overwrites an earlier one);
3. otherwise the target is all zeros.

After resizing, ``AddIgnoreRegions`` turns a target that is **all zeros** into all-ignore (255):
images without a person, and images whose persons carry no part masks, are ignored for this task
(the reader applies that rule at the training resolution, :mod:`mtlrepro.data.pascal_mt`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlrepro.data.errors import DataError

__all__ = ["PERSON_CLASS", "HUMAN_PART_CLASSES", "PERSON_PARTS_6", "human_parts_from_mat"]

#: VOC class index of "person" (the repo's ``human_parts_category``).
PERSON_CLASS = 15
#: The 7 human-part classes in label order (the repo's ``evaluation/eval_human_parts.py``).
HUMAN_PART_CLASSES: tuple[str, ...] = ("background", "head", "torso", "uarm", "larm", "uleg", "lleg")
#: PASCAL-Part person part name -> human-part class (the repo's ``HUMAN_PART[6]``).
PERSON_PARTS_6: dict[str, int] = {
    **dict.fromkeys(("hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow",
                     "reye"), 1),
    **dict.fromkeys(("neck", "torso"), 2),
    **dict.fromkeys(("luarm", "ruarm"), 3),
    **dict.fromkeys(("lhand", "llarm", "rhand", "rlarm"), 4),
    **dict.fromkeys(("luleg", "ruleg"), 5),
    **dict.fromkeys(("lfoot", "llleg", "rfoot", "rlleg"), 6),
}

_LAYOUT = ("a PASCAL-Part annotation: struct 'anno' (fields imname, objects), objects a 1 x K "
           "struct array with fields class, class_ind (1 x 1), mask (H x W), parts (1 x P struct "
           "array with fields part_name, mask; or empty)")


#: The struct fields read, by position as the repo reads them (names as PASCAL-Part writes them).
ANNO_FIELDS: tuple[str, ...] = ("imname", "objects")
OBJECT_FIELDS: tuple[str, ...] = ("class", "class_ind", "mask", "parts")


def _check_fields(arr, want: tuple[str, ...], what: str, path: Path) -> None:
    """A struct array written with field names (``scipy.io.loadmat``'s record arrays) must have
    ``want`` in that order at the positions the repo indexes."""
    names = getattr(getattr(arr, "dtype", None), "names", None)
    if names is None:
        return  # not a record array: the positional reads below report it
    names = tuple(names)
    missing = [f for f in want if f not in names]
    if missing:
        raise DataError(f"{path}: the struct {what} has fields {', '.join(names) or 'none'}; missing "
                        f"{', '.join(missing)}. Expected {_LAYOUT}.", path)
    if names[:len(want)] != want:
        raise DataError(f"{path}: the struct {what} has fields {', '.join(names)}; expected "
                        f"{', '.join(want)} first, in that order (they are read by position). "
                        f"Expected {_LAYOUT}.", path)


def _objects(mat: dict, path: Path) -> np.ndarray:
    if "anno" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path} is not a PASCAL-Part annotation: it has no variable 'anno' (it holds "
                        f"{keys}). Expected {_LAYOUT}.", path)
    try:
        anno = mat["anno"]
        _check_fields(anno, ANNO_FIELDS, "'anno'", path)
        objects = anno[0][0][1][0]
        _check_fields(objects, OBJECT_FIELDS, "'objects'", path)
        for obj in objects:
            _ = obj[1], obj[2], obj[3]
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not {_LAYOUT} ({type(e).__name__}: {e}).", path) from e
    return objects


def _class_ind(obj, path: Path) -> int:
    try:
        return int(np.asarray(obj[1]).reshape(-1)[0])
    except (IndexError, TypeError, ValueError) as e:
        raise DataError(f"{path}: an object's class_ind is {obj[1]!r}; expected {_LAYOUT}.", path) from e


def _mask(m, path: Path, hw: tuple[int, int], what: str) -> np.ndarray:
    m = np.asarray(m)
    if m.shape != tuple(hw):
        raise DataError(f"{path}: {what} has shape {m.shape}, expected {tuple(hw)} (the image's "
                        "height x width).", path)
    return m


def human_parts_from_mat(mat: dict, path: Path, hw: tuple[int, int],
                         area_threshold: float = 0.0) -> tuple[np.ndarray, bool]:
    """(H x W uint8 target in 0..6, whether the image has human parts) -- rules 1-3 above."""
    objects = _objects(mat, path)
    persons = [o for o in objects if _class_ind(o, path) == PERSON_CLASS]
    has_person = any(float(np.sum(_mask(o[2], path, hw, "a person's mask"))) > area_threshold
                     for o in persons)
    target = np.zeros(hw, dtype=np.uint8)
    if not has_person:
        return target, False
    for obj in persons:
        if len(obj[3]) == 0:
            continue
        try:
            parts = obj[3][0]
            named = [(str(p[0][0]), p[1]) for p in parts]
        except (IndexError, TypeError, ValueError) as e:
            raise DataError(f"{path}: a person's parts do not read as {_LAYOUT} "
                            f"({type(e).__name__}: {e}).", path) from e
        for name, pmask in named:
            if name not in PERSON_PARTS_6:
                raise DataError(f"{path}: person part {name!r} is not a PASCAL-Part person part; "
                                f"expected one of {', '.join(sorted(PERSON_PARTS_6))}.", path)
            target[_mask(pmask, path, hw, f"the mask of part {name!r}").astype(bool)] = PERSON_PARTS_6[name]
    return target, True

