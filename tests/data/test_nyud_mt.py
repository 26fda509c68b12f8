"""NYUD_MT (Vandenhende's format): ids, shapes, the label / depth / normal / edge conventions,
resizing, the cache, and errors that name the file."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlrepro.data import DataError
from mtlrepro.data.generate_vandenhende import generate_nyud_mt
from mtlrepro.data.nyud_mt import NYUD_CLASSES, NYUD_HW, load_nyud_mt

N_TRAIN, N_VAL = 3, 2


@pytest.fixture(scope="module")
def _template(tmp_path_factory) -> Path:
    return generate_nyud_mt(tmp_path_factory.mktemp("nyud") / "NYUD_MT", N_TRAIN, N_VAL, seed=3)


@pytest.fixture
def root(_template, tmp_path) -> Path:
    dst = tmp_path / "NYUD_MT"
    shutil.copytree(_template, dst)
    return dst


def load(root, split="train", **kw):
    kw.setdefault("expect", "any")
    kw.setdefault("progress", False)
    kw.setdefault("cache_dir", Path(root).parent / "cache")
    return load_nyud_mt(root, split, **kw)


def ids(root, split):
    return (root / "gt_sets" / f"{split}.txt").read_text().split()


def test_ids_shapes_and_dtypes_follow_the_split_files(root):
    for split, n in (("train", N_TRAIN), ("val", N_VAL)):
        d = load(root, split)
        assert d.ids == ids(root, split) and len(d) == n
        h, w = NYUD_HW
        assert d.images.shape == (n, 3, h, w) and d.images.dtype == torch.uint8
        t = d.targets
        assert (t["semseg"].shape, t["semseg"].dtype) == ((n, h, w), torch.int8)
        assert (t["depth"].shape, t["depth"].dtype) == ((n, 1, h, w), torch.float32)
        assert (t["normals"].shape, t["normals"].dtype) == ((n, 3, h, w), torch.float16)
        assert (t["edge"].shape, t["edge"].dtype) == ((n, h, w), torch.uint8)


def test_label_depth_normal_and_edge_conventions(root):
    d = load(root, "train")
    for k, i in enumerate(d.ids):
        png = np.array(Image.open(root / "segmentation" / f"{i}.png")).astype(np.int64)
        want = np.where(png == 0, -1, png - 1)                     # 0 -> ignore, 1..40 -> 0..39
        got = d.targets["semseg"][k].numpy()
        assert np.array_equal(got, want) and got.min() == -1 and got.max() <= len(NYUD_CLASSES) - 1
        depth = np.load(root / "depth" / f"{i}.npy")
        assert np.array_equal(d.targets["depth"][k, 0].numpy(), depth)   # metres; 0 stays 0
        assert (depth == 0).any()
        raw = np.load(root / "normals" / f"{i}.npy").astype(np.float64)
        got = d.targets["normals"][k].permute(1, 2, 0).numpy().astype(np.float64)
        zero = ~raw.any(-1)
        assert zero.any() and not got[zero].any()                  # invalid stays all-zero
        unit = raw[~zero] / np.linalg.norm(raw[~zero], axis=-1, keepdims=True)
        assert np.abs(got[~zero] - unit).max() < 1e-3              # float16 of the unit vector
        edge = np.load(root / "edge" / f"{i}.npy")
        assert np.array_equal(d.targets["edge"][k].numpy(), (edge >= 0.5).astype(np.uint8))
        img = np.array(Image.open(root / "images" / f"{i}.jpg").convert("RGB"))
        assert np.array_equal(d.images[k].permute(1, 2, 0).numpy(), img)


def test_depth_with_a_channel_axis_and_the_parent_folder_are_accepted(tmp_path):
    generate_nyud_mt(tmp_path / "NYUD_MT", 2, 1, seed=1, depth_channel=True)
    d = load_nyud_mt(tmp_path, "train", expect="any", progress=False, cache_dir=tmp_path / "c")
    assert d.root == tmp_path / "NYUD_MT"
    depth = np.load(tmp_path / "NYUD_MT" / "depth" / "0001.npy")
    assert depth.shape == (480, 640, 1) and np.array_equal(d.targets["depth"][0, 0].numpy(), depth[..., 0])


def test_a_smaller_size_resizes_labels_and_depth_by_nearest(root):
    full, small = load(root, "train"), load(root, "train", hw=(32, 48))
    rows, cols = np.arange(32) * 480 // 32, np.arange(48) * 640 // 48       # floor(i * in / out)
    for key in ("semseg", "edge"):
        assert torch.equal(small.targets[key], full.targets[key][:, rows][:, :, cols])
    assert torch.equal(small.targets["depth"], full.targets["depth"][:, :, rows][:, :, :, cols])
    n = small.targets["normals"].float()
    norm = torch.linalg.vector_norm(n, dim=1)
    assert ((norm - 1).abs() < 2e-3)[norm > 0].all()            # renormalised after the bicubic
    assert small.images.shape == (N_TRAIN, 3, 32, 48)


def test_the_cache_is_reused_and_rebuilt_when_a_file_changes(root, capfd):
    load(root, "train")
    assert "building cache" in capfd.readouterr().err
    load(root, "train")
    assert "cache" not in capfd.readouterr().err
    i = ids(root, "train")[0]
    d = np.load(root / "depth" / f"{i}.npy")
    np.save(root / "depth" / f"{i}.npy", d * 2)
    again = load(root, "train")
    assert "source data changed" in capfd.readouterr().err
    assert np.array_equal(again.targets["depth"][0, 0].numpy(), d * 2)


def _expect_error(root, match: str, path: Path, **kw):
    with pytest.raises(DataError, match=match) as e:
        load(root, "train", **kw)
    assert str(path) in str(e.value)
    assert not list((root.parent / "cache").glob("*.pt"))        # nothing cached from a failed read
    return e.value


def test_missing_files_and_wrong_counts_name_the_file(root):
    i = ids(root, "train")[1]
    (root / "images" / f"{i}.jpg").unlink()
    err = _expect_error(root, "is missing", root / "images" / f"{i}.jpg")
    assert err.path == root / "images" / f"{i}.jpg" and "480x640 RGB JPEG" in str(err)
    with pytest.raises(DataError, match="lists 2 samples, expected 654") as e:
        load(root, "val", expect="full")
    assert e.value.path == root / "gt_sets" / "val.txt"


def test_malformed_split_file(root):
    f = root / "gt_sets" / "train.txt"
    f.write_text("0001\n\n0002\n")
    _expect_error(root, "line 2", f)
    f.write_text("0001\n0001\n")
    _expect_error(root, "repeats line 1", f)


@pytest.mark.parametrize("what,edit,match", [
    ("depth", lambda a: a[:240], r"shape \(240, 640\), expected \(480, 640\)"),
    ("depth", lambda a: a - 1.0, "negative values"),
    ("normals", lambda a: a[..., :2], r"expected \(480, 640, 3\)"),
    ("normals", lambda a: a * 255, "components reach"),
    ("edge", lambda a: a - 1, "values from -1 to 0"),
])
def test_malformed_arrays_name_the_file_and_the_expectation(root, what, edit, match):
    i = ids(root, "train")[2]
    path = root / what / f"{i}.npy"
    np.save(path, edit(np.load(path)))
    _expect_error(root, match, path)


def test_malformed_images_and_labels(root):
    i = ids(root, "train")[0]
    seg = root / "segmentation" / f"{i}.png"
    a = np.array(Image.open(seg))
    a[0, 0] = 41
    Image.fromarray(a).save(seg)
    _expect_error(root, r"values \[41\] outside 0..40", seg)
    Image.fromarray(np.zeros((480, 640, 3), np.uint8)).save(seg)
    _expect_error(root, "expected", seg)
    img = root / "images" / f"{i}.jpg"
    Image.fromarray(np.zeros((240, 320, 3), np.uint8)).save(img)
    _expect_error(root, "is 320x240", img)
    img.write_bytes(b"not a jpeg")
    _expect_error(root, "cannot decode", img)
