"""``--allow-subset`` reaches the loaders: run / reproduce set the environment variable the problem
builders (and worker processes) read; with the tiny profile it is a usage error."""
import pytest

from mtlrepro.cli.common import apply_allow_subset
from mtlrepro.cli.main import build_parser, main
from mtlrepro.problems.paths import ALLOW_SUBSET_ENV, data_expect


@pytest.mark.parametrize("verb", ["run", "reproduce"])
def test_allow_subset_sets_what_the_loaders_read(verb, monkeypatch):
    monkeypatch.setenv(ALLOW_SUBSET_ENV, "")   # recorded, so the value set below is undone after the test
    assert data_expect("full") == "full"
    args = build_parser().parse_args([verb, "etr_nlp/table4", "--allow-subset"])
    apply_allow_subset(args)
    assert data_expect("full") == "any" and data_expect("tiny") == "any"


def test_without_the_flag_nothing_is_set(monkeypatch):
    monkeypatch.setenv(ALLOW_SUBSET_ENV, "")   # recorded, so the value set below is undone after the test
    apply_allow_subset(build_parser().parse_args(["run", "etr_nlp/table4"]))
    assert data_expect("full") == "full"


def test_allow_subset_with_the_tiny_profile_is_a_usage_error(capsys):
    assert main(["run", "etr_nlp/table4", "--profile", "tiny", "--allow-subset"]) == 2
    assert "--allow-subset is for the full profile" in capsys.readouterr().err
