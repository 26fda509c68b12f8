"""Edges from a label map as Vandenhende's PASCAL loader derives them: OpenCV's Laplacian
(ksize 1, BORDER_REFLECT_101) and scikit-image's Guo-Hall thinning, checked by hand."""
from __future__ import annotations

import numpy as np

from mtlrepro.data.edges import edges_from_labels, guo_hall_luts, laplacian, thin


def test_laplacian_uses_the_4_neighbour_kernel_with_reflect_101_borders():
    a = np.zeros((3, 3))
    a[1, 1] = 1
    # centre: -4; its 4-neighbours: 1. Border pixel (0, 1): its 'up' neighbour is row 1 by
    # reflect-101, so it sees the centre twice: 2 (zero or replicate padding would give 1).
    assert laplacian(a).tolist() == [[0, 2, 0], [2, -4, 2], [0, 2, 0]]


def test_neighbours_that_cancel_give_no_edge():
    a = np.array([[0, 1, 2]] * 3, dtype=np.uint16)
    # centre column: 0 + 2 - 2 * 1 = 0 although both neighbours differ; borders reflect onto
    # column 1: column 0 -> 1 + 1 - 0 = 2, column 2 -> 1 + 1 - 4 = -2
    assert laplacian(a).tolist() == [[2, 0, -2]] * 3
    assert edges_from_labels(a)[:, 1].sum() == 0


def test_thin_matches_the_documented_example():
    # scikit-image's docstring example of ``thin``: a 5 x 3 block with a one-pixel tail
    square = np.zeros((7, 7), np.uint8)
    square[1:-1, 2:-2] = 1
    square[0, 1] = 1
    want = np.zeros((7, 7), np.uint8)
    want[0, 1], want[1, 2], want[2, 3], want[3, 3], want[4, 3] = 1, 1, 1, 1, 1
    assert np.array_equal(thin(square).astype(np.uint8), want)


def test_thin_keeps_lines_and_shrinks_a_two_pixel_band_to_one():
    line = np.zeros((5, 9), bool)
    line[2, 1:8] = True
    assert np.array_equal(thin(line), line)                  # already one pixel wide
    band = np.zeros((6, 9), bool)
    band[2:4, 1:8] = True
    out = thin(band)
    assert out.sum() < band.sum() and not (out & ~band).any()
    assert (out[2:4].sum(0)[2:7] == 1).all()                 # one pixel per column inside


def test_the_lut_conditions_by_hand():
    g1, g2 = guo_hall_luts()
    # bits: E 1, NE 2, N 4, NW 8, W 16, SW 32, S 64, SE 128
    assert not g1[0] and not g2[0]            # isolated pixel: X_H = 0
    assert not g1[255] and not g2[255]        # interior pixel: X_H = 0
    assert not g1[16] and not g2[16]          # end of a line (only W): min(N1, N2) = 1 fails G2
    # top row of a 2-pixel band (W, E, SW, S, SE = 241): X_H = 1, N1 = N2 = 3, G3 holds, G3' not
    assert g1[241] and not g2[241]
    # bottom row (W, E, NW, N, NE = 31): G3 fails, G3' holds -> deleted in the second sub-iteration
    assert not g1[31] and g2[31]


def test_edges_of_two_regions_form_a_thin_boundary():
    lab = np.full((6, 8), 5)
    lab[:, 4:] = 9
    edge = edges_from_labels(lab)
    assert edge[:, :3].sum() == 0 and edge[:, 5:].sum() == 0     # only at the boundary columns 3, 4
    # |Laplacian| > 0 marks the 2-pixel band of columns 3 and 4; thinning leaves one pixel per row
    # (the band's end row may be eroded, as Guo-Hall thinning shortens 2-pixel-wide ends)
    assert (edge.sum(1) <= 1).all() and edge.sum() >= 5
