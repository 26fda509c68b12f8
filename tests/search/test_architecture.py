"""Branched architectures: CoNAL's branch points as trees, validity, and the model that retrains them."""
import pytest
import torch

from mtlrepro.models import build_model, count_parameters
from mtlrepro.search.architecture import BranchedArchitecture


def test_branch_points_become_the_tree_conal_retrains():
    a = BranchedArchitecture.from_branch_points([5, 5, 3], 5)   # CoNAL's shipped NYUv2 architecture
    assert a.groups[:3] == (((0, 1, 2),),) * 3
    assert a.groups[3] == a.groups[4] == ((0, 1), (2,))
    assert a.branch_points() == [5, 5, 3]
    assert BranchedArchitecture.from_dict(a.to_dict()) == a
    single = BranchedArchitecture.from_branch_points([0, 0], 5)
    assert all(level == ((0,), (1,)) for level in single.groups) and single.shared_modules() == []


def test_a_tree_that_is_not_of_branch_point_form_has_none():
    a = BranchedArchitecture(4, [[[0, 1, 2, 3]], [[0, 1], [2, 3]], [[0], [1], [2], [3]]])  # two subgroups
    assert a.branch_points() is None
    assert a.parent(2, a.group_of(2, 3)) == a.group_of(1, 3) == 1
    b = BranchedArchitecture(3, [[[0, 1, 2]], [[0, 1], [2]], [[0], [1], [2]]])
    assert b.branch_points() == [2, 2, 1]


def test_invalid_trees_are_refused():
    with pytest.raises(ValueError, match="do not partition"):
        BranchedArchitecture(3, [[[0, 1]]])
    with pytest.raises(ValueError, match="cannot merge"):
        BranchedArchitecture(2, [[[0], [1]], [[0, 1]]])
    with pytest.raises(ValueError, match="0..5"):
        BranchedArchitecture.from_branch_points([6, 0], 5)


def _stage_params(enc, names) -> int:
    return sum(count_parameters(getattr(enc, n).parameters()) for n in names)


def test_branched_counts_equal_the_schemes_it_generalises():
    """All shared = hard sharing, none shared = single-task networks, and CoNAL's {5, 5, 3} = hard
    sharing + one more layer3 + layer4 (REFERENCE: 93,951,825 for the released architecture)."""
    dims = [13, 1, 3]
    hps = count_parameters(build_model("resnet50_dilated", "hard_sharing", dims).parameters())
    stl = count_parameters(build_model("resnet50_dilated", "single_task", dims).parameters())
    shared = build_model("resnet50_dilated", "branched", dims, architecture={"branch_points": [5, 5, 5]})
    assert count_parameters(shared.parameters()) == hps
    assert count_parameters(build_model("resnet50_dilated", "branched", dims,
                                        architecture={"branch_points": [0, 0, 0]}).parameters()) == stl
    conal = build_model("resnet50_dilated", "branched", dims, architecture={"branch_points": [5, 5, 3]})
    extra = _stage_params(shared.blocks[3][0], ["layer3"]) + _stage_params(shared.blocks[4][0], ["layer4"])
    assert count_parameters(conal.parameters()) == hps + extra == 93_951_825


def test_branched_partition_and_refusals():
    m = build_model("resnet18", "branched", [2, 2, 2], architecture={"branch_points": [5, 2, 0]})
    out = m(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in out] == [(2, 2)] * 3
    own = [{id(p) for p in m.task_parameters(t)} for t in range(3)]
    shared = {id(p) for p in m.shared_parameters()}
    assert not (own[0] & own[1]) and not (shared & own[2])
    assert {id(p) for p in m.parameters()} == shared | own[0] | own[1] | own[2]
    # task 0 (p = 5) is alone after module 1 as task 1 (p = 2) is: both own modules 2..4
    assert len(m.task_parameters(2)) > len(m.task_parameters(1)) == len(m.task_parameters(0))
    with pytest.raises(ValueError, match="architecture"):
        build_model("resnet18", "branched", [2, 2])
    with pytest.raises(ValueError, match="3 tasks"):
        build_model("resnet18", "branched", [2, 2], architecture={"branch_points": [5, 5, 5]})
