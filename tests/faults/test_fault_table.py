"""The fault table's recorder (tests/faults/conftest.py): what it says is on disk, and a real table."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import TABLE_ENV, stored_summary

REPO = Path(__file__).resolve().parents[2]


def test_stored_summary_counts_what_is_left_by_kind(tmp_path):
    runs = tmp_path / "results" / "runs" / "tiny" / "abcd" / "cpu"
    runs.mkdir(parents=True)
    (runs / "seed0.json").write_text(json.dumps({"status": "failed"}))
    (runs / "seed1.json").write_text(json.dumps({"status": "finished"}))
    (runs / "seed2.json").write_text("{trunc")
    (runs / "seed3.json.corrupt-20261202T101010Z").write_text("x")
    (runs / "seed4.json.lock").write_text("{}")
    ck = tmp_path / "results" / "checkpoints" / "tiny" / "abcd" / "cpu"
    ck.mkdir(parents=True)
    (ck / "seed0.pt").write_bytes(b"")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "celeba_16.pt").write_bytes(b"")
    assert stored_summary(tmp_path) == ("1 cache file, 1 checkpoint, 1 claim, 1 failed record, 1 finished record, "
                                        "1 set aside, 1 unreadable record")
    assert stored_summary(tmp_path / "absent") == "nothing"


def test_the_table_reports_exit_codes_messages_and_what_is_stored(tmp_path):
    out = tmp_path / "table.md"
    env = dict(os.environ, **{TABLE_ENV: str(out)})
    cases = ["tests/faults/test_input_faults.py::test_data_root_with_the_tiny_profile_is_a_usage_error",
             "tests/faults/test_input_faults.py::test_unknown_field_in_defaults_is_named_there"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "-p", "no:cacheprovider", *cases],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = out.read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| #")]
    assert len(rows) == 4                                   # three verbs of the first test, one API case
    assert all("| `mtlrepro " in r and "| exit 2 |" in r and "--data-root is for the full profile" in r
               for r in rows[:3])
    assert "| API | raises TableFormatError |" in rows[3] and "unknown recipe field 'batchsize'" in rows[3]
    assert all(r.rstrip().endswith("| nothing | passed |") for r in rows)
    assert "4 fault cases" in text and "0 showed the user a traceback" in text
