"""The torture report: one row per scenario, written as JSON and Markdown at the end.

Rows travel on each test's teardown report (``user_properties``), so the process that
writes the report, pytest-xdist's controller included, receives every worker's rows. The
hooks are imported by ``tests/conftest.py``, which that process always loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import pytest

FULL: Final = os.environ.get("BETSTREAM_TORTURE", "short") == "full"
REPORT_DIR: Final = Path(os.environ.get("BETSTREAM_TORTURE_REPORT_DIR",
                                        Path(__file__).resolve().parents[2] / "var"))
ROW_PROPERTY: Final = "torture_row"
_ROWS: list[Row] = []


def scaled(short: int, full: int) -> int:
    """The short size under ``make test``, the full size under ``make torture``."""
    return full if FULL else short


@dataclass
class Row:
    scenario: str
    intents: int = 0
    faults: str = ""
    lost: int | None = None
    doubled: int | None = None
    audit: str = "not run"
    duration_s: float = 0.0
    passed: bool = False
    extra: dict[str, object] = field(default_factory=dict)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _ROWS.extend(Row(**value) for name, value in report.user_properties
                     if name == ROW_PROPERTY)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _ROWS:
        return
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    rows = sorted(_ROWS, key=lambda r: r.scenario)
    (REPORT_DIR / "torture-report.json").write_text(
        json.dumps({"size": "full" if FULL else "short", "rows": [asdict(r) for r in rows]},
                   indent=2) + "\n")
    text = _markdown(rows)
    (REPORT_DIR / "torture-report.md").write_text(text)
    terminalreporter.write_sep("=", "torture report")
    terminalreporter.write_line(text)


def _markdown(rows: list[Row]) -> str:
    head = ("| scenario | intents | faults injected | lost | doubled | audit | duration s | "
            "result |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r.scenario} | {r.intents:,} | {r.faults} | {_n(r.lost)} | {_n(r.doubled)} | "
        f"{r.audit} | {r.duration_s} | {'pass' if r.passed else 'FAIL'} |\n" for r in rows)
    size = "full (make torture)" if FULL else "short (make test)"
    return f"# betstream torture report ({size})\n\n{head}{body}"


def _n(value: int | None) -> str:
    return "n/a" if value is None else str(value)
