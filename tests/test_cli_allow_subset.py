"""``--allow-subset`` is the ``subset`` profile: its runs are stored under ``runs/subset/`` and never
count as the full profile's; the loaders accept other split sizes there only; with ``--profile
tiny`` the flag is a usage error."""
import pytest

from mtlrepro.cli.common import PROFILE_CHOICES, apply_allow_subset
from mtlrepro.cli.main import build_parser, main
from mtlrepro.problems.paths import data_expect
from mtlrepro.profiles import PROFILES


@pytest.mark.parametrize("verb", ["run", "reproduce"])
def test_allow_subset_runs_the_subset_profile(verb, capsys):
    args = build_parser().parse_args([verb, "etr_nlp/table4", "--allow-subset"])
    assert args.profile == "full"
    apply_allow_subset(args)
    assert args.profile == "subset" and "running profile 'subset'" in capsys.readouterr().err


def test_without_the_flag_the_profile_stays():
    args = build_parser().parse_args(["run", "etr_nlp/table4"])
    apply_allow_subset(args)
    assert args.profile == "full"


def test_what_each_profile_lets_the_loaders_accept():
    assert data_expect("full") == "full"
    assert data_expect("subset") == "any" and data_expect("tiny") == "any"
    assert data_expect("full", "any") == "any" and data_expect("tiny", "full") == "any"
    with pytest.raises(ValueError, match="expect must be one of"):
        data_expect("full", "some")


def test_the_cli_offers_every_profile():
    assert set(PROFILE_CHOICES) == set(PROFILES)
    assert PROFILES["subset"].banner and PROFILES["tiny"].banner and not PROFILES["full"].banner


def test_allow_subset_with_the_tiny_profile_is_a_usage_error(capsys):
    assert main(["run", "etr_nlp/table4", "--profile", "tiny", "--allow-subset"]) == 2
    assert "--allow-subset is for the full profile" in capsys.readouterr().err
