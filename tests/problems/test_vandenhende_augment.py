"""Vandenhende's flip + ScaleNRotate, batched on the device (mtlrepro/problems/vandenhende_augment.py).

Independent references: OpenCV's documented getRotationMatrix2D / warpAffine formulas written out
in numpy float64 (nearest: round the source position; cubic: Keys' kernel, a = -0.75, zero border),
torch.rot90, hand-derived pixel positions."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlrepro.problems import build_problem
from mtlrepro.problems.vandenhende_augment import (VandenhendeAugment, augment_for, draw, rotation_matrices)

from ..harness_utils import tiny_env  # noqa: F401 (fixture)
from .test_vandenhende import CPU, recipe


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _blank(h, w, b=1):
    return torch.zeros(b, 3, h, w, dtype=torch.uint8)


def test_flip_mirrors_every_map_and_negates_the_normals_x():
    h, w = 4, 6
    aug = VandenhendeAugment(["semseg_pascal", "depth", "normals"], [0.0], [1.0])
    img = torch.arange(3 * h * w, dtype=torch.uint8).view(1, 3, h, w)
    seg = (torch.arange(h * w) % 5).view(1, h, w).to(torch.int8)
    depth = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    n = torch.zeros(1, 3, h, w, dtype=torch.float16)
    n[:, 0, :, :3], n[:, 1], n[:, 2] = 0.6, 0.5, 0.8          # x = 0.6 on the left half only
    flips = 0
    for seed in range(16):
        out_img, (s, d, nn) = aug(img, [seg, depth, n], _gen(seed))
        if torch.equal(out_img, img):
            assert torch.equal(s, seg) and torch.equal(nn, n)
            continue
        flips += 1
        assert torch.equal(out_img[0, 0, 0], torch.tensor([5, 4, 3, 2, 1, 0], dtype=torch.uint8))
        assert torch.equal(s, seg.flip(-1)) and torch.equal(d, depth.flip(-1))
        assert torch.all(nn[0, 0, :, 3:] == -0.6) and torch.all(nn[0, 0, :, :3] == 0)   # mirrored, negated
        assert torch.all(nn[0, 1] == 0.5) and torch.all(nn[0, 2] == 0.8)
    assert 3 <= flips <= 13


def test_draws_follow_the_repo_formulas():
    g = _gen(1)
    r = draw((-20, 20), 4000, g, 0.0)
    s = draw((0.75, 1.25), 4000, g, 1.0)
    assert -20 <= r.min() < -19 and 19 < r.max() <= 20 and abs(r.mean()) < 1
    assert 0.75 <= s.min() < 0.76 and 1.24 < s.max() <= 1.25
    c = draw([1.0, 1.2, 1.5], 3000, g, 1.0)
    assert set(c.tolist()) == {1.0, 1.2, 1.5} and all(abs((c == v).double().mean() - 1 / 3) < 0.05 for v in (1.0, 1.2, 1.5))


def test_matrix_is_opencvs_get_rotation_matrix_2d():
    """OpenCV's documented matrix [[a, b, (1-a) cx - b cy], [-b, a, b cx + (1-a) cy]], a = s cos, b = s sin."""
    m = rotation_matrices(torch.tensor([90.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 2.0], dtype=torch.float64),
                          30, 40)
    np.testing.assert_allclose(m[0].numpy(), [[0, 1, 5], [-1, 0, 35]], atol=1e-12)    # cx = 20, cy = 15
    np.testing.assert_allclose(m[1].numpy(), [[2, 0, -20], [0, 2, -15]], atol=1e-12)


def test_rotation_by_90_at_scale_1_is_rot90_with_nearest_labels():
    h = w = 6
    seg = (torch.arange(h * w).view(1, h, w) % 7).to(torch.int8)
    aug = VandenhendeAugment(["semseg_pascal"], [90.0], [1.0], flip=False)
    _, (out,) = aug(_blank(h, w), [seg], _gen())
    # M = [[0, 1, 0], [-1, 0, 6]] about (w/2, h/2) = (3, 3) maps (x, y) -> (y, 6 - x), so
    # dst[i, j] = src[j, 6 - i] = rot90's out[i - 1, j] (rot90: out[i, j] = in[j, 5 - i]): rot90 moved
    # down one row (the centre is w/2, not (w-1)/2); row 0 comes from outside (border 0 = background)
    want = torch.rot90(seg, 1, dims=(1, 2))
    assert torch.equal(out[0, 1:], want[0, :-1]) and bool((out[0, 0] == 0).all())


def _reference_nearest(src: np.ndarray, m: np.ndarray, border: float) -> tuple[np.ndarray, np.ndarray]:
    """warpAffine INTER_NEAREST, BORDER_CONSTANT written out: dst(p) = src(round(M^-1 p)); also the
    distance of each source position to a rounding tie (to skip ties)."""
    h, w = src.shape
    full = np.vstack([m, [0, 0, 1]])
    inv = np.linalg.inv(full)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    ix, iy = np.floor(sx + 0.5).astype(int), np.floor(sy + 0.5).astype(int)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.full((h, w), border)
    out[inside] = src[iy[inside], ix[inside]]
    tie = np.minimum(np.abs(sx - np.floor(sx) - 0.5), np.abs(sy - np.floor(sy) - 0.5))
    return out, tie


def test_random_rotations_match_the_written_out_warp_affine():
    h, w = 12, 20
    rng = np.random.default_rng(0)
    seg = torch.from_numpy(rng.integers(-1, 21, (3, h, w))).to(torch.int8)
    aug = augment_for("pascal_mt", ["semseg"])
    aug.flip = False
    g = _gen(5)
    _, (out,) = aug(_blank(h, w, 3), [seg], g)
    g = _gen(5)
    angle, scale = draw(aug.rots, 3, g, 0.0), draw(aug.scales, 3, g, 1.0)
    m = rotation_matrices(angle, scale, h, w).numpy()
    for b in range(3):
        want, tie = _reference_nearest(seg[b].numpy().astype(float), m[b], 0.0)
        sure = tie > 1e-3
        assert sure.mean() > 0.9 and np.array_equal(out[b].numpy()[sure], want[sure])


def _keys(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def test_bicubic_image_matches_a_written_out_cubic_warp():
    h, w = 10, 14
    rng = np.random.default_rng(1)
    img = torch.from_numpy(rng.integers(0, 256, (1, 3, h, w))).to(torch.uint8)
    aug = VandenhendeAugment([], [17.0], [1.1], flip=False)
    out, _ = aug(img, [], _gen())
    m = np.vstack([rotation_matrices(torch.tensor([17.0], dtype=torch.float64),
                                     torch.tensor([1.1], dtype=torch.float64), h, w)[0].numpy(), [0, 0, 1]])
    inv = np.linalg.inv(m)
    src = np.pad(img[0].numpy().astype(float), ((0, 0), (2, 2), (2, 2)))   # constant border 0
    for y in range(h):
        for x in range(w):
            sx, sy = inv[0] @ [x, y, 1], inv[1] @ [x, y, 1]
            x0, y0 = math.floor(sx), math.floor(sy)
            val = np.zeros(3)
            for j in range(-1, 3):
                for i in range(-1, 3):
                    yy, xx = y0 + j + 2, x0 + i + 2
                    if 0 <= yy < h + 4 and 0 <= xx < w + 4:
                        val += _keys(sx - (x0 + i)) * _keys(sy - (y0 + j)) * src[:, yy, xx]
            want = np.clip(np.round(val), 0, 255)
            assert np.abs(out[0, :, y, x].numpy().astype(float) - want).max() <= 1


def test_a_flip_folded_into_the_warp_equals_flipping_first():
    """The repo flips (normals' x negated), then rotates/scales: the same as flip=False on the flipped input."""
    h, w, b = 12, 16, 6
    rng = np.random.default_rng(3)
    img = torch.from_numpy(rng.integers(0, 256, (b, 3, h, w))).to(torch.uint8)
    seg = torch.from_numpy(rng.integers(-1, 21, (b, h, w))).to(torch.int8)
    n = torch.randn(b, 3, h, w, dtype=torch.float64)
    n = (n / n.norm(dim=1, keepdim=True)).half()
    aug = augment_for("pascal_mt", ["semseg", "normals"])
    out_img, (out_seg, out_n) = aug(img, [seg, n], _gen(7))
    g = _gen(7)                                                   # replay the draws: flip, angle, scale
    f = torch.rand(b, generator=g) < 0.5
    angle, scale = draw(aug.rots, b, g, 0.0), draw(aug.scales, b, g, 1.0)
    assert 0 < int(f.sum()) < b
    for i in range(b):
        x, y, v = img[i:i + 1], seg[i:i + 1], n[i:i + 1].clone()
        if f[i]:
            x, y, v = x.flip(-1), y.flip(-1), v.flip(-1)
            v[:, 0] = -v[:, 0]
        one = VandenhendeAugment(["semseg_pascal", "normals"], [float(angle[i])], [float(scale[i])], flip=False)
        wx, (wy, wv) = one(x, [y, v], _gen())
        assert (out_img[i].int() - wx[0].int()).abs().max() <= 1 and torch.equal(out_seg[i], wy[0])
        assert torch.allclose(out_n[i].float(), wv[0].float(), atol=2e-3)


def test_zoom_maps_a_pixel_where_the_affine_formula_says_and_divides_depth():
    h = w = 16
    depth = torch.zeros(1, 1, h, w)
    depth[0, 0, 4, 4] = 3.0                                       # source pixel (x=4, y=4)
    aug = VandenhendeAugment(["depth"], [0.0], [2.0], flip=False)
    _, (out,) = aug(_blank(h, w), [depth], _gen())
    # x' = s x + (1 - s) cx = 2*4 - 8 = 0 (the same for y); the source of x' is x'/2 + 4:
    # x' = 0 -> 4 exactly, x' = 1 -> 4.5 (a rounding tie, not checked), x' = 2 -> 5
    assert out[0, 0, 0, 0] == pytest.approx(1.5)                  # depth 3 / scale 2
    assert out[0, 0, 2, 0] == 0 and out[0, 0, 0, 2] == 0 and out[0, 0, 2:, 2:].abs().sum() == 0


def test_borders_become_ignore_in_each_encoding():
    h = w = 16
    aug = augment_for("nyud_mt", ["semseg", "depth", "normals", "edge"])
    aug.rots, aug.scales, aug.flip = [0.0], [0.5], False            # zoom out: a border appears
    seg = torch.full((1, h, w), 3, dtype=torch.int8)
    n = torch.zeros(1, 3, h, w, dtype=torch.float16)
    n[:, 2] = 1
    edge = torch.ones(1, h, w, dtype=torch.uint8)
    img, (s, d, nn, e) = aug(torch.full((1, 3, h, w), 200, dtype=torch.uint8),
                             [seg, torch.ones(1, 1, h, w), n, edge], _gen())
    assert s[0, 0, 0] == -1 and s[0, 8, 8] == 3                  # NYUD semseg border: ignore
    assert d[0, 0, 0, 0] == 0 and d[0, 0, 8, 8] == pytest.approx(2.0)   # invalid depth; 1 / 0.5
    assert nn[0, :, 0, 0].abs().sum() == 0 and nn[0, 2, 8, 8] == pytest.approx(1.0, abs=1e-3)
    assert e[0, 0, 0] == 0 and e[0, 8, 8] == 1 and img[0, :, 0, 0].sum() == 0 and img[0, 0, 8, 8] == 200
    p = augment_for("pascal_mt", ["semseg", "human_parts", "saliency"])
    p.rots, p.scales, p.flip = [0.0], [0.5], False
    parts = torch.full((2, h, w), 2, dtype=torch.int8)
    parts[1] = -1                                                 # no person: all ignore
    _, (ps, hp, sal) = p(_blank(h, w, 2), [seg.repeat(2, 1, 1), parts, torch.ones(2, h, w, dtype=torch.uint8)], _gen())
    assert ps[0, 0, 0] == 0 and sal[0, 0, 0] == 0                 # PASCAL border = background (the repo's 0)
    assert hp[0, 0, 0] == 0 and hp[0, 8, 8] == 2 and bool((hp[1] == -1).all())


def test_human_parts_pushed_out_of_the_frame_become_ignore():
    h = w = 16
    parts = torch.zeros(1, h, w, dtype=torch.int8)
    parts[0, 0, 0] = 4                                            # only a corner pixel has a part
    aug = VandenhendeAugment(["human_parts"], [0.0], [1.5], flip=False)
    _, (out,) = aug(_blank(h, w), [parts], _gen())
    assert bool((out == -1).all())                                # AddIgnoreRegions after the warp


def test_nyud_settings_never_make_a_border():
    """No rotation and s in {1, 1.2, 1.5} about the centre: every source lies inside the image."""
    h, w = 15, 20
    aug = augment_for("nyud_mt", ["semseg", "depth"])
    seg = torch.full((16, h, w), 7, dtype=torch.int8)
    for seed in range(4):
        _, (s, d) = aug(_blank(h, w, 16), [seg, torch.ones(16, 1, h, w)], _gen(seed))
        assert bool((s == 7).all()) and bool((d > 0).all())
        per_sample = d.flatten(1)
        assert bool((per_sample == per_sample[:, :1]).all())        # one depth / scale per sample
        assert all(min(abs(v - 1 / s) for s in (1.0, 1.2, 1.5)) < 1e-6 for v in per_sample[:, 0].tolist())


def test_normals_rotate_in_plane_with_the_image():
    h = w = 16
    n = torch.zeros(1, 3, h, w, dtype=torch.float16)
    n[:, 1] = 1.0                                                 # (x, y) = (0, 1): phi = atan2(0, 1) = 0
    aug = VandenhendeAugment(["normals"], [30.0], [1.0], flip=False)
    _, (out,) = aug(_blank(h, w), [n], _gen())
    c = out[0, :, 8, 8].float()
    assert c[0] == pytest.approx(math.sin(math.radians(30)), abs=2e-3)   # r sin(phi + theta)
    assert c[1] == pytest.approx(math.cos(math.radians(30)), abs=2e-3)
    assert c[2] == pytest.approx(0.0, abs=1e-3)


def test_identity_draws_keep_samples_exactly_and_draws_are_deterministic():
    aug = augment_for("pascal_mt", ["semseg", "normals"])
    img = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (2, 3, 16, 16))).to(torch.uint8)
    n = torch.randn(2, 3, 16, 16)
    ts = [torch.zeros(2, 16, 16, dtype=torch.int8), (n / n.norm(dim=1, keepdim=True)).half()]
    a, b, c = aug(img, ts, _gen(3)), aug(img, ts, _gen(3)), aug(img, ts, _gen(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][1], b[1][1]) and not torch.equal(a[0], c[0])
    ident = VandenhendeAugment(["semseg_pascal", "normals"], [0.0], [1.0], flip=False)
    out, outs = ident(img, ts, _gen())
    assert torch.equal(out, img) and all(torch.equal(x, y) for x, y in zip(outs, ts))


@pytest.mark.parametrize("dataset,task_set", [("nyud_mt", "gated3_edge"), ("pascal_mt", "pascal5")])
def test_tiny_problem_augments_training_batches_only(tiny_env, dataset, task_set):
    plain = build_problem(recipe(dataset, task_set), "tiny", None, CPU)
    aug = build_problem(recipe(dataset, task_set, augment="vandenhende"), "tiny", None, CPU)
    assert plain.augment is None and aug.augment is not None
    assert "ScaleNRotate" in aug.data_info["augmentation"] and plain.data_info["augmentation"].startswith("none")
    xa, ya = next(aug.train_batches(4, 0, 0))
    xp, yp = next(plain.train_batches(4, 0, 0))
    assert xa.shape == xp.shape and xa.dtype == xp.dtype == torch.float32
    assert [y.shape for y in ya] == [y.shape for y in yp] and [y.dtype for y in ya] == [y.dtype for y in yp]
    assert not torch.equal(xa, xp)
    for (e1, t1), (e2, t2) in zip(aug.eval_batches(4), plain.eval_batches(4)):
        assert torch.equal(e1, e2) and all(torch.equal(a, b) for a, b in zip(t1, t2))
    with pytest.raises(ValueError, match="augment 'flip'"):
        build_problem(recipe(dataset, task_set, augment="flip"), "tiny", None, CPU)


def test_train_batches_seed_the_augmentation_by_seed_epoch_and_step(tiny_env):
    p = build_problem(recipe("pascal_mt", "pascal5", augment="vandenhende"), "tiny", None, CPU)
    seen: list[int] = []
    inner = p.augment

    def record(x, ys, g):
        seen.append(g.initial_seed())
        return inner(x, ys, g)

    p.augment = record
    runs = {}
    for seed, epoch in [(0, 0), (0, 1), (1, 0), (0, 0)]:
        seen.clear()
        xs = [x for x, _ in p.train_batches(2, epoch, seed)]
        runs.setdefault((seed, epoch), []).append((list(seen), xs))
    (s00, x00), (s00b, x00b) = runs[(0, 0)]
    assert s00 == s00b and all(torch.equal(a, b) for a, b in zip(x00, x00b))   # a resumed epoch: same batches
    assert len(set(s00)) == len(s00) > 1                                       # steps differ
    assert not set(s00) & set(runs[(0, 1)][0][0]) and not set(s00) & set(runs[(1, 0)][0][0])
