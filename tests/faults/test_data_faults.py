"""Stale or wrong data is never served, and every malformed dataset input is one clear error.

Each case builds a tiny dataset in the real on-disk format under ``tmp_path`` (the generators of
:mod:`mtlrepro.data.generate` / :mod:`mtlrepro.data.generate_vandenhende`), sets up one fault, and
runs the CLI in-process (full profile, ``--data-root``) or the loader, then checks the exit code or
exception, that no traceback was printed, what the message names, and that nothing was cached or
stored. Results and caches live under ``tmp_path`` (``MTLREPRO_RESULTS``, ``MTLREPRO_CACHE``).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

import mtlrepro.store as store_mod
from mtlrepro.cli.main import main
from mtlrepro.data import cache as cache_mod
from mtlrepro.data.celeba import CELEBA_ATTRIBUTES, find_celeba, load_celeba
from mtlrepro.data.cityscapes import load_cityscapes
from mtlrepro.data.errors import DataError
from mtlrepro.data.generate import generate_celeba, generate_cityscapes, generate_nyuv2
from mtlrepro.data.generate_vandenhende import generate_nyud_mt, generate_pascal_mt
from mtlrepro.data.nyud_mt import load_nyud_mt
from mtlrepro.data.nyuv2 import load_nyuv2
from mtlrepro.data.pascal_mt import load_pascal_mt
from mtlrepro.problems import paths
from mtlrepro.train.faults import EnvironmentFault

CELEBA_RECIPE = "etr_nlp/table4/hard_sharing_g8"
NYUV2_RECIPE = "etr_nlp/table5/hard_sharing"
N_TRAIN, N_VAL, N_TEST = 6, 2, 2


# ----------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    """Results and caches under tmp_path; no --allow-subset, no MTLREPRO_DATA."""
    results = tmp_path / "results"
    monkeypatch.setenv("MTLREPRO_RESULTS", str(results))
    monkeypatch.setattr(store_mod, "RESULTS_DIR", results)
    monkeypatch.setenv("MTLREPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MTLREPRO_DATA", raising=False)
    return tmp_path


def stored(env: Path) -> list[Path]:
    results = env / "results"
    return sorted(p for p in results.rglob("*") if p.is_file()) if results.exists() else []


def cached(folder: Path) -> list[Path]:
    """Cache files (and temp files) anywhere under ``folder``."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix in (".pt", ".json", ".tmp")))


def cli(capsys, argv: list[str]) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def celeba_root(tmp_path: Path) -> Path:
    return generate_celeba(tmp_path / "celeba_data", N_TRAIN, N_VAL, N_TEST)


def load_c(root: Path, cache: Path, **kw):
    kw.setdefault("expect", "any")
    return load_celeba(root, "train", size=16, cache_dir=cache, progress=False, **kw)


# ----------------------------------------------------------------------------- CelebA cache


def test_celeba_jpegs_replaced_rebuild_the_cache(tmp_path, capsys):
    root, cache = celeba_root(tmp_path), tmp_path / "c"
    old = load_c(root, cache).images.clone()
    img_dir = find_celeba(root).image_dir
    for f in sorted(img_dir.glob("*.jpg")):        # every JPEG replaced by its negative
        with Image.open(f) as im:
            neg = 255 - np.asarray(im.convert("RGB"))
        Image.fromarray(neg.astype(np.uint8)).save(f, "JPEG", quality=90)
    capsys.readouterr()
    new = load_c(root, cache)
    err = capsys.readouterr().err
    assert "rebuilding cache" in err and "source data changed" in err and "images." in err
    fresh = load_c(root, tmp_path / "never_stale")  # built from the new files only
    assert torch.equal(new.images, fresh.images) and not torch.equal(new.images, old)
    # resizing is linear, so the served images are (up to JPEG error) the negatives of the old ones
    assert abs(float(new.images.float().mean()) - (255 - float(old.float().mean()))) < 3


def test_celeba_jpeg_rewritten_with_same_size_and_mtime_is_caught_by_content(tmp_path, capsys):
    root, cache = celeba_root(tmp_path), tmp_path / "c"
    load_c(root, cache)
    f = sorted(find_celeba(root).image_dir.glob("*.jpg"))[3]
    st = f.stat()
    raw = bytearray(f.read_bytes())
    assert raw[6:11] == b"JFIF\0"                  # PIL writes a JFIF APP0 segment
    raw[14:16] = (int.from_bytes(raw[14:16], "big") + 7).to_bytes(2, "big")   # X density: pixels unchanged
    f.write_bytes(bytes(raw))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    capsys.readouterr()
    r = load_c(root, cache)
    err = capsys.readouterr().err
    assert "rebuilding cache" in err and "images.sample_sha256" in err
    assert r.cache_sha256 == cache_mod.sha256_file(r.cache_path)


def test_celeba_emptied_jpegs_are_one_clear_error_and_the_old_cache_is_not_served(env, capsys):
    root = celeba_root(env)
    cache_dir = paths.cache_dir_override(root, "celeba")
    load_c(root, cache_dir)                         # a valid cache of the intact files
    before = {p: p.read_bytes() for p in cached(cache_dir)}
    img_dir = find_celeba(root).image_dir
    for f in img_dir.glob("*.jpg"):
        f.write_bytes(b"")
    rc, err = cli(capsys, ["run", CELEBA_RECIPE, "--profile", "full", "--data-root", str(root), "--seeds", "0"])
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("mtlrepro run: ") and f"{N_TRAIN + N_VAL + N_TEST} of the {N_TRAIN + N_VAL + N_TEST} JPEGs" in line
    assert str(img_dir) in line and "empty (0 bytes)" in line and "re-extract" in line
    assert stored(env) == [] and {p: p.read_bytes() for p in cached(cache_dir)} == before
    with pytest.raises(DataError, match="empty"):   # and the API never falls back to that cache
        load_c(root, cache_dir)


def test_partition_that_omits_images_is_refused_by_the_full_profile_naming_the_flag(env, capsys):
    root = celeba_root(env)
    part = find_celeba(root).partition_file
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:-3]) + "\n")  # the last 3 test images in no split
    rc, err = cli(capsys, ["run", CELEBA_RECIPE, "--profile", "full", "--data-root", str(root), "--seeds", "0"])
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert str(part) in line and "--allow-subset" in line
    # 10 lines (6 train, 2 val, 2 test) less the last 3 (one val, two test), counted by hand
    assert "gives split sizes train 6 / val 1 / test 0 (total 7)" in line
    assert "3 image(s) of the attribute file are in no split" in line
    assert "e.g. 000008.jpg, 000009.jpg, 000010.jpg" in line
    assert "expected train 162770 / val 19867 / test 19962" in line
    assert stored(env) == [] and not list((env / "cache").rglob("*.pt"))


def test_allow_subset_reaches_the_loaders_and_the_record_names_the_data(env, capsys, monkeypatch):
    from mtlrepro.problems.celeba import build_celeba_problem
    from mtlrepro.recipe import get_recipe

    root = celeba_root(env)
    recipe = get_recipe(CELEBA_RECIPE).with_overrides(image_size=16)
    with pytest.raises(DataError, match="--allow-subset"):
        build_celeba_problem(recipe, "full", str(root), torch.device("cpu"))
    p = build_celeba_problem(recipe, "subset", str(root), torch.device("cpu"))   # what --allow-subset runs
    assert p.data_info["n_train"] == N_TRAIN and p.data_info["subset"] is True
    assert "--allow-subset: CelebA train 6 (official 162770)" in capsys.readouterr().err
    data = cache_mod.cache_paths(paths.cache_dir_override(root, "celeba"), "celeba_16_square")[0]
    want = hashlib.sha256(data.read_bytes()).hexdigest()            # independent of the manifest
    assert p.data_info["cache_sha256"] == {"train": want, "eval": want}
    q = build_celeba_problem(recipe, "full", str(root), torch.device("cpu"), expect="any")  # the API spelling
    assert q.data_info["source_sha256"] == p.data_info["source_sha256"]
    assert len(q.data_info["source_sha256"]["train"]) == 64


def test_a_source_changing_during_the_build_caches_nothing(tmp_path, monkeypatch):
    import mtlrepro.data.celeba as celeba_mod

    root, cache = celeba_root(tmp_path), tmp_path / "c"
    real = celeba_mod._decode_all
    victim = sorted(find_celeba(root).image_dir.glob("*.jpg"))[0]

    def decode_then_copy_more(*a, **k):
        out = real(*a, **k)
        with open(victim, "ab") as f:               # the copy is still being written
            f.write(b"\0" * 10)
        return out

    monkeypatch.setattr(celeba_mod, "_decode_all", decode_then_copy_more)
    with pytest.raises(DataError, match="changed while the cache .* was being built") as e:
        load_c(root, cache)
    assert str(root) in str(e.value) and "images." in str(e.value)
    assert cached(cache) == []


def test_a_full_disk_while_writing_the_cache_is_an_environment_fault(env, capsys, monkeypatch):
    root = celeba_root(env)

    def full_disk(obj, f, *a, **k):                 # what torch.save raises when the disk fills
        raise RuntimeError("[enforce fail at inline_container.cc:595] . unexpected pos 1234 vs 5678\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(cache_mod.torch, "save", full_disk)
    rc, err = cli(capsys, ["run", CELEBA_RECIPE, "--profile", "subset", "--data-root", str(root), "--seeds", "0"])
    assert rc == 3
    assert "cannot write the cache" in err and "celeba_64_square.pt" in err and "disk full" in err
    assert stored(env) == [] and cached(env / "cache") == []


def test_a_stale_generated_tiny_set_is_made_again(env, capsys, monkeypatch):
    calls = []

    def gen(root, n=1, seed=0):
        calls.append(n)
        Path(root).mkdir(parents=True)
        (Path(root) / "data.txt").write_text(f"{n}\n")

    this = sys.modules[__name__]
    monkeypatch.setattr(this, "GENERATOR_VERSION", 1, raising=False)
    root = paths.ensure_tiny("demo", gen, n=1)
    assert paths.ensure_tiny("demo", gen, n=1) == root and calls == [1]     # reused
    monkeypatch.setattr(this, "GENERATOR_VERSION", 2)
    paths.ensure_tiny("demo", gen, n=1)
    assert calls == [1, 1] and "regenerating the tiny demo data" in capsys.readouterr().err
    paths.ensure_tiny("demo", gen, n=2)                                      # other arguments
    assert calls == [1, 1, 2] and (root / "data.txt").read_text() == "2\n"
    assert sorted(p.name for p in root.parent.iterdir()) == ["demo"]         # no temp folders left


# ----------------------------------------------------------------------------- torchvision's CelebA


def test_torchvision_opens_the_generated_celeba_and_reads_what_we_read(tmp_path, monkeypatch):
    import torchvision.datasets.celeba as tv_celeba

    root = celeba_root(tmp_path)
    # torchvision md5-checks each text file against the official release; generated files can only
    # be checked for presence (which is what the check is left to do here)
    monkeypatch.setattr(tv_celeba, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    ds = tv_celeba.CelebA(str(root), split="train", target_type="attr", download=False)
    ours = load_celeba(root, "train", size=16, cache_dir=tmp_path / "c", expect="any", progress=False)
    assert len(ds) == len(ours) == N_TRAIN and ds.filename == ours.filenames
    assert list(ds.attr_names[:40]) == list(CELEBA_ATTRIBUTES)
    assert torch.equal(ds.attr.to(torch.uint8), ours.labels)          # two independent readers agree
    img, attr = ds[0]
    assert img.size == (178, 218) and torch.equal(attr.to(torch.uint8), ours.labels[0])
    full = tv_celeba.CelebA(str(root), split="all", target_type=["identity", "bbox", "landmarks"])
    ident, bbox, marks = full[N_TRAIN + N_VAL + N_TEST - 1][1]
    assert len(full) == N_TRAIN + N_VAL + N_TEST and bbox.shape == (4,) and marks.shape == (10,)
    assert 1 <= int(ident) <= 10177 and (marks[0::2] < 178).all() and (marks[1::2] < 218).all()
    val = tv_celeba.CelebA(str(root), split="valid")
    assert len(val) == N_VAL


# ----------------------------------------------------------------------------- NYUv2 / Cityscapes values


def _nyuv2(tmp_path: Path) -> Path:
    return generate_nyuv2(tmp_path / "nyuv2_data", n_train=3, n_val=2)


def test_nyuv2_normals_stored_as_half_n_plus_half_fail_in_the_full_profile(env, capsys, monkeypatch):
    root = _nyuv2(env)
    for f in sorted((root / "train" / "normal").glob("*.npy")):
        n = np.load(f)
        np.save(f, (n + 1.0) / 2.0)                  # the PNG-style encoding, in [0, 1]
    rc, err = cli(capsys, ["run", NYUV2_RECIPE, "--profile", "subset", "--data-root", str(root), "--seeds", "0"])   # 3 / 2 samples: only the values are at fault
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert str(root / "train" / "normal") in line and "(n + 1) / 2" in line and "unit" in line
    assert stored(env) == [] and not list((env / "cache").rglob("*.pt"))


def test_nyuv2_normals_only_shifted_to_positive_fail_over_the_split(tmp_path):
    """Unit length kept, but no component negative anywhere: caught by the split-level sign check."""
    root = _nyuv2(tmp_path)
    for f in sorted((root / "train" / "normal").glob("*.npy")):
        n = np.abs(np.load(f))
        np.save(f, n)
    with pytest.raises(DataError, match=r"no normal in the 3 file\(s\) .* negative component") as e:
        load_nyuv2(root, "train", tmp_path / "c", "any", progress=False)
    assert "(n + 1) / 2" in str(e.value) and cached(tmp_path / "c") == []


def test_nyuv2_depth_in_millimetres_fails(tmp_path):
    root = _nyuv2(tmp_path)
    f = root / "val" / "depth" / "1.npy"
    np.save(f, np.load(f) * 1000.0)
    with pytest.raises(DataError) as e:
        load_nyuv2(root, "val", tmp_path / "c", "any", progress=False)
    msg = str(e.value)
    assert str(f) in msg and "median depth" in msg and "millimetres" in msg and "at most 20" in msg
    assert cached(tmp_path / "c") == []


def test_cityscapes_depth_in_metres_fails(tmp_path):
    root = generate_cityscapes(tmp_path / "cs", n_train=2, n_val=1)
    f = root / "train" / "depth" / "0.npy"
    d = np.load(f)
    np.save(f, np.where(d > 0, 1.0 / np.maximum(d, 1e-3), 0.0).astype(np.float32))   # metres, not disparity
    with pytest.raises(DataError, match="inverse depth") as e:
        load_cityscapes(root, "train", tmp_path / "c", "any", progress=False)
    assert str(f) in str(e.value) and cached(tmp_path / "c") == []


def test_nyuv2_subset_message_names_the_flag(tmp_path):
    root = _nyuv2(tmp_path)
    with pytest.raises(DataError, match=r"pass --allow-subset \(the same as --profile subset\)") as e:
        load_nyuv2(root, "train", tmp_path / "c", progress=False)
    assert "holds 3 samples, expected 795" in str(e.value)


# ----------------------------------------------------------------------------- NYUD_MT malformed


@pytest.fixture(scope="module")
def _nyud_template(tmp_path_factory) -> Path:
    return generate_nyud_mt(tmp_path_factory.mktemp("nyud") / "NYUD_MT", n_train=2, n_val=1, seed=5)


@pytest.fixture
def nyud(_nyud_template, tmp_path) -> Path:
    dst = tmp_path / "NYUD_MT"
    shutil.copytree(_nyud_template, dst)
    return dst


def _nyud_fails(root: Path, path: Path, *needles: str, split: str = "train", **kw) -> str:
    with pytest.raises(DataError) as e:
        load_nyud_mt(root, split, cache_dir=root.parent / "c", expect=kw.pop("expect", "any"),
                     progress=False, **kw)
    msg = str(e.value)
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    assert cached(root.parent / "c") == []
    return msg


def _first(root: Path) -> str:
    return (root / "gt_sets" / "train.txt").read_text().split()[0]


def test_nyud_missing_split_file(nyud):
    f = nyud / "gt_sets" / "val.txt"
    f.unlink()
    _nyud_fails(nyud, f, "split file", "is missing", "gt_sets/train.txt, val.txt", split="val")


def test_nyud_id_listed_without_its_image_or_label(nyud):
    i = _first(nyud)
    (nyud / "segmentation" / f"{i}.png").unlink()
    _nyud_fails(nyud, nyud / "segmentation" / f"{i}.png", "is missing", "0 = unlabelled, 1..40")
    (nyud / "images" / f"{i}.jpg").unlink()
    _nyud_fails(nyud, nyud / "images" / f"{i}.jpg", "is missing", "480x640 RGB JPEG")


def test_nyud_wrong_image_size(nyud):
    f = nyud / "images" / f"{_first(nyud)}.jpg"
    Image.new("RGB", (320, 240), (90, 90, 90)).save(f, "JPEG")
    _nyud_fails(nyud, f, "is 320x240", "expected 640x480")


@pytest.mark.parametrize("folder,array,needle", [
    ("depth", np.ones((240, 320), np.float32), "has shape (240, 320), expected (480, 640)"),
    ("normals", np.ones((480, 640), np.float32), "has shape (480, 640), expected (480, 640, 3)"),
    ("normals", np.full((480, 640, 3), "x"), "has dtype <U1, expected numbers"),
    ("edge", np.zeros((3, 480, 640), np.float32), "has shape (3, 480, 640)"),
])
def test_nyud_npy_of_the_wrong_shape_or_dtype(nyud, folder, array, needle):
    f = nyud / folder / f"{_first(nyud)}.npy"
    np.save(f, array)
    _nyud_fails(nyud, f, needle)


@pytest.mark.parametrize("folder,ext,what", [("segmentation", ".png", "as a PNG"), ("images", ".jpg", "as an image")])
def test_nyud_corrupt_png_or_jpeg(nyud, folder, ext, what):
    f = nyud / folder / f"{_first(nyud)}{ext}"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])     # a truncated copy
    _nyud_fails(nyud, f, f"cannot decode {f} {what}")


def test_nyud_empty_file_is_refused_before_reading(nyud):
    f = nyud / "depth" / f"{_first(nyud)}.npy"
    f.write_bytes(b"")
    _nyud_fails(nyud, f, "is empty (0 bytes")


def test_nyud_normals_as_half_n_plus_half_and_depth_in_millimetres(nyud):
    i = _first(nyud)
    f = nyud / "normals" / f"{i}.npy"
    good = np.load(f)
    np.save(f, (good + 1.0) / 2.0)
    _nyud_fails(nyud, f, "(n + 1) / 2")
    np.save(f, good)
    d = nyud / "depth" / f"{i}.npy"
    np.save(d, np.load(d) * 1000.0)
    _nyud_fails(nyud, d, "millimetres", "median depth")


def test_nyud_split_sizes_name_the_flag(nyud):
    _nyud_fails(nyud, nyud / "gt_sets" / "train.txt", "lists 2 samples, expected 795", "--allow-subset",
                expect="full")


# ----------------------------------------------------------------------------- PASCAL_MT malformed


@pytest.fixture(scope="module")
def _pascal_template(tmp_path_factory) -> Path:
    return generate_pascal_mt(tmp_path_factory.mktemp("pascal") / "PASCAL_MT", n_train=2, n_val=1, seed=5)


@pytest.fixture
def pascal(_pascal_template, tmp_path) -> Path:
    dst = tmp_path / "PASCAL_MT"
    shutil.copytree(_pascal_template, dst)
    return dst


def _pascal_fails(root: Path, path: Path, *needles: str) -> str:
    with pytest.raises(DataError) as e:
        load_pascal_mt(root, "train", (32, 32), cache_dir=root.parent / "c", expect="any", progress=False)
    msg = str(e.value)
    assert str(path) in msg, msg
    for n in needles:
        assert n in msg, msg
    assert cached(root.parent / "c") == []
    return msg


def _pid(root: Path, k: int = 0) -> str:
    return (root / "ImageSets" / "Context" / "train.txt").read_text().split()[k]


def _hw(root: Path, i: str) -> tuple[int, int]:
    with Image.open(root / "JPEGImages" / f"{i}.jpg") as im:
        return im.size[1], im.size[0]


def test_pascal_human_parts_mat_missing_fields(pascal):
    i = _pid(pascal)
    f = pascal / "human_parts" / f"{i}.mat"
    anno = np.zeros((1, 1), dtype=[("imname", "O")])
    anno[0, 0]["imname"] = i
    sio.savemat(str(f), {"anno": anno})
    _pascal_fails(pascal, f, "struct 'anno' has fields imname; missing objects", "PASCAL-Part annotation")
    objs = np.zeros((1, 1), dtype=[("class", "O"), ("class_ind", "O")])
    objs[0, 0]["class"], objs[0, 0]["class_ind"] = "person", np.array([[15.0]])
    anno = np.zeros((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0]["imname"], anno[0, 0]["objects"] = i, objs
    sio.savemat(str(f), {"anno": anno})
    _pascal_fails(pascal, f, "struct 'objects' has fields class, class_ind; missing mask, parts")
    sio.savemat(str(f), {"annotation": np.zeros(3)})
    _pascal_fails(pascal, f, "no variable 'anno'", "['annotation']")


@pytest.mark.parametrize("value,needle", [
    (lambda hw: np.zeros((*hw, 3), np.uint16), "a 2-D integer array"),
    (lambda hw: np.array(["wall"]), "has dtype <U4"),
    (lambda hw: np.full(hw, 2.5), "other than integer class ids"),
])
def test_pascal_label_map_that_is_not_a_2d_int_array(pascal, value, needle):
    i = _pid(pascal)
    f = pascal / "pascal-context" / "trainval" / f"{i}.mat"
    sio.savemat(str(f), {"LabelMap": value(_hw(pascal, i))})
    _pascal_fails(pascal, f, needle)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_pascal_normals_distill_not_rgb(pascal, mode):
    i = _pid(pascal)
    f = pascal / "normals_distill" / f"{i}.png"
    with Image.open(f) as im:
        im.convert(mode).save(f)
    _pascal_fails(pascal, f, "is not an RGB PNG", "channel(s)", "normal = 2 x / 255 - 1")


def test_pascal_normals_distill_that_is_no_normal_map(pascal):
    i = _pid(pascal)
    f = pascal / "normals_distill" / f"{i}.png"
    h, w = _hw(pascal, i)
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(f)        # black: (-1, -1, -1), length 1.73
    _pascal_fails(pascal, f, "median length on valid (non-zero) pixels is 1.73", "unit vectors")


def test_pascal_sal_distill_of_the_wrong_size_or_channels(pascal):
    i = _pid(pascal, 1)
    f = pascal / "sal_distill" / f"{i}.png"
    h, w = _hw(pascal, i)
    Image.fromarray(np.zeros((h // 2, w // 2), np.uint8)).save(f)
    _pascal_fails(pascal, f, f"has shape ({h // 2}, {w // 2}), expected ({h}, {w})", "one-channel PNG")
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(f)
    _pascal_fails(pascal, f, "one-channel (grey) PNG", "not 3 channels")


def test_pascal_split_sizes_name_the_flag(pascal):
    with pytest.raises(DataError, match=r"pass --allow-subset \(the same as --profile subset\)"):
        load_pascal_mt(pascal, "val", (32, 32), cache_dir=pascal.parent / "c", progress=False)


# ----------------------------------------------------------------------------- pretrained weights


def test_a_truncated_torchvision_checkpoint_is_refused(tmp_path, monkeypatch):
    import torchvision

    from mtlrepro.models import build_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.manual_seed(0)
    raw = tmp_path / "raw.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    ckpt = tmp_path / "hub" / "checkpoints" / f"resnet18-{digest[:8]}.pth"   # torchvision's naming
    ckpt.parent.mkdir(parents=True)
    raw.rename(ckpt)
    monkeypatch.setattr("mtlrepro.models.pretrained.weights_path", lambda name="resnet18", weights="x": ckpt)
    build_model("resnet18_dilated", "hard_sharing", [7, 1], pretrained="imagenet1k_v1")   # the whole file loads
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])                      # an interrupted copy
    with pytest.raises(DataError) as e:
        build_model("resnet18_dilated", "hard_sharing", [7, 1], pretrained="imagenet1k_v1")
    assert str(ckpt) in str(e.value) and "corrupt or not torchvision's file" in str(e.value)
    assert "delete it and fetch it again" in str(e.value)


# ----------------------------------------------------------------------------- the manifest


def test_every_cache_manifest_fingerprints_content_of_annotations(tmp_path):
    """The annotation files are fingerprinted by content hash, the per-sample files by stat + sample."""
    root = celeba_root(tmp_path)
    r = load_c(root, tmp_path / "c")
    m = json.loads(r.cache_path.with_suffix(".json").read_text())
    files = find_celeba(root)
    assert m["fingerprint"]["attr_file"]["sha256"] == hashlib.sha256(files.attr_file.read_bytes()).hexdigest()
    assert m["fingerprint"]["images"]["files"] == N_TRAIN + N_VAL + N_TEST
    assert m["fingerprint"]["images"]["sample"] == N_TRAIN + N_VAL + N_TEST   # all 10 are sampled
    assert m["sha256"] == r.cache_sha256 == hashlib.sha256(r.cache_path.read_bytes()).hexdigest()


def test_a_subset_run_is_stored_and_judged_apart_from_the_full_profile(env):
    """--allow-subset runs the subset profile: the record lands under runs/subset/, the full profile
    neither finds it nor judges with it, and the full profile refuses to store a run on a subset."""
    from mtlrepro.compare import compare_table
    from mtlrepro.errors import ConfigError
    from mtlrepro.problems.celeba import build_celeba_problem
    from mtlrepro.recipe import get_recipe
    from mtlrepro.store import find_run
    from mtlrepro.tables import get_table
    from mtlrepro.train.trainer import train_run

    root = celeba_root(env)
    recipe = get_recipe(CELEBA_RECIPE).with_overrides(image_size=16, epochs=1, batch_size=4)
    rec = train_run(recipe, 0, "subset", data_root=str(root), device="cpu", progress=False)
    assert rec.status == "finished" and rec.profile == "subset" and rec.data["subset"] is True
    assert [p.relative_to(env / "results" / "runs").parts[0] for p in (env / "results" / "runs").rglob("seed0.json")] \
        == ["subset"]
    assert find_run("subset", None, recipe.fingerprint, 0) is not None
    assert find_run("full", None, recipe.fingerprint, 0) is None
    table = get_table("etr_nlp/table4")
    assert not compare_table(table, "full").records()
    problem = build_celeba_problem(recipe, "full", str(root), torch.device("cpu"), expect="any")
    with pytest.raises(ConfigError, match="not the official splits"):
        train_run(recipe, 1, "full", device="cpu", progress=False, problem=problem)
    assert not (env / "results" / "runs" / "full").exists()


def test_a_stored_run_of_other_data_is_set_aside_and_planned_again(env, capsys):
    """The images change after a run was stored: the sweep's data check sets the record aside (kept,
    named) and plans the job again; the data back as they were, nothing is stale."""
    from mtlrepro.data_check import check_stored_data
    from mtlrepro.launch import plan_jobs, record_path
    from mtlrepro.recipe import get_recipe
    from mtlrepro.store import StaleRecordWarning
    from mtlrepro.train.trainer import train_run

    root = celeba_root(env)
    recipe = get_recipe(CELEBA_RECIPE).with_overrides(image_size=16, epochs=1, batch_size=4)
    rec = train_run(recipe, 0, "subset", data_root=str(root), device="cpu", progress=False)
    todo, done, _ = plan_jobs([recipe], "subset", [0], device="cpu")
    assert todo == [] and len(done) == 1
    calls = []

    def counted(r, profile, data_root):
        from mtlrepro.data_check import current_checksum
        calls.append(r.id)
        return current_checksum(r, profile, data_root)

    kept, stale = check_stored_data(done, "subset", str(root), lambda j: record_path(j, "cpu", None), counted)
    assert len(kept) == 1 and stale == [] and calls == [recipe.id]
    for f in sorted(find_celeba(root).image_dir.glob("*.jpg")):     # every image re-encoded, darker
        im = Image.open(f)
        Image.eval(im, lambda v: v // 2).save(f, quality=90)
    with pytest.warns(StaleRecordWarning, match=f"trained on data of checksum {rec.data['checksum'][:12]}") as w:
        kept, stale = check_stored_data(done, "subset", str(root), lambda j: record_path(j, "cpu", None))
    assert kept == [] and [j.name for j in stale] == [done[0][0].name]
    path = record_path(done[0][0], "cpu", None)
    aside = [p.name for p in path.parent.iterdir() if ".otherdata-" in p.name]
    assert not path.exists() and len(aside) == 1
    assert aside[0] in str(w[0].message) and "set aside and planned again" in capsys.readouterr().err
    todo, done, _ = plan_jobs([recipe], "subset", [0], device="cpu")
    assert [j.name for j in todo] == [stale[0].name] and done == []
