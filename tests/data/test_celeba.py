"""CelebA: layouts, parsing, task settings, cached tensors and the error messages."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mtlrepro.data import DataError, celeba
from mtlrepro.data.celeba import (CELEBA_ATTRIBUTES, CELEBA_SPLIT_SIZES, TaskDef, celeba_tasks,
                                  find_celeba, load_celeba, read_attributes, read_partition)
from mtlrepro.data.generate import celeba_cell_box, generate_celeba

N_TRAIN, N_VAL, N_TEST = 24, 8, 8


@pytest.fixture(scope="module")
def _templates(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for layout in ("torchvision", "official"):
        root = tmp_path_factory.mktemp(layout)
        generate_celeba(root, N_TRAIN, N_VAL, N_TEST, layout=layout, seed=1)
        out[layout] = root
    return out


@pytest.fixture
def tv_root(_templates, tmp_path) -> Path:
    """A fresh copy of the torchvision-layout tiny CelebA (tests may corrupt it)."""
    root = tmp_path / "data"
    shutil.copytree(_templates["torchvision"], root)
    return root


@pytest.fixture
def official_root(_templates, tmp_path) -> Path:
    root = tmp_path / "official"
    shutil.copytree(_templates["official"], root)
    return root


@pytest.fixture
def decode_calls(monkeypatch) -> list[str]:
    """Records every image decode, to tell a cache build from a reuse."""
    calls: list[str] = []
    real = celeba._decode_image

    def counting(path, size, mode):
        calls.append(path)
        return real(path, size, mode)

    monkeypatch.setattr(celeba, "_decode_image", counting)
    return calls


def load(root, split="train", **kw):
    kw.setdefault("expect", "any")
    kw.setdefault("progress", False)
    return load_celeba(root, split, **kw)


def parse_attr_independently(path: Path) -> dict[str, list[int]]:
    lines = path.read_text().splitlines()
    return {ln.split()[0]: [1 if v == "1" else 0 for v in ln.split()[1:]] for ln in lines[2:] if ln}


# ----------------------------------------------------------------------------- tasks

def test_task_settings():
    attr40 = celeba_tasks("attr40")
    assert [t.name for t in attr40] == list(CELEBA_ATTRIBUTES)
    assert all(t.attr_indices == (i,) for i, t in enumerate(attr40))
    group8 = celeba_tasks("group8")
    assert [t.name for t in group8] == ["global", "eyes", "hair", "mouth", "nose", "beard",
                                         "cheek", "wearings"]
    assert group8[1] == TaskDef("eyes", (3, 15, 23, 1, 12))
    assert sorted(i for t in group8 for i in t.attr_indices) == list(range(40))
    conal9 = celeba_tasks("conal9")
    assert [CELEBA_ATTRIBUTES[t.attr_indices[0]] for t in conal9] == [t.name for t in conal9]
    assert [t.attr_indices[0] for t in conal9] == [0, 8, 9, 11, 16, 22, 24, 29, 35]
    gated3 = {t.name: [CELEBA_ATTRIBUTES[i] for i in t.attr_indices] for t in celeba_tasks("gated3")}
    assert gated3["gender"] == ["Male"] and gated3["age"] == ["Young"]
    assert len(gated3["clothes"]) == 5
    with pytest.raises(KeyError) as e:
        celeba_tasks("group9")
    assert all(s in str(e.value) for s in ("attr40", "group8", "conal9", "gated3"))


# ----------------------------------------------------------------------------- layouts

def test_both_layouts_found(tv_root, official_root):
    f = find_celeba(tv_root)
    assert f.layout == "torchvision" and f.attr_file == tv_root / "celeba" / "list_attr_celeba.txt"
    g = find_celeba(tv_root / "celeba")  # the torchvision celeba/ folder itself
    assert g.layout == "torchvision" and g.image_dir == tv_root / "celeba" / "img_align_celeba"
    h = find_celeba(official_root)
    assert h.layout == "official" and h.partition_file == official_root / "Eval" / "list_eval_partition.txt"


@pytest.mark.parametrize("layout", ["torchvision", "official"])
def test_load_both_layouts_split_sizes_and_labels(tv_root, official_root, layout):
    root = tv_root if layout == "torchvision" else official_root
    files = find_celeba(root)
    truth = parse_attr_independently(files.attr_file)
    part = read_partition(files.partition_file)
    for split, n, sid in (("train", N_TRAIN, 0), ("val", N_VAL, 1), ("test", N_TEST, 2)):
        d = load(root, split)
        assert len(d) == n and d.split == split
        assert d.images.shape == (n, 3, 64, 64) and d.images.dtype == torch.uint8
        assert d.labels.shape == (n, 40) and set(d.labels.unique().tolist()) <= {0, 1}
        assert d.attr_names == list(CELEBA_ATTRIBUTES)
        assert d.filenames == sorted(f for f, s in part.items() if s == sid)
        assert d.labels.tolist() == [truth[f] for f in d.filenames]  # exact round trip
    assert (root / ".mtlrepro_cache" / "celeba_64_square.pt").is_file()


def test_targets_shapes_and_columns(tv_root):
    d = load(tv_root, "val")
    g8 = celeba_tasks("group8")
    ts = d.targets(g8)
    assert [tuple(t.shape) for t in ts] == [(N_VAL, len(t.attr_indices)) for t in g8]
    assert ts[0].dtype == torch.float32
    assert torch.equal(ts[1], d.labels[:, [3, 15, 23, 1, 12]].float())
    a40 = d.targets(celeba_tasks("attr40"))
    assert len(a40) == 40 and all(t.shape == (N_VAL, 1) for t in a40)
    assert torch.equal(torch.cat(a40, 1), d.labels.float())


def test_short_side_keeps_aspect_ratio(tv_root):
    d = load(tv_root, "test", size=64, resize_mode="short_side")
    assert d.images.shape == (N_TEST, 3, 78, 64)  # Max Roaming's Resize(64) of 178x218


def test_resize_matches_torchvision(tv_root):
    from PIL import Image
    import torchvision.transforms.functional as TF

    path = str(find_celeba(tv_root).image_dir / "000001.jpg")
    im = Image.open(path).convert("RGB")
    for mode, target in (("square", [64, 64]), ("short_side", 64)):
        ours = celeba._decode_image(path, 64, mode)
        ref = np.asarray(TF.resize(im, target, antialias=True))
        assert np.array_equal(ours, ref), mode


def test_generated_labels_are_visible_in_the_cached_images(tv_root):
    d = load(tv_root, "train")
    img = d.images.float().mean(1)  # N x 64 x 64 grey
    sx, sy = 64 / 178, 64 / 218
    pred = torch.zeros_like(d.labels)
    for k in range(40):
        left, top, right, bottom = celeba_cell_box(k)
        x0, x1 = int(left * sx) + 1, int(right * sx) - 1
        y0, y1 = int(top * sy) + 1, int(bottom * sy) - 1
        pred[:, k] = (img[:, y0:y1, x0:x1].mean((1, 2)) > 110).to(pred.dtype)
    assert (pred == d.labels).float().mean() > 0.99


def test_generator_is_deterministic_and_official_format(tmp_path):
    a = generate_celeba(tmp_path / "a", 3, 1, 1, seed=5)
    b = generate_celeba(tmp_path / "b", 3, 1, 1, seed=5)
    fa, fb = find_celeba(a), find_celeba(b)
    assert fa.attr_file.read_bytes() == fb.attr_file.read_bytes()
    assert (fa.image_dir / "000004.jpg").read_bytes() == (fb.image_dir / "000004.jpg").read_bytes()
    lines = fa.attr_file.read_text().splitlines()
    assert lines[0] == "5" and lines[1].split() == list(CELEBA_ATTRIBUTES)
    assert lines[2].startswith("000001.jpg ") and ("-1  1" in lines[2] or " 1 -1" in lines[2])
    assert all(len(ln.split()) == 41 for ln in lines[2:])
    assert fa.partition_file.read_text().splitlines() == [
        "000001.jpg 0", "000002.jpg 0", "000003.jpg 0", "000004.jpg 1", "000005.jpg 2"]
    from PIL import Image
    with Image.open(fa.image_dir / "000001.jpg") as im:
        assert im.format == "JPEG" and im.size == (178, 218) and im.mode == "RGB"


def test_read_attributes_tolerates_crlf_and_trailing_space(tmp_path):
    vals = [" 1"] * 20 + ["-1"] * 20
    text = "1\r\n" + " ".join(CELEBA_ATTRIBUTES) + " \r\n000001.jpg " + " ".join(vals) + "\r\n\r\n"
    p = tmp_path / "list_attr_celeba.txt"
    p.write_bytes(text.encode())
    names, files, labels = read_attributes(p)
    assert files == ["000001.jpg"] and labels.dtype == np.int8
    assert labels.tolist() == [[1] * 20 + [0] * 20]


# ----------------------------------------------------------------------------- cache

def test_cache_built_once_and_reused(tv_root, decode_calls):
    d1 = load(tv_root, "train")
    assert len(decode_calls) == N_TRAIN + N_VAL + N_TEST  # one pass decodes every split
    mtime = d1.cache_path.stat().st_mtime_ns
    d2 = load(tv_root, "train")
    load(tv_root, "test")
    assert len(decode_calls) == N_TRAIN + N_VAL + N_TEST
    assert d2.cache_path.stat().st_mtime_ns == mtime
    assert torch.equal(d1.images, d2.images) and d1.filenames == d2.filenames


def test_cache_rebuilt_when_size_or_mode_changes(tv_root, decode_calls):
    n = N_TRAIN + N_VAL + N_TEST
    load(tv_root, size=64)
    d32 = load(tv_root, size=32)
    assert len(decode_calls) == 2 * n and d32.images.shape[-2:] == (32, 32)
    load(tv_root, size=64, resize_mode="short_side")
    assert len(decode_calls) == 3 * n
    load(tv_root, size=32)  # each variant keeps its own file
    assert len(decode_calls) == 3 * n
    names = sorted(p.name for p in (tv_root / ".mtlrepro_cache").glob("*.pt"))
    assert names == ["celeba_32_square.pt", "celeba_64_short_side.pt", "celeba_64_square.pt"]


def test_cache_rebuilt_when_attribute_file_changes(tv_root, decode_calls, capsys):
    d = load(tv_root, "train")
    attr = find_celeba(tv_root).attr_file
    lines = attr.read_text().splitlines()
    first = lines[2].split()
    flipped = "1" if first[1] == "-1" else "-1"
    lines[2] = lines[2].replace(f"{first[0]} {first[1]:>2}", f"{first[0]} {flipped:>2}", 1)
    attr.write_text("\n".join(lines) + "\n")
    st = attr.stat()
    os.utime(attr, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    capsys.readouterr()
    d2 = load(tv_root, "train")
    assert len(decode_calls) == 2 * (N_TRAIN + N_VAL + N_TEST)
    assert "source data changed" in capsys.readouterr().err
    assert int(d2.labels[0, 0]) == 1 - int(d.labels[0, 0])


def test_cache_rebuilt_when_corrupted(tv_root, decode_calls, capsys):
    d = load(tv_root, "train")
    before = d.images.clone()  # d.images is memory-mapped from the very file we corrupt
    raw = bytearray(d.cache_path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    d.cache_path.write_bytes(bytes(raw))
    capsys.readouterr()
    d2 = load(tv_root, "train")
    assert len(decode_calls) == 2 * (N_TRAIN + N_VAL + N_TEST)
    assert "checksum mismatch" in capsys.readouterr().err
    assert torch.equal(before, d2.images)


def test_explicit_cache_dir(tv_root, tmp_path):
    d = load(tv_root, "val", cache_dir=tmp_path / "c")
    assert d.cache_path == tmp_path / "c" / "celeba_64_square.pt"
    assert (tmp_path / "c" / "celeba_64_square.json").is_file()
    assert not (tv_root / ".mtlrepro_cache").exists()


# ----------------------------------------------------------------------------- errors

def test_missing_root(tmp_path):
    with pytest.raises(DataError) as e:
        load(tmp_path / "nope")
    msg = str(e.value)
    assert "does not exist" in msg and str(tmp_path / "nope") in msg
    assert "celeba/list_attr_celeba.txt" in msg and "Anno/list_attr_celeba.txt" in msg


def test_empty_root_prints_both_layouts(tmp_path):
    with pytest.raises(DataError) as e:
        find_celeba(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg
    for part in ("<root>/celeba/img_align_celeba/", "<root>/celeba/list_eval_partition.txt",
                 "<root>/Img/img_align_celeba/", "<root>/Anno/list_attr_celeba.txt",
                 "<root>/Eval/list_eval_partition.txt"):
        assert part in msg


def test_missing_file_is_named(official_root):
    (official_root / "Eval" / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError) as e:
        load(official_root)
    msg = str(e.value)
    assert "missing " + str(official_root / "Eval" / "list_eval_partition.txt") in msg
    assert "official layout" in msg


def test_unextracted_zip_hint(tmp_path):
    (tmp_path / "celeba").mkdir()
    (tmp_path / "celeba" / "img_align_celeba.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="unzip it"):
        find_celeba(tmp_path)


def _edit_attr_line(root: Path, line_no: int, new: str) -> Path:
    attr = find_celeba(root).attr_file
    lines = attr.read_text().splitlines()
    lines[line_no - 1] = new
    attr.write_text("\n".join(lines) + "\n")
    return attr


@pytest.mark.parametrize("case,line_no,needle", [
    ("39 values", 5, "found 39 values"),
    ("bad value", 6, "value '0' for Bald"),
    ("header count", 1, "declares 41 images but the file lists 40"),
    ("names count", 2, "found 39 names"),
])
def test_malformed_attribute_file_names_file_and_line(tv_root, case, line_no, needle):
    attr = find_celeba(tv_root).attr_file
    line = attr.read_text().splitlines()[line_no - 1]
    if case == "39 values":
        new = line.rsplit(" ", 1)[0].rstrip()
    elif case == "bad value":
        toks = line.split()
        toks[5] = "0"  # column of Bald (attribute index 4)
        new = " ".join(toks)
    elif case == "header count":
        new = "41"
    else:
        new = " ".join(CELEBA_ATTRIBUTES[:-1])
    _edit_attr_line(tv_root, line_no, new)
    with pytest.raises(DataError) as e:
        load(tv_root)
    msg = str(e.value)
    assert str(attr) in msg and f"line {line_no}" in msg and needle in msg


def test_malformed_partition_file(tv_root):
    part = find_celeba(tv_root).partition_file
    lines = part.read_text().splitlines()
    lines[3] = "000004.jpg 3"
    part.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load(tv_root)
    assert str(part) in str(e.value) and "line 4" in str(e.value)


def test_wrong_counts_with_expect_full(tv_root):
    with pytest.raises(DataError) as e:
        load_celeba(tv_root, "train", expect="full", progress=False)
    msg = str(e.value)
    assert str(find_celeba(tv_root).partition_file) in msg
    assert "train 24 / val 8 / test 8" in msg
    assert f"train {CELEBA_SPLIT_SIZES['train']} / val {CELEBA_SPLIT_SIZES['val']}" in msg
    assert "--allow-subset" in msg and "profile 'subset'" in msg
    # also when a cache built with expect="any" exists already
    load(tv_root)
    with pytest.raises(DataError, match="train 24 / val 8 / test 8"):
        load_celeba(tv_root, "train", expect="full", progress=False)


def test_image_missing_on_disk(tv_root):
    load(tv_root)  # a valid cache exists: the changed image count must invalidate it
    (find_celeba(tv_root).image_dir / "000007.jpg").unlink()
    with pytest.raises(DataError) as e:
        load(tv_root)
    msg = str(e.value)
    assert "000007.jpg" in msg and "missing" in msg and str(find_celeba(tv_root).image_dir) in msg


def test_partition_image_without_attributes(tv_root):
    part = find_celeba(tv_root).partition_file
    part.write_text(part.read_text() + "999999.jpg 2\n")
    with pytest.raises(DataError) as e:
        load(tv_root)
    assert "999999.jpg" in str(e.value) and "no line in attribute file" in str(e.value)


def test_corrupt_or_wrong_size_image(tv_root):
    img_dir = find_celeba(tv_root).image_dir
    (img_dir / "000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="000003.jpg"):
        load(tv_root)
    from PIL import Image
    Image.new("RGB", (100, 100)).save(img_dir / "000003.jpg", "JPEG")
    with pytest.raises(DataError, match=r"000003.jpg is 100x100, expected 178x218"):
        load(tv_root)


def test_bad_arguments():
    with pytest.raises(ValueError, match="train, val, test"):
        load_celeba("/nonexistent", "valid")
    with pytest.raises(ValueError, match="square, short_side"):
        load_celeba("/nonexistent", "train", resize_mode="crop")
