"""`make run` and `betstream run` stop cleanly: every child stopped, exit 0, and no traceback
in any log, however the stop comes (a Ctrl-C, a script's SIGINT, SIGTERM to the group)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from tests.conftest import BETSTREAM, ROOT, free_port, wait_for

RUNNING = "Ctrl-C stops."
STOPPED = "stopped writer, confirmer, gateway and redis-server"
START_S, STOP_S = 90, 30
# make must not rebuild the venv this test runs in (make test has just built it)
MAKE = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"),
        "-o", str(ROOT / ".venv" / ".installed-stamp")]


def _demo_env(env: dict[str, str], redis_port: int) -> dict[str, str]:
    return {**env, "BETSTREAM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "BETSTREAM_GATEWAY_PORT": str(free_port()),
            "BETSTREAM_DB": "var/betstream.sqlite3", "BETSTREAM_KEYRING": "var/keyring.json"}


def _start(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    out = cwd / "run.out"
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=out.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_for(lambda: RUNNING in out.read_text() or proc.poll() is not None, START_S,
             "the demo to finish and keep running")
    assert proc.poll() is None, out.read_text()
    return proc, out


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
        sig: signal.Signals, tmp_path: Path, env: dict[str, str]) -> None:
    port = free_port()
    proc, out = _start([*BETSTREAM, "run", "--users", "5", "--bets", "300"], tmp_path,
                       _demo_env(env, port))
    os.killpg(proc.pid, sig)
    assert proc.wait(STOP_S) == 0, out.read_text()
    _assert_all_stopped(proc, out, tmp_path, port)


def test_make_run_stopped_by_a_scripts_sigint_exits_0(tmp_path: Path,
                                                      env: dict[str, str]) -> None:
    """A script's background job starts with SIGINT ignored, as here. `make run` used to
    see the writer stop on a SIGINT to its group, say `writer exited` and exit 2."""
    port = free_port()
    make = " ".join([*MAKE, "run", "BETSTREAM_RUN_ARGS='--users 5 --bets 300'"])
    proc, out = _start(["bash", "-c", f"trap '' INT; exec {make}"], tmp_path,
                       _demo_env(env, port))
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(STOP_S) == 0, out.read_text()
    _assert_all_stopped(proc, out, tmp_path, port)


def test_make_run_stopped_by_ctrl_c_stops_everything(tmp_path: Path,
                                                     env: dict[str, str]) -> None:
    """A terminal's Ctrl-C: SIGINT to make and everything under it. betstream run stops its
    children and exits 0; make then reports the interrupt as make always does (130)."""
    port = free_port()
    proc, out = _start([*MAKE, "run", "BETSTREAM_RUN_ARGS=--users 5 --bets 300"], tmp_path,
                       _demo_env(env, port))
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(STOP_S) == -signal.SIGINT, out.read_text()
    _assert_all_stopped(proc, out, tmp_path, port)
