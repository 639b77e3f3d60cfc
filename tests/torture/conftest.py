"""Torture tier: scenarios that try hard to lose, double or let in money movements.

Every scenario runs in two sizes. ``make test`` runs the short one; ``make torture`` sets
``BETSTREAM_TORTURE=full`` for the sizes the issue names (e.g. 100,000 intents, 20 writer
kills). Each scenario records one row of the torture report (scenario, intents, faults
injected, lost, doubled, audit result, duration) through the ``torture_report`` fixture;
the session writes ``<report dir>/torture-report.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import pytest

from tests.conftest import ROOT

FULL: Final = os.environ.get("BETSTREAM_TORTURE", "short") == "full"
REPORT_DIR: Final = Path(os.environ.get("BETSTREAM_TORTURE_REPORT_DIR", ROOT / "var"))
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


@pytest.fixture
def torture_report(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Row]]:
    """``row = torture_report("crash storm")``; fill in the fields as the scenario runs.

    Duration runs from the first call to teardown; ``passed`` is the test's own result.
    """
    rows: list[tuple[Row, float]] = []

    def start(scenario: str) -> Row:
        row = Row(scenario)
        rows.append((row, time.monotonic()))
        return row

    yield start
    report = getattr(request.node, "rep_call", None)
    for row, started in rows:
        row.duration_s = round(time.monotonic() - started, 1)
        row.passed = bool(report and report.passed)
        _ROWS.append(row)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]


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
