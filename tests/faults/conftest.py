"""The fault table: what every fault test saw, written as markdown when ``MTLREPRO_FAULT_TABLE`` is set.

``make fault-table`` runs ``tests/faults`` with ``MTLREPRO_FAULT_TABLE=results/fault_table.md``. For
each test (one row per case, parametrised cases apart) the table gives the case (the test's
docstring or name), how it ended for the user (the exit code of the last ``mtlrepro`` command, or
the error raised by the API; of several commands, the first that failed), the message (the last
line on stderr or the error's text), whether a
traceback reached the user, and what was left on disk (run records by status, records set aside,
claims, checkpoints, cache files) under the test's folder. The test's own assertions decide pass or
fail; the table only reports. Without the variable nothing is recorded.
"""
from __future__ import annotations

import io
import os
import re
import sys
from pathlib import Path

import pytest

TABLE_ENV = "MTLREPRO_FAULT_TABLE"
_ROWS: dict[str, dict] = {}


def _enabled() -> bool:
    return bool(os.environ.get(TABLE_ENV))


class _Tee(io.TextIOBase):
    """Writes to the stream it wraps (pytest's capture) and keeps a copy."""

    def __init__(self, inner):
        self.inner, self.copy = inner, io.StringIO()

    def write(self, s: str) -> int:
        self.copy.write(s)
        return self.inner.write(s)

    def flush(self) -> None:
        self.inner.flush()


def _wrap_main(row: dict, real):
    def main(argv=None):
        tee = _Tee(sys.stderr)
        sys.stderr = tee
        try:
            rc = real(argv)
        finally:
            sys.stderr = tee.inner
        err = tee.copy.getvalue()
        row["traceback"] = row.get("traceback", False) or "Traceback" in err
        if row.get("ended", "").startswith("exit") and row["ended"] != "exit 0":
            return rc              # the table shows the first command that failed (later ones show the rest works)
        row.update(interface="`mtlrepro " + " ".join(str(a) for a in (argv or [])[:1]) + "`", ended=f"exit {rc}",
                   message=_last_line(err))
        return rc
    return main


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.startswith(("[", "  0%"))]
    return lines[-1] if lines else ""


def _wrap_init(row: dict, cls):
    """``cls.__init__`` that also notes the error in ``row`` (unless a command's exit is noted)."""
    real = cls.__init__

    def init(self, *a, **k):
        real(self, *a, **k)
        if "exit" not in row.get("ended", ""):
            row.update(ended=f"raises {type(self).__name__}", message=str(a[0]) if a else str(self))
    return init


def stored_summary(folder: Path) -> str:
    """What is on disk under ``folder``: run records by status, set-aside files, claims, checkpoints,
    weights and cache files (``nothing`` when none)."""
    import json

    counts: dict[str, int] = {}

    def add(k: str) -> None:
        counts[k] = counts.get(k, 0) + 1

    for p in folder.rglob("*") if folder.is_dir() else []:
        if not p.is_file():
            continue
        name, parts = p.name, p.parts
        if re.search(r"\.(corrupt|misplaced|schema\w*|otherdata)-\d{8}T", name):
            add("set aside")
        elif name.endswith(".lock"):
            add("claim")
        elif "runs" in parts and re.fullmatch(r"seed-?\d+\.json", name):
            try:
                add(f"{json.loads(p.read_text()).get('status', '?')} record")
            except (OSError, ValueError):
                add("unreadable record")
        elif "checkpoints" in parts and name.endswith(".pt"):
            add("checkpoint")
        elif "weights" in parts and name.endswith(".pt"):
            add("weights")
        elif name.endswith(".pt") and "runs" not in parts:
            add("cache file")
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing"


@pytest.fixture(autouse=True)
def _fault_row(request, monkeypatch):
    if not _enabled():
        yield None
        return
    import mtlrepro.cli.main as cli_main
    from mtlrepro import record_check
    from mtlrepro.data.errors import DataError
    from mtlrepro.errors import UserError
    from mtlrepro.train.faults import EnvironmentFault

    doc = (request.function.__doc__ or "").strip().split("\n\n")[0]
    case = " ".join(doc.split()) or request.function.__name__.removeprefix("test_").replace("_", " ")
    if "[" in request.node.name:
        case += f" [{request.node.name.split('[', 1)[1]}"
    row = _ROWS.setdefault(request.node.nodeid, {"case": case, "interface": "API", "ended": "", "message": "",
                                                 "traceback": False, "asides": []})
    real_main = cli_main.main
    wrapped = _wrap_main(row, real_main)
    monkeypatch.setattr(cli_main, "main", wrapped)
    if getattr(request.module, "main", None) is real_main:    # the test module's own `from ... import main`
        monkeypatch.setattr(request.module, "main", wrapped)
    for cls in (UserError, DataError, EnvironmentFault):
        monkeypatch.setattr(cls, "__init__", _wrap_init(row, cls))
    real_warn = record_check._warn
    monkeypatch.setattr(record_check, "_warn", lambda m: (row["asides"].append(m), real_warn(m))[1])
    yield row


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    yield
    if not _enabled() or item.nodeid not in _ROWS:
        return
    folder = item.funcargs.get("tmp_path")
    _ROWS[item.nodeid]["stored"] = stored_summary(Path(folder)) if folder else "—"
    _ROWS[item.nodeid]["tmp"] = str(folder) if folder else None


def pytest_runtest_logreport(report):
    if _enabled() and report.when == "call" and report.nodeid in _ROWS:
        _ROWS[report.nodeid]["outcome"] = report.outcome


def _cell(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[:n - 1] + "…"


def pytest_sessionfinish(session):
    if not _enabled() or not _ROWS:
        return
    rows = list(_ROWS.values())
    tracebacks = sum(bool(r["traceback"]) for r in rows)
    failed = sum(r.get("outcome") != "passed" for r in rows)
    lines = ["<!-- generated by `make fault-table` (tests/faults/conftest.py): do not edit -->",
             "# Fault table", "",
             f"{len(rows)} fault cases of `tests/faults/`; {len(rows) - failed} pass their test; "
             f"{tracebacks} showed the user a traceback. \"ended\": the exit code of the last `mtlrepro` command "
             "(2 bad input, 3 a fault of the machine, 1 a failed run) or the error the API raised; \"stored\": what "
             "is on disk under the test's folder afterwards.", "",
             "| # | case | via | ended | message (last line) | stored | test |", "|---|---|---|---|---|---|---|"]
    for i, (nodeid, r) in enumerate(_ROWS.items(), 1):
        msg = r["message"] or (r["asides"][-1] if r["asides"] else "")
        if r.get("tmp"):
            msg = msg.replace(r["tmp"], "<tmp>")
        msg = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s]+", "<tmp>", msg)
        lines.append(f"| {i} | {_cell(r['case'], 120)} | {r['interface']} | {r['ended'] or 'returns'} | "
                     f"{_cell(msg)} | {r.get('stored', '—')} | {r.get('outcome', '?')} |")
    out = Path(os.environ[TABLE_ENV])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
