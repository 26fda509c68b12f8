"""LibMTL's epoch-selection rule (best Δ against the first evaluation) and its test-set label."""
import pytest

from mtlrepro.store import EpochRecord
from mtlrepro.train.selection import (check_selection_rule, delta_vs_base, is_test_set_selection,
                                      select_final, selection_label)

RULE = "best_delta_vs_first:miou,pixel_acc|abs_err_pooled,rel_err_pooled"
GROUPS = [["miou", "pixel_acc"], ["abs_err_pooled", "rel_err_pooled"]]


def _epochs(*rows):
    return [EpochRecord(epoch=i + 1, train_loss=1.0, seconds=0.0,
                        metrics=dict(miou=a, pixel_acc=b, abs_err_pooled=c, rel_err_pooled=d))
            for i, (a, b, c, d) in enumerate(rows)]


def test_delta_matches_a_hand_computed_libmtl_improvement():
    base = dict(miou=0.5, pixel_acc=0.8, abs_err_pooled=0.4, rel_err_pooled=0.2)
    new = dict(miou=0.55, pixel_acc=0.76, abs_err_pooled=0.3, rel_err_pooled=0.25)
    # seg: (+0.1 - 0.05) / 2 = 0.025 ; depth: (+0.25 - 0.25) / 2 = 0 ; mean over tasks 0.0125
    assert delta_vs_base(base, new, GROUPS) == pytest.approx(0.0125, abs=1e-12)


def test_best_delta_picks_the_epoch_with_the_largest_improvement_not_the_best_single_metric():
    eps = _epochs((0.50, 0.80, 0.40, 0.20),    # base: Δ 0
                  (0.60, 0.80, 0.40, 0.20),    # seg +20% / 2 -> Δ 0.05
                  (0.52, 0.82, 0.30, 0.15),    # seg (4+2.5)/2 %, depth 25% -> Δ 0.141
                  (0.70, 0.70, 0.60, 0.40))    # best miou, worse elsewhere
    out = select_final(eps, RULE)
    assert out["epoch"] == 3
    assert out["selection"] == RULE
    assert out["delta_vs_first"][0] == 0.0
    assert out["delta_vs_first"][2] == pytest.approx(100 * ((0.04 + 0.025) / 2 + 0.25) / 2, abs=1e-4)
    assert select_final(eps, "best:miou")["epoch"] == 4


def test_ties_and_no_improvement_keep_the_earliest_epoch():
    eps = _epochs((0.5, 0.8, 0.4, 0.2), (0.4, 0.7, 0.5, 0.3), (0.5, 0.8, 0.4, 0.2))
    assert select_final(eps, RULE)["epoch"] == 1


def test_malformed_rules_fail_before_training():
    check_selection_rule(RULE)
    with pytest.raises(ValueError, match="undefined metric"):
        check_selection_rule("best_delta_vs_first:miou,pixl_acc")
    with pytest.raises(ValueError, match="each task's metric keys"):
        check_selection_rule("best_delta_vs_first:miou||abs_err")
    with pytest.raises(ValueError, match="not measured"):
        select_final(_epochs((0.5, 0.8, 0.4, 0.2)), "best_delta_vs_first:miou|mean_angle_pooled")


def test_test_set_selection_label_depends_on_the_dataset_split():
    assert is_test_set_selection(RULE, "nyuv2", "val")          # MTAN's val is the test set
    assert not is_test_set_selection(RULE, "celeba", "val")     # CelebA has a real validation split
    assert is_test_set_selection("best:miou", "celeba", "test")
    assert not is_test_set_selection("last", "nyuv2", "val")
    assert selection_label(RULE, "cityscapes", "val") == "best_delta_vs_first (test-set selection)"
    assert selection_label("last", "cityscapes", "val") == "last"
