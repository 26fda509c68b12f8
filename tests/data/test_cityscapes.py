"""Cityscapes in MTAN's .npy format: layouts, generator round trip, cache, validation messages.

The checks shared with NYUv2 (mtlrepro.data.mtan_npy) are exercised here on Cityscapes;
tests/data/test_nyuv2.py covers what differs (normals, the 13 classes, nested folders).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlrepro.data import DataError, mtan_npy
from mtlrepro.data.cityscapes import (CITYSCAPES, CITYSCAPES_CLASSES, CITYSCAPES_SPLIT_SIZES,
                                      load_cityscapes)
from mtlrepro.data.generate import dense_class_colour, generate_cityscapes

N_TRAIN, N_VAL = 6, 4
H, W = 128, 256


@pytest.fixture(scope="module")
def _templates(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for layout in ("plain", "low_res"):
        root = tmp_path_factory.mktemp(layout)
        generate_cityscapes(root, N_TRAIN, N_VAL, seed=1, layout=layout)
        out[layout] = root
    return out


@pytest.fixture
def root(_templates, tmp_path) -> Path:
    """A fresh copy of the plain-layout tiny Cityscapes (tests may corrupt it)."""
    dst = tmp_path / "data"
    shutil.copytree(_templates["plain"], dst)
    return dst


@pytest.fixture
def builds(monkeypatch) -> list[str]:
    """Records every cache build (split names), to tell a build from a reuse."""
    calls: list[str] = []
    real = mtan_npy._build

    def counting(spec, listing, workers, progress):
        calls.append(listing.split)
        return real(spec, listing, workers, progress)

    monkeypatch.setattr(mtan_npy, "_build", counting)
    return calls


def load(root, split="train", **kw):
    kw.setdefault("expect", "any")
    kw.setdefault("progress", False)
    return load_cityscapes(root, split, **kw)


def npy(root: Path, split: str, sub: str, i: int) -> np.ndarray:
    return np.load(root / split / sub / f"{i}.npy")


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("layout", ["plain", "low_res"])
def test_both_layouts_load_with_shapes_and_dtypes(_templates, tmp_path, layout):
    root = tmp_path / "d"
    shutil.copytree(_templates[layout], root)
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        d = load(root, split)
        assert d.layout == layout and d.base == (root / "low_res" if layout == "low_res" else root)
        assert len(d) == n and d.split == split and d.dataset == "cityscapes"
        assert d.images.shape == (n, 3, H, W) and d.images.dtype == torch.float16
        assert d.labels.shape == (n, H, W) and d.labels.dtype == torch.int8
        assert d.depth.shape == (n, 1, H, W) and d.depth.dtype == torch.float32
        assert d.normals is None
        assert d.class_names == CITYSCAPES_CLASSES and d.n_classes == 7
        assert d.source_dtypes == ["image:float32", "label_7:float32", "depth:float32"]


def test_round_trip_values_identical_to_the_npy_files(root):
    d = load(root, "val")
    for i in range(N_VAL):
        img = npy(root, "val", "image", i)
        cached = d.images[i].permute(1, 2, 0)
        # float16 keeps [0, 1] values to within 2^-12: exactly numpy's own float16 rounding
        assert torch.equal(cached, torch.from_numpy(img.astype(np.float16)))
        assert float((cached.float() - torch.from_numpy(img)).abs().max()) <= 2.0 ** -12
        assert torch.equal(d.labels[i], torch.from_numpy(npy(root, "val", "label_7", i)).to(torch.int8))
        assert torch.equal(d.depth[i], torch.from_numpy(npy(root, "val", "depth", i)).permute(2, 0, 1))


def test_generator_writes_mtan_format_with_ignore_and_invalid_pixels(root):
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        for sub in ("image", "label_7", "depth"):
            assert sorted(os.listdir(root / split / sub)) == sorted(f"{i}.npy" for i in range(n))
    img, lab, dep = (npy(root, "train", s, 0) for s in ("image", "label_7", "depth"))
    assert img.shape == (H, W, 3) and lab.shape == (H, W) and dep.shape == (H, W, 1)
    assert img.dtype == lab.dtype == dep.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    labels = np.concatenate([npy(root, "train", "label_7", i).ravel() for i in range(N_TRAIN)])
    depth = np.concatenate([npy(root, "train", "depth", i).ravel() for i in range(N_TRAIN)])
    assert set(np.unique(labels)) == {-1.0, 0, 1, 2, 3, 4, 5, 6}
    assert (depth == 0).mean() > 0.02 and depth.max() < 0.5  # invalid pixels, disparity-like range


def test_generated_targets_follow_the_image(root):
    """Labels are the block's hue, depth its brightness: a model can learn them."""
    img, lab, dep = (npy(root, "train", s, 1) for s in ("image", "label_7", "depth"))
    for y, x in [(8, 16), (40, 100), (100, 200)]:  # block centres, away from the noise-free borders
        c = int(lab[y, x])
        block = img[y - 4:y + 4, x - 4:x + 4].reshape(-1, 3).mean(0)
        if c >= 0:
            colour = np.array(dense_class_colour(c, 7))
            bright = block.max() / colour.max()
            assert np.allclose(block, colour * bright, atol=0.03)
            if dep[y, x, 0] > 0:
                assert dep[y, x, 0] == pytest.approx(0.02 + 0.45 * (1 - bright) / 0.55, abs=0.03)


def test_generator_is_deterministic(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    generate_cityscapes(a, 2, 1, seed=3)
    generate_cityscapes(b, 2, 1, seed=3)
    generate_cityscapes(c, 2, 1, seed=4)
    assert (a / "train/image/1.npy").read_bytes() == (b / "train/image/1.npy").read_bytes()
    assert (a / "train/image/1.npy").read_bytes() != (c / "train/image/1.npy").read_bytes()
    with pytest.raises(ValueError, match="layout"):
        generate_cityscapes(tmp_path / "d", 1, 1, layout="high_res")


def test_float64_files_are_accepted(tmp_path):
    generate_cityscapes(tmp_path, 2, 1, seed=0, dtype="float64")
    assert npy(tmp_path, "train", "depth", 0).dtype == np.float64
    d = load(tmp_path, "train")
    assert d.source_dtypes == ["image:float64", "label_7:float64", "depth:float64"]
    assert d.depth.dtype == torch.float32
    assert torch.equal(d.depth[1], torch.from_numpy(npy(tmp_path, "train", "depth", 1)).float().permute(2, 0, 1))


def test_data_root_holding_a_cityscapes_folder(_templates, tmp_path):
    shutil.copytree(_templates["low_res"], tmp_path / "cityscapes")
    d = load(tmp_path, "val")
    assert d.base == tmp_path / "cityscapes" / "low_res" and d.layout == "low_res"


# ----------------------------------------------------------------------------- cache


def test_cache_built_once_and_reused(root, builds):
    a = load(root, "train")
    b = load(root, "train")
    assert builds == ["train"]
    assert torch.equal(a.images, b.images) and a.cache_path == b.cache_path
    assert a.cache_path == root / ".mtlrepro_cache" / "cityscapes_train.pt"
    load(root, "val")
    assert builds == ["train", "val"]  # one cache file per split


def test_cache_rebuilt_when_a_source_file_changes(root, builds, capsys):
    load(root, "train")
    p = root / "train" / "depth" / "2.npy"
    new = np.full((H, W, 1), 0.25, np.float32)
    np.save(p, new)
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))  # even within one tick
    d = load(root, "train")
    assert builds == ["train", "train"]
    assert "source data changed" in capsys.readouterr().err
    assert torch.equal(d.depth[2], torch.full((1, H, W), 0.25))


def test_explicit_cache_dir(root, tmp_path):
    d = load(root, "val", cache_dir=tmp_path / "c")
    assert d.cache_path == tmp_path / "c" / "cityscapes_val.pt"
    assert (tmp_path / "c" / "cityscapes_val.json").is_file()


# ----------------------------------------------------------------------------- validation


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load(tmp_path / "nope")
    assert "<root>/train/label_7/0.npy ... 2974.npy" in str(e.value)
    with pytest.raises(DataError, match="has a train/ or val/ folder") as e:
        load(tmp_path)
    assert "Maximum Roaming's layout <root>/low_res" in str(e.value)
    generate_cityscapes(tmp_path / "d", 1, 1)
    with pytest.raises(DataError, match="looks like a split folder itself"):
        load(tmp_path / "d" / "train")


def test_missing_folder_is_named_with_the_layout(root):
    shutil.rmtree(root / "train" / "depth")
    with pytest.raises(DataError) as e:
        load(root, "train")
    msg = str(e.value)
    assert str(root / "train" / "depth") in msg and "inverse depth" in msg
    assert "holds image, label_7" in msg and "Expected MTAN's preprocessed Cityscapes" in msg
    assert e.value.path == root / "train" / "depth"
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match="the val split is missing"):
        load(root, "val")


def test_count_mismatch_between_subfolders(root):
    os.remove(root / "train" / "label_7" / f"{N_TRAIN - 1}.npy")
    with pytest.raises(DataError) as e:
        load(root, "train")
    msg = str(e.value)
    assert f"image/ {N_TRAIN}, label_7/ {N_TRAIN - 1}, depth/ {N_TRAIN}" in msg
    assert str(root / "train") in msg


def test_gap_in_the_indices_names_the_missing_file(root):
    os.remove(root / "val" / "image" / "1.npy")
    with pytest.raises(DataError) as e:
        load(root, "val")
    assert f"{root / 'val' / 'image' / '1.npy'} is missing" in str(e.value)


@pytest.mark.parametrize("name", ["01.npy", "a.npy", "._0.npy"])
def test_unexpected_file_names(root, name):
    shutil.copy(root / "val" / "depth" / "0.npy", root / "val" / "depth" / name)
    with pytest.raises(DataError, match="unexpected file name") as e:
        load(root, "val")
    assert name in str(e.value)


def test_wrong_counts_with_expect_full(root):
    with pytest.raises(DataError) as e:
        load(root, "train", expect="full")
    msg = str(e.value)
    assert f"holds {N_TRAIN} samples, expected 2975" in msg and str(root / "train") in msg
    assert "--allow-subset" in msg and "profile 'subset'" in msg and "<root>/val/image/0.npy ... 499.npy" in msg
    assert CITYSCAPES_SPLIT_SIZES == {"train": 2975, "val": 500}


@pytest.mark.parametrize("sub,arr,needle", [
    ("image", np.zeros((3, H, W), np.float32), "channels-first"),
    ("image", np.zeros((256, 512, 3), np.float32), "256x512 Cityscapes (cityscapes.zip)"),
    ("label_7", np.zeros((H, W, 1), np.float32), "expected (128, 256)"),
    ("depth", np.zeros((H, W), np.float32), "expected (128, 256, 1)"),
    ("image", np.zeros((H, W, 3), np.uint8), "dtype uint8"),
    ("image", np.full((H, W, 3), 200.0, np.float32), "range from 200 to 200"),
    ("label_7", np.full((H, W), 18.0, np.float32), "outside {-1, 0, ..., 6}, e.g. 18"),
    ("label_7", np.full((H, W), 0.5, np.float32), "e.g. 0.5"),
    ("depth", np.full((H, W, 1), -1.0, np.float32), "negative"),
    ("depth", np.full((H, W, 1), np.nan, np.float32), "NaN or inf"),
])
def test_malformed_file_names_file_and_expectation(root, sub, arr, needle):
    p = root / "train" / sub / "3.npy"
    np.save(p, arr)
    with pytest.raises(DataError) as e:
        load(root, "train")
    msg = str(e.value)
    assert str(p) in msg and needle in msg
    assert CITYSCAPES.describe(sub) in msg
    assert e.value.path == p


def test_corrupt_file(root):
    p = root / "train" / "image" / "0.npy"
    p.write_bytes(b"not a numpy file")
    with pytest.raises(DataError, match="cannot read .* as a .npy file"):
        load(root, "train")
    p.write_bytes(np.lib.format.magic(1, 0) + b"garbage")
    with pytest.raises(DataError, match=str(p)):
        load(root, "train")


def test_truncated_file(root):
    p = root / "val" / "depth" / "0.npy"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"cannot load {p}"):
        load(root, "val")


def test_bad_arguments(root):
    with pytest.raises(ValueError, match="val is the test set"):
        load(root, "test")
    with pytest.raises(ValueError, match="expect"):
        load(root, "train", expect="most")
