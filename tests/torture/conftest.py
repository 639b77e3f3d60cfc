"""Torture tier: scenarios that try hard to lose, double or let in money movements.

Every scenario runs in two sizes. ``make test`` runs the short one; ``make torture`` sets
``BETSTREAM_TORTURE=full`` for the sizes the issue names (e.g. 100,000 intents, 20 writer
kills). Each scenario records one row of the torture report (scenario, intents, faults
injected, lost, doubled, audit result, duration) through the ``torture_report`` fixture;
the session writes ``<report dir>/torture-report.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict

import pytest

from tests.torture.report import ROW_PROPERTY, Row


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
        # Carried on the teardown report, so that under xdist the controller gets it too.
        request.node.user_properties.append((ROW_PROPERTY, asdict(row)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
