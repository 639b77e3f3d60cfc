"""`make run` and `betstream run` stop cleanly: every child stopped, exit 0, and no traceback
in any log, however the stop comes (a Ctrl-C, a script's SIGINT, SIGTERM to the group)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import BETSTREAM, ROOT, Procs, free_port, wait_for
from tests.support import log_events

RUNNING = "Ctrl-C stops."
STOPPED = "stopped writer, confirmer, gateway and redis-server"
START_S, STOP_S = 90, 30
# A terminal's make has SIGINT at its default; a test run started in the background (a
# script, CI) would hand it down ignored, so the Ctrl-C case sets it before exec'ing make.
WITH_SIGINT_DEFAULT = [sys.executable, "-c", "import os, signal, sys; "
                       "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                       "os.execvp(sys.argv[1], sys.argv[1:])"]
# make must not rebuild the venv this test runs in (make test has just built it)
MAKE = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"),
        "-o", str(ROOT / ".venv" / ".installed-stamp")]


def _demo_env(env: dict[str, str], redis_port: int) -> dict[str, str]:
    return {**env, "BETSTREAM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "BETSTREAM_GATEWAY_PORT": str(free_port()),
            "BETSTREAM_DB": "var/betstream.sqlite3", "BETSTREAM_KEYRING": "var/keyring.json"}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[[list[str], dict[str, str]],
                                               tuple[subprocess.Popen, Path]]]:
    """Start a demo in its own process group; whatever is left of it is killed at teardown
    (each child of betstream run has a group of its own: they are found by the log dir)."""
    started: list[subprocess.Popen] = []

    def run(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
        out = tmp_path / "run.out"
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                stdout=out.open("wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        started.append(proc)
        wait_for(lambda: RUNNING in out.read_text() or proc.poll() is not None, START_S,
                 "the demo to finish and keep running")
        assert proc.poll() is None, out.read_text()
        return proc, out

    yield run
    for proc in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(STOP_S)
    _kill_demo_children(tmp_path)


def _kill_demo_children(cwd: Path) -> None:
    """Processes working in this test's folder (redis-server in its var/redis): a failed
    stop leaves none behind."""
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if Path(os.readlink(proc_dir / "cwd")).is_relative_to(cwd):
                os.kill(int(proc_dir.name), signal.SIGKILL)


def _assert_all_stopped(proc: subprocess.Popen, out: Path, cwd: Path, redis_port: int) -> None:
    text = out.read_text()
    assert STOPPED in text, text
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()
    logs = {p.name: p.read_text() for p in (cwd / "var" / "log").glob("*.log")}
    assert set(logs) == {"writer.log", "confirmer.log", "gateway.log"}
    assert [name for name, text in logs.items() if "Traceback" in text] == []
    assert "Traceback" not in text
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # nothing left in its process group


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_betstream_run_stopped_through_its_process_group_exits_0(
        sig: signal.Signals, tmp_path: Path, env: dict[str, str], start) -> None:
    port = free_port()
    proc, out = start([*BETSTREAM, "run", "--users", "5", "--bets", "300"],
                      _demo_env(env, port))
    os.killpg(proc.pid, sig)
    assert proc.wait(STOP_S) == 0, out.read_text()
    _assert_all_stopped(proc, out, tmp_path, port)


def test_make_run_stopped_by_a_scripts_sigint_exits_0(tmp_path: Path, env: dict[str, str],
                                                      start) -> None:
    """A script's background job starts with SIGINT ignored, as here. `make run` used to
    see the writer stop on a SIGINT to its group, say `writer exited` and exit 2."""
    port = free_port()
    make = " ".join([*MAKE, "run", "BETSTREAM_RUN_ARGS='--users 5 --bets 300'"])
    proc, out = start(["bash", "-c", f"trap '' INT; exec {make}"], _demo_env(env, port))
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(STOP_S) == 0, out.read_text()
    _assert_all_stopped(proc, out, tmp_path, port)


def test_make_run_stopped_by_ctrl_c_stops_everything(tmp_path: Path, env: dict[str, str],
                                                     start) -> None:
    """A terminal's Ctrl-C: SIGINT to make and everything under it. betstream run stops its
    children and exits 0; make then reports the interrupt as make always does (130)."""
    port = free_port()
    proc, out = start([*WITH_SIGINT_DEFAULT, *MAKE, "run",
                       "BETSTREAM_RUN_ARGS=--users 5 --bets 300"], _demo_env(env, port))
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(STOP_S) == -signal.SIGINT, out.read_text()
    _assert_all_stopped(proc, out, tmp_path, port)


def test_a_writer_stopped_by_ctrl_c_leaves_no_traceback_from_its_admission_child(
        procs: Procs, redis_client: redis.Redis) -> None:
    """A Ctrl-C in the writer's terminal reaches its admission child too; the child used to
    die of KeyboardInterrupt and write its traceback into the writer's log."""
    writer = procs.start("writer")
    procs.start("load", "--users", "5", "--bets", "20000", "--quiet")  # it reads ahead
    wait_for(lambda: log_events(writer.log_path, "admission.started"), START_S,
             "the writer to start its admission child")
    os.killpg(writer.pid, signal.SIGINT)
    assert writer.wait(STOP_S) == 0
    log = Path(writer.log_path).read_text()
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-2000:]
