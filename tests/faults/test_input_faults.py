"""Bad recipe / table files and bad command-line input: one line naming the fault, exit 2, no traceback.

Each case works on a copy of ``reproduce/`` under ``tmp_path`` (the loaders' ``REPRODUCE_DIR`` and
``RECIPES_DIR`` patched, their caches cleared before and after) and a results folder there too, so
nothing is ever written to the checkout. Expected lines and columns are counted by hand from the
text each case writes; nothing is stored by any case (checked).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

import mtlrepro.recipe_files as recipe_mod
import mtlrepro.store as store_mod
import mtlrepro.tables as tables_mod
from mtlrepro.cli.common import add_allow_subset_argument, add_run_arguments, apply_allow_subset, check_run_arguments
from mtlrepro.cli.main import main
from mtlrepro.errors import UsageError
from mtlrepro.recipe import load_recipe_file
from mtlrepro.tables import TableFormatError

REPO_REPRODUCE = Path(tables_mod.__file__).resolve().parent.parent / "reproduce"


def _clear_caches() -> None:
    tables_mod.table_registry.cache_clear()
    recipe_mod.recipe_sets.cache_clear()
    recipe_mod.recipe_registry.cache_clear()


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A private copy of reproduce/ the loaders read, and an empty results folder."""
    dst = tmp_path / "reproduce"
    shutil.copytree(REPO_REPRODUCE, dst)
    results = tmp_path / "results"
    monkeypatch.setenv("MTLREPRO_RESULTS", str(results))
    monkeypatch.setattr(store_mod, "RESULTS_DIR", results)
    monkeypatch.setattr(tables_mod, "REPRODUCE_DIR", dst)
    monkeypatch.setattr(recipe_mod, "RECIPES_DIR", dst / "recipes")
    _clear_caches()
    yield dst
    _clear_caches()


def _stored(repo: Path) -> list[Path]:
    results = repo.parent / "results"
    return sorted(p for p in results.rglob("*") if p.is_file()) if results.exists() else []


def _insert_line(path: Path, after: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(after, text + "\n")
    path.write_text("".join(lines))


def _line_of(path: Path, needle: str) -> int:
    """1-based line of the first line holding ``needle`` (counted on the text, not by yaml)."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def _fails(capsys, argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return err


# --- recipe files -----------------------------------------------------------------------------------

def test_recipe_yaml_syntax_error_names_file_line_column_and_breaks_only_its_table(repo, capsys):
    path = repo / "recipes" / "etr_nlp" / "table4.yaml"
    _insert_line(path, 1, "oops: a: b")       # line 2; the second ':' is its 8th character
    err = _fails(capsys, ["plan", "etr_nlp/table4", "--profile", "tiny"])
    assert "etr_nlp/table4.yaml:2:8: YAML syntax error" in err and "mapping values are not allowed" in err
    assert err.count("\n") == 1 and err.startswith("mtlrepro plan: ")
    # other tables are unaffected: their files alone are read
    assert main(["plan", "etr_nlp/table2", "--profile", "tiny"]) == 0
    assert main(["recipes", "etr_nlp/table5"]) == 0
    capsys.readouterr()
    # a command that needs every recipe file names the broken one
    err = _fails(capsys, ["recipes"])
    assert "etr_nlp/table4.yaml:2:8" in err
    assert _stored(repo) == []


def test_unknown_recipe_field_names_file_line_row_and_the_closest_field(repo, capsys):
    path = repo / "recipes" / "etr_nlp" / "table5.yaml"
    path.write_text("table: etr_nlp/table5\ndefaults: {dataset: nyuv2, task_set: std3, backbone: segnet}\n"
                    "recipes:\n- row: hard_sharing\n  sharing: hard_sharing\n  learning_rate: 0.001\n")
    err = _fails(capsys, ["recipes", "etr_nlp/table5"])
    assert "etr_nlp/table5.yaml:6: recipe 'hard_sharing': unknown recipe field 'learning_rate' (did you mean 'lr'?)" in err
    assert main(["recipes", "etr_nlp/table4"]) == 0


def test_unknown_field_in_defaults_is_named_there(repo):
    path = repo / "recipes" / "etr_nlp" / "table5.yaml"
    path.write_text("table: etr_nlp/table5\ndefaults:\n  dataset: nyuv2\n  batchsize: 8\nrecipes: []\n")
    with pytest.raises(TableFormatError, match=r"table5.yaml:4: defaults: unknown recipe field 'batchsize' "
                                               r"\(did you mean 'batch_size'\?\)"):
        load_recipe_file(path)


@pytest.mark.parametrize("field,text,want", [
    ("epochs", "ten", "field 'epochs' is 'ten' (a string); expected an integer"),
    ("seeds", "3", "field 'seeds' is 3 (an integer); expected a list of integers (e.g. [0, 1, 2])"),
    ("amp", "1", "field 'amp' is 1 (an integer); expected true or false"),
    ("lr", "fast", "field 'lr' is 'fast' (a string); expected a number"),
    ("head", "[a, b]", "field 'head' is ['a', 'b'] (a list); expected a string or null"),
])
def test_wrong_type_names_file_row_field_given_and_expected(repo, capsys, field, text, want):
    path = repo / "recipes" / "etr_nlp" / "table5.yaml"
    path.write_text("table: etr_nlp/table5\ndefaults: {dataset: nyuv2, task_set: std3, backbone: segnet}\n"
                    f"recipes:\n- row: mtan\n  sharing: mtan\n  {field}: {text}\n")
    err = _fails(capsys, ["plan", "etr_nlp/table5", "--profile", "tiny"])
    assert f"etr_nlp/table5.yaml:6: recipe 'mtan': {want}" in err


def test_a_number_yaml_reads_as_a_string_is_still_a_number(tmp_path):
    (tmp_path / "p").mkdir()
    path = tmp_path / "p" / "t.yaml"          # YAML 1.1: 1e-4 (no dot) is a string
    path.write_text("table: p/t\nrecipes:\n- {row: a, dataset: d, task_set: s, backbone: b, sharing: h, "
                    "lr: 1e-4, encoder_lr: 2e-5}\n")
    r = load_recipe_file(path).recipes[0]
    assert r.lr == 1e-4 and r.encoder_lr == 2e-5 and isinstance(r.encoder_lr, float)


@pytest.mark.parametrize("text,want", [
    ("- a\n- b\n", "expected a mapping with table"),
    ("table: p/t\nrecipe: []\n", "unknown recipe-file field 'recipe' (did you mean 'recipes'?)"),
    ("table: p/t\nrecipes:\n- sharing: x\n", "recipe #1 has no 'row'"),
    ("table: p/t\nrecipes:\n- {row: a, dataset: d, task_set: s, backbone: b}\n", "missing required recipe field(s) 'sharing'"),
    ("table: p/t\nrecipes:\n- {row: a}\n- {row: a}\n", "row 'a' appears twice"),
    ("table: p/t\nrecipes: {a: 1}\n", "'recipes' must be a list"),
    ("table: p/t\nrecipes:\n- {row: [a]}\n", "field 'row' is ['a'] (a list); expected a string"),
])
def test_a_malformed_recipe_file_is_a_format_error(tmp_path, text, want):
    (tmp_path / "p").mkdir()
    path = tmp_path / "p" / "t.yaml"
    path.write_text(text)
    with pytest.raises(TableFormatError) as e:
        load_recipe_file(path)
    assert want in str(e.value) and "t.yaml" in str(e.value)


# --- table files ------------------------------------------------------------------------------------

def test_table_yaml_syntax_error_names_file_line_column_and_breaks_only_that_table(repo, capsys):
    path = repo / "etr_nlp" / "table4.yaml"
    _insert_line(path, 0, "oops: a: b")       # line 1; the second ':' is its 8th character
    err = _fails(capsys, ["table", "etr_nlp/table4"])
    assert "etr_nlp/table4.yaml:1:8: YAML syntax error: mapping values are not allowed here" in err
    assert err.count("\n") == 1
    assert main(["table", "etr_nlp/table2"]) == 0
    assert main(["diff", "etr_nlp/table2", "--profile", "tiny"]) == 0
    capsys.readouterr()
    rc = main(["tables"])                        # lists the others, then names the broken file
    out, err = capsys.readouterr()
    assert rc == 2 and "etr_nlp/table2" in out and "etr_nlp/table4.yaml:1:8" in err and "Traceback" not in err
    assert _stored(repo) == []


def test_unknown_table_field_suggests_the_closest(repo, capsys):
    path = repo / "etr_nlp" / "table2.yaml"
    text = path.read_text()
    assert "higher_is_better:" in text
    path.write_text(text.replace("higher_is_better:", "higher_is_beter:", 1))
    line = _line_of(path, "higher_is_beter:")
    err = _fails(capsys, ["table", "etr_nlp/table2"])
    assert f"etr_nlp/table2.yaml:{line}:" in err
    assert "unknown column field 'higher_is_beter' (did you mean 'higher_is_better'?)" in err


def test_a_table_file_that_is_no_mapping(repo, capsys):
    (repo / "etr_nlp" / "table2.yaml").write_text("- 1\n- 2\n")
    err = _fails(capsys, ["diff", "etr_nlp/table2", "--profile", "tiny"])
    assert "table2.yaml: expected a mapping of table fields" in err


# --- command-line values ----------------------------------------------------------------------------

@pytest.mark.parametrize("verb", ["run", "plan", "diff", "report", "reproduce"])
def test_seeds_that_are_not_integers_are_a_usage_error(repo, capsys, verb):
    err = _fails(capsys, [verb, "etr_nlp/table4", "--profile", "tiny", "--seeds", "a,b"])
    assert "usage:" in err and "argument --seeds" in err and "'a,b'" in err
    assert _stored(repo) == []


@pytest.mark.parametrize("verb", ["run", "plan", "diff", "report"])
def test_a_mistyped_table_id_suggests_the_table(repo, capsys, verb):
    err = _fails(capsys, [verb, "gatedmtl/tabel5", "--profile", "tiny"])
    assert err.startswith(f"mtlrepro {verb}: unknown ") and "Did you mean: gatedmtl/table5" in err
    assert _stored(repo) == []


def test_a_mistyped_recipe_row_suggests_rows_of_its_table(repo, capsys):
    err = _fails(capsys, ["run", "etr_nlp/table4/hard_sharing_g9", "--profile", "tiny"])
    assert "Did you mean: etr_nlp/table4/hard_sharing_g8" in err


@pytest.mark.parametrize("verb", ["run", "reproduce", "plan"])
def test_data_root_with_the_tiny_profile_is_a_usage_error(repo, capsys, tmp_path, verb):
    err = _fails(capsys, [verb, "etr_nlp/table4", "--profile", "tiny", "--data-root", str(tmp_path)])
    assert "usage:" in err and "--data-root is for the full profile; the tiny profile generates its own data" in err
    assert _stored(repo) == []


def test_allow_subset_argument():
    p = argparse.ArgumentParser()
    add_run_arguments(p)
    add_allow_subset_argument(p)
    args = p.parse_args(["--allow-subset", "--profile", "full"])
    apply_allow_subset(args)
    assert args.profile == "subset"
    with pytest.raises(UsageError, match="--allow-subset is for the full profile"):
        check_run_arguments(p.parse_args(["--allow-subset", "--profile", "tiny"]))


def test_conflicts_set_checks_names_and_types(repo, capsys):
    err = _fails(capsys, ["conflicts", "etr_nlp/table5/hard_sharing", "--profile", "tiny", "--set", "learning_rate=0.1"])
    assert "--set: unknown recipe field 'learning_rate' (did you mean 'lr'?)" in err
    err = _fails(capsys, ["conflicts", "etr_nlp/table5/hard_sharing", "--profile", "tiny", "--set", "epochs"])
    assert "--set expects KEY=VALUE" in err


def test_a_bug_still_shows_its_traceback(repo, monkeypatch):
    import mtlrepro.cli.tables as verb

    def boom(args):
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(verb, "run", boom)
    with pytest.raises(RuntimeError, match="a genuine bug"):
        main(["tables"])
