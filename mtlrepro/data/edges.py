r"""Edge maps from a label map, as Vandenhende et al.'s PASCAL-Context loader derives them.

``data/pascal_context.py`` (``PASCALContext._load_edge``) of
``SimonVandenhende/Multi-Task-Learning-PyTorch`` (after ASTMT, Maninis et al. 2019) reads the
PASCAL-Context ``LabelMap`` of ``pascal-context/trainval/<id>.mat`` and computes

.. code-block:: text

    edge = thin(|cv2.Laplacian(LabelMap, cv2.CV_64F)| > 0)        # skimage.morphology.thin

at the image's own resolution, before any resizing. This module implements both steps in
numpy (no OpenCV / scikit-image dependency):

* :func:`laplacian` -- OpenCV's ``Laplacian`` with its defaults (``ksize=1``): the 4-neighbour
  kernel :math:`[[0, 1, 0], [1, -4, 1], [0, 1, 0]]` with OpenCV's default border
  ``BORDER_REFLECT_101`` (``gfedcb|abcdefgh|gfedcba``: the pixel beyond the border is the one
  *next to* the border pixel). Note that :math:`|\Delta L| > 0` is not "some neighbour differs":
  neighbours above and below the centre value by the same amount cancel.
* :func:`thin` -- scikit-image's ``thin`` (Guo & Hall, "Parallel thinning with two-subiteration
  algorithms", CACM 32(3), 1989): two sub-iterations per pass, each deleting the pixels whose
  8-neighbourhood code (east = bit 0, then counter-clockwise: NE, N, NW, W, SW, S, SE = bit 7;
  zero padding outside the image) satisfies conditions G1, G2 and G3 (first sub-iteration) or
  G3' (second), repeated until a pass deletes nothing. The lookup tables are generated from the
  conditions (:func:`guo_hall_luts`).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["laplacian", "thin", "guo_hall_luts", "edges_from_labels"]

#: neighbour offsets (dy, dx) of bits 0..7 (E, NE, N, NW, W, SW, S, SE); skimage's mask
#: [[8, 4, 2], [16, 0, 1], [32, 64, 128]] correlated with the image
_NEIGHBOURS: tuple[tuple[int, int], ...] = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1),
                                            (1, 0), (1, 1))


def laplacian(labels: np.ndarray) -> np.ndarray:
    """OpenCV's ``Laplacian(labels, CV_64F)`` (ksize 1, BORDER_REFLECT_101), float64."""
    a = np.asarray(labels, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"laplacian expects a 2-D label map, got shape {a.shape}")
    h, w = a.shape
    p = np.pad(a, 1, mode="reflect")  # numpy's "reflect" is OpenCV's BORDER_REFLECT_101
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4.0 * a


@lru_cache(maxsize=1)
def guo_hall_luts() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables (256 bools) of the two sub-iterations, indexed by the neighbourhood code.

    With :math:`x_1..x_8` the neighbours E, NE, N, NW, W, SW, S, SE (bits 0..7):

    * G1: :math:`X_H = 1`, the number of :math:`i \\in \\{1,3,5,7\\}` with
      :math:`\\bar x_i \\wedge (x_{i+1} \\vee x_{i+2})` (indices mod 8);
    * G2: :math:`2 \\le \\min(N_1, N_2) \\le 3`, :math:`N_1 = \\sum_k x_{2k-1} \\vee x_{2k}`,
      :math:`N_2 = \\sum_k x_{2k} \\vee x_{2k+1}`;
    * G3 (first sub-iteration): :math:`(x_2 \\vee x_3 \\vee \\bar x_8) \\wedge x_1 = 0`;
      G3' (second): :math:`(x_6 \\vee x_7 \\vee \\bar x_4) \\wedge x_5 = 0`.
    """
    codes = np.arange(256)
    bits = [((codes >> i) & 1).astype(bool) for i in range(8)]
    x_h = sum((~bits[i]) & (bits[i + 1] | bits[(i + 2) % 8]) for i in (0, 2, 4, 6))
    g1 = x_h == 1
    n1 = sum(bits[k] | bits[k - 1] for k in (1, 3, 5, 7))
    n2 = sum(bits[k] | bits[(k + 1) % 8] for k in (1, 3, 5, 7))
    g2 = np.isin(np.minimum(n1, n2), (2, 3))
    g3 = ~((bits[1] | bits[2] | ~bits[7]) & bits[0])
    g3p = ~((bits[5] | bits[6] | ~bits[3]) & bits[4])
    return g1 & g2 & g3, g1 & g2 & g3p


def _codes(skel: np.ndarray) -> np.ndarray:
    h, w = skel.shape
    p = np.pad(skel, 1).astype(np.uint8)
    code = np.zeros((h, w), dtype=np.uint8)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        code |= p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] << bit
    return code


def thin(image: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Morphological thinning of a binary image (scikit-image's ``thin``); returns bool."""
    skel = np.asarray(image).astype(bool)
    if skel.ndim != 2:
        raise ValueError(f"thin expects a 2-D image, got shape {skel.shape}")
    luts = guo_hall_luts()
    n_iter, before = 0, -1
    count = int(skel.sum())
    while count != before and (max_iter is None or n_iter < max_iter):
        before = count
        for lut in luts:
            skel[lut[_codes(skel)]] = False
        count = int(skel.sum())
        n_iter += 1
    return skel


def edges_from_labels(labels: np.ndarray) -> np.ndarray:
    """Vandenhende's PASCAL edge map: ``thin(|laplacian(labels)| > 0)`` as a bool array."""
    return thin(np.abs(laplacian(labels)) > 0)
