"""Shared fixtures: a private redis-server per session (never the machine's shared one),
fresh SQLite files per test, a keyring, and helpers to run real betstream processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from producer.client import Producer
from producer.signing import Keyring
from tests.torture.report import (  # noqa: F401  (hooks: the torture report, here so that
    pytest_runtest_logreport,  # the process that writes it, xdist's controller too, has them)
    pytest_terminal_summary,
)
from workers.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
BETSTREAM = [sys.executable, "-m", "workers.cli"]
KEYRING = {
    "frontend": {"secret": "frontend-test-secret-0001", "kinds": ["bet"]},
    "cashier": {"secret": "cashier-test-secret-00001", "kinds": ["deposit", "withdrawal"]},
    "settlement": {"secret": "settlement-test-secret-01", "kinds": ["settle"]},
    "trading": {"secret": "trading-desk-test-secret-1",
                "kinds": ["suspend_market", "resume_market", "settle_market"]},
    "payments": {"secret": "payments-desk-test-secret-1",
                 "kinds": ["withdrawal_hold", "withdrawal_post", "withdrawal_void"]},
}


def wait_for(condition: Callable[[], object], timeout_s: float = 30.0, what: str = "condition",
             interval_s: float = 0.05) -> object:
    """Poll until ``condition()`` is truthy; fail the test with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REDIS_START_S = 10.0
REDIS_PORT_ATTEMPTS_MAX = 5


class RedisStartError(RuntimeError):
    """The private redis-server did not come up."""


@dataclass
class RedisServer:
    """A real redis-server we own: tests may restart it, turn on AOF, or SIGKILL it."""

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        self.extra = extra or self.extra
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--dir", str(self.dir),
               "--logfile", str(self.dir / "redis.log"), *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        try:
            wait_for(lambda: _pings(client) or self.proc.poll() is not None, REDIS_START_S,
                     f"redis-server on port {self.port}")
        finally:
            client.close()
        if self.proc.poll() is not None:
            raise RedisStartError(f"redis-server exited on port {self.port}: "
                                  f"{self._log_tail()}")

    def start_on_a_free_port(self) -> None:
        """Start on a port nobody holds: another session (an xdist worker, a second
        checkout) may take the one ``free_port`` saw free before redis-server binds it."""
        for _ in range(REDIS_PORT_ATTEMPTS_MAX):
            try:
                self.start()
                return
            except RedisStartError:
                self.port = free_port()
        raise RedisStartError(f"no free port after {REDIS_PORT_ATTEMPTS_MAX} attempts")

    def _log_tail(self) -> str:
        log = self.dir / "redis.log"
        return log.read_text()[-500:] if log.exists() else "(no log)"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, *extra: str) -> None:
        self.kill()
        self.start(*extra)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def private_redis_server(directory: Path) -> Iterator[RedisServer]:
    """A redis-server of our own on a free port, killed when the generator closes."""
    server = RedisServer(directory)
    server.start_on_a_free_port()
    try:
        yield server
    finally:
        server.kill()


RUNNER_UMASK = 0o022  # the usual default (Debian, containers, CI runners)


@pytest.fixture(scope="session", autouse=True)
def usual_umask() -> Iterator[None]:
    """Files the tests write get the usual mode 0644, whatever the runner's umask: betstream
    refuses a keyring others may write, which a umask of 002 would make every one here."""
    before = os.umask(RUNNER_UMASK)
    yield
    os.umask(before)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's server (one per xdist worker). A module whose tests kill, restart or
    reconfigure Redis overrides this fixture with :func:`private_redis_server` per test."""
    yield from private_redis_server(tmp_path_factory.mktemp("redis"))


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A clean private Redis for each test (our own server, so FLUSHALL harms nobody)."""
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def keyring_path(tmp_path: Path) -> Path:
    path = tmp_path / "keyring.json"
    path.write_text(json.dumps(KEYRING))
    path.chmod(0o600)  # as an operator keeps it: others may not read it (no warning)
    return path


@pytest.fixture
def keyring(keyring_path: Path) -> Keyring:
    return Keyring.load(keyring_path)


@pytest.fixture
def env(redis_server: RedisServer, tmp_path: Path, keyring_path: Path) -> dict[str, str]:
    """Environment for betstream processes in this test."""
    return {
        **os.environ,
        "BETSTREAM_REDIS_URL": redis_server.url,
        "BETSTREAM_DB": str(tmp_path / "ledger.sqlite3"),
        "BETSTREAM_KEYRING": str(keyring_path),
        "BETSTREAM_LOG_FORMAT": "json",
        "BETSTREAM_PROGRESS_INTERVAL_S": "1",
        "BETSTREAM_GATEWAY_SECRET_FILE": str(tmp_path / "gateway-secret"),
        # a gateway started without --ops-port must not take another test's (or 9101)
        "BETSTREAM_GATEWAY_OPS_PORT": str(free_port()),
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
def settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        if key.startswith("BETSTREAM_"):
            monkeypatch.setenv(key, value)
    return load_settings(lease_ms=2000, batch_wait_ms=5)


@pytest.fixture
def producer(redis_client: redis.Redis, keyring: Keyring) -> Producer:
    return Producer(redis_client, keyring)


@dataclass
class Procs:
    """Real betstream processes started by a test; all are killed at teardown."""

    env: dict[str, str]
    logdir: Path
    started: list[subprocess.Popen] = field(default_factory=list)

    def start(self, *args: str, name: str | None = None, **env: str) -> subprocess.Popen:
        log = open(self.logdir / f"{name or args[0]}-{len(self.started)}.log", "wb")
        # Own process group: RQ's scheduler runs as a child process of the confirmer and
        # would outlive a SIGKILL of its parent, acting on the next test's Redis.
        proc = subprocess.Popen([*BETSTREAM, *args], env={**self.env, **env}, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        proc.log_path = log.name  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    def run(self, *args: str, timeout_s: float = 120, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([*BETSTREAM, *args], env={**self.env, **env}, cwd=ROOT,
                              capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)

    def stop_all(self) -> None:
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the process and anything it started
            except ProcessLookupError:
                pass
            proc.wait(10)


@pytest.fixture
def procs(env: dict[str, str], tmp_path: Path, redis_client: redis.Redis) -> Iterator[Procs]:
    """Processes on this test's clean Redis (``redis_client`` flushed it): a key an earlier
    test left on the worker's server (a lease set without expiry) must not reach them."""
    p = Procs(env, tmp_path)
    yield p
    p.stop_all()
