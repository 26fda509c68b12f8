"""PASCAL_MT (Vandenhende's format): human parts from PASCAL-Part structs, edges from the
LabelMap, distilled normals and saliency, semseg ignore, resizing, and errors naming the file.

Hand-made samples are 6 x 8 and loaded at 6 x 8 (no resampling), so every value is checked
exactly; the generated copy checks the real-size path (varying image sizes -> 512 x 512)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from mtlrepro.data import DataError
from mtlrepro.data.edges import edges_from_labels
from mtlrepro.data.generate_vandenhende import (PASCAL_TINY_SIZES, generate_pascal_mt,
                                                write_label_map, write_part_annotation)
from mtlrepro.data.pascal_mt import NORMALS_VALID_CLASSES, load_pascal_mt
from mtlrepro.data.pascal_parts import PERSON_PARTS_6

H, W = 6, 8
WALL, SKY = 440, 360            # a class with distilled normals, one without
assert WALL in NORMALS_VALID_CLASSES and SKY not in NORMALS_VALID_CLASSES


def _box(r0, r1, c0, c1):
    m = np.zeros((H, W), np.uint8)
    m[r0:r1, c0:c1] = 1
    return m


def write_sample(root: Path, i: str, *, objects, semseg=None, labels=None, normals=None, sal=None):
    for d in ("ImageSets/Context", "JPEGImages", "semseg/pascal-context", "human_parts",
              "pascal-context/trainval", "normals_distill", "sal_distill"):
        (root / d).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 100, np.uint8)).save(root / "JPEGImages" / f"{i}.jpg")
    Image.fromarray(np.zeros((H, W), np.uint8) if semseg is None else semseg).save(
        root / "semseg" / "pascal-context" / f"{i}.png")
    write_part_annotation(root / "human_parts" / f"{i}.mat", i, objects)
    write_label_map(root / "pascal-context" / "trainval" / f"{i}.mat",
                    np.full((H, W), WALL) if labels is None else labels)
    Image.fromarray(np.full((H, W, 3), 200, np.uint8) if normals is None else normals, "RGB").save(
        root / "normals_distill" / f"{i}.png")
    Image.fromarray(np.zeros((H, W), np.uint8) if sal is None else sal, "L").save(
        root / "sal_distill" / f"{i}.png")


def write_split(root: Path, split: str, ids: list[str]) -> None:
    (root / "ImageSets" / "Context" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))


def load(root, split="train", hw=(H, W), **kw):
    kw.setdefault("expect", "any")
    kw.setdefault("progress", False)
    kw.setdefault("cache_dir", Path(root).parent / "cache")
    return load_pascal_mt(root, split, hw, **kw)


PERSON_PARTS = [("hair", _box(0, 1, 0, 2)), ("torso", _box(1, 3, 0, 2)), ("luarm", _box(3, 4, 0, 2)),
                ("rhand", _box(4, 5, 0, 2)), ("ruleg", _box(5, 6, 0, 1)), ("lfoot", _box(5, 6, 1, 2)),
                ("head", _box(1, 2, 1, 2))]       # head after torso: the later part wins


@pytest.fixture
def hand(tmp_path) -> Path:
    root = tmp_path / "PASCAL_MT"
    person = {"class": "person", "class_ind": 15, "mask": _box(0, 6, 0, 2), "parts": PERSON_PARTS}
    cow = {"class": "cow", "class_ind": 10, "mask": _box(0, 3, 4, 8), "parts": [("head", _box(0, 1, 4, 8))]}
    write_sample(root, "a_person", objects=[cow, person])
    write_sample(root, "b_no_person", objects=[cow])
    write_sample(root, "c_person_without_parts", objects=[dict(person, parts=[])])
    write_split(root, "train", ["a_person", "b_no_person", "c_person_without_parts"])
    write_split(root, "val", ["b_no_person"])
    return root


def test_human_parts_follow_the_six_part_mapping_and_the_all_ignore_rule(hand):
    d = load(hand)
    parts = d.targets["human_parts"].numpy()
    want = np.zeros((H, W), np.int64)                       # 0 = background (the cow's head too)
    want[0, 0:2], want[1:3, 0:2], want[3, 0:2], want[4, 0:2] = 1, 2, 3, 4   # head, torso, uarm, larm
    want[5, 0], want[5, 1], want[1, 1] = 5, 6, 1                             # uleg, lleg, head
    assert np.array_equal(parts[0], want)
    assert (parts[1] == -1).all() and (parts[2] == -1).all()   # no person; person without parts
    assert d.info["has_person"].tolist() == [1, 0, 1]


def test_the_part_mapping_is_vandenhendes():
    groups = {c: sorted(n for n, k in PERSON_PARTS_6.items() if k == c) for c in range(1, 7)}
    assert groups == {1: ["hair", "head", "lear", "lebrow", "leye", "mouth", "nose", "rear", "rebrow", "reye"],
                      2: ["neck", "torso"], 3: ["luarm", "ruarm"], 4: ["lhand", "llarm", "rhand", "rlarm"],
                      5: ["luleg", "ruleg"], 6: ["lfoot", "llleg", "rfoot", "rlleg"]}


def test_edges_normals_saliency_and_semseg(tmp_path):
    root = tmp_path / "PASCAL_MT"
    labels = np.full((H, W), WALL)
    labels[:, 5:] = SKY
    labels[2:4, 1:3] = 72                                    # a chair (has distilled normals)
    semseg = np.zeros((H, W), np.uint8)
    semseg[2:4, 1:3], semseg[0, :] = 9, 255
    normals = np.zeros((H, W, 3), np.uint8)
    normals[..., 0], normals[..., 1], normals[..., 2] = 255, 0, 128
    sal = np.array([0, 127, 128, 255, 200, 10, 129, 126], np.uint8)[None].repeat(H, 0)
    write_sample(root, "x", objects=[], semseg=semseg, labels=labels, normals=normals, sal=sal)
    write_split(root, "train", ["x"])
    d = load(root)
    t = {k: v[0].numpy() for k, v in d.targets.items()}
    assert np.array_equal(t["edge"], edges_from_labels(labels).astype(np.uint8)) and t["edge"].any()
    want_seg = semseg.astype(np.int64)
    want_seg[semseg == 255] = -1
    assert np.array_equal(t["semseg"], want_seg)
    n = np.array([2 * 255 / 255 - 1, 2 * 0 / 255 - 1, 2 * 128 / 255 - 1])
    n = n / np.linalg.norm(n)
    got = t["normals"].astype(np.float64).transpose(1, 2, 0)
    valid = labels != SKY
    assert np.abs(got[valid] - n).max() < 1e-3 and not got[~valid].any()   # 2x/255-1, valid classes only
    assert t["saliency"][0].tolist() == [0, 0, 1, 1, 1, 0, 1, 0]            # x / 255 > 0.5
    assert (t["human_parts"] == -1).all()


def test_voc12_semseg_is_read_first(hand):
    (hand / "semseg" / "VOC12").mkdir()
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(hand / "semseg" / "VOC12" / "b_no_person.png")
    d = load(hand)
    assert (d.targets["semseg"][1] == 7).all() and (d.targets["semseg"][0] == 0).all()


def test_generated_copy_at_512(tmp_path):
    root = generate_pascal_mt(tmp_path / "PASCAL_MT", n_train=3, n_val=1, seed=0)
    d = load(root, hw=(512, 512))
    assert d.images.shape == (3, 3, 512, 512) and d.targets["normals"].shape == (3, 3, 512, 512)
    assert d.info["source_hw"].tolist() == [list(s) for s in PASCAL_TINY_SIZES]
    hp = d.targets["human_parts"]
    assert set(hp[0].unique().tolist()) == set(range(7))       # person with 12 parts
    assert (hp[1] == -1).all() and (hp[2] == -1).all()          # no person / person without parts
    for k, i in enumerate(d.ids):                                # edges: at the source size, then nearest
        lab = sio.loadmat(root / "pascal-context" / "trainval" / f"{i}.mat")["LabelMap"]
        h, w = lab.shape
        rows, cols = np.arange(512) * h // 512, np.arange(512) * w // 512
        assert np.array_equal(d.targets["edge"][k].numpy(), edges_from_labels(lab)[rows][:, cols])
        png = np.array(Image.open(root / "semseg" / "pascal-context" / f"{i}.png")).astype(np.int64)
        png[png == 255] = -1
        assert np.array_equal(d.targets["semseg"][k].numpy(), png[rows][:, cols])


def _expect_error(root, match, path):
    with pytest.raises(DataError, match=match) as e:
        load(root)
    assert str(path) in str(e.value)
    assert not list((root.parent / "cache").glob("*.pt"))
    return e.value


def test_missing_and_malformed_annotations_name_the_file(hand):
    mat = hand / "human_parts" / "b_no_person.mat"
    mat.unlink()
    err = _expect_error(hand, "is missing", mat)
    assert "PASCAL-Part annotation" in str(err)
    sio.savemat(str(mat), {"something": np.zeros(3)})
    _expect_error(hand, "is not a PASCAL-Part annotation", mat)
    person = {"class": "person", "class_ind": 15, "mask": _box(0, 6, 0, 2), "parts": [("tail", _box(0, 1, 0, 1))]}
    write_part_annotation(mat, "b_no_person", [person])
    _expect_error(hand, "person part 'tail'", mat)
    write_part_annotation(mat, "b_no_person", [dict(person, mask=np.ones((3, 3)))])
    _expect_error(hand, r"has shape \(3, 3\), expected \(6, 8\)", mat)


def test_malformed_label_maps_pngs_and_split_files(hand):
    lab = hand / "pascal-context" / "trainval" / "a_person.mat"
    sio.savemat(str(lab), {"LabelMap": np.zeros((6, 7), np.uint16)})
    _expect_error(hand, r"shape \(6, 7\), expected \(6, 8\)", lab)
    sio.savemat(str(lab), {"Labels": np.zeros((6, 8), np.uint16)})
    _expect_error(hand, "no variable 'LabelMap'", lab)
    write_label_map(lab, np.full((H, W), WALL))
    seg = hand / "semseg" / "pascal-context" / "a_person.png"
    Image.fromarray(np.full((H, W), 30, np.uint8)).save(seg)
    _expect_error(hand, r"values \[30\]", seg)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(seg)
    sal = hand / "sal_distill" / "a_person.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(sal)
    _expect_error(hand, r"expected \(6, 8\)", sal)
    shutil.rmtree(hand / "ImageSets")
    with pytest.raises(DataError, match="PASCAL_MT not found"):
        load(hand)
