"""Benchmark plumbing: a private redis-server, fresh SQLite files, betstream processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Iterator

import redis

from workers.ops.demo_run import REDIS_SERVER_TUNING

ROOT = Path(__file__).resolve().parents[1]
KEYRING = {
    "frontend": {"secret": "bench-frontend-secret-0001", "kinds": ["bet"]},
    "cashier": {"secret": "bench-cashier-secret-00001", "kinds": ["deposit", "withdrawal"]},
    "settlement": {"secret": "bench-settlement-secret-1", "kinds": ["settle"]},
    "trading": {"secret": "bench-trading-desk-secret-1",
                "kinds": ["suspend_market", "resume_market", "settle_market"]},
}
# Kinds every revision knows (contract v1): a keyring another revision (--compare) can load.
KEYRING_V1 = {kid: key for kid, key in KEYRING.items() if kid != "trading"}


REDIS_TCP_ENV: Final = "BENCH_REDIS_TCP"  # set: every process reaches Redis over TCP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Env:
    dir: Path
    port: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    logs: dict[int, Path] = field(default_factory=dict)  # pid -> that process's log file

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def redis_url(self) -> str:
        """Over the private server's Unix socket, as processes on one machine would talk to
        it (TCP loopback cost ~1-1.5 us more CPU per intent over the producers, the child
        and Redis); ``BENCH_REDIS_TCP=1`` measures over TCP instead."""
        if os.environ.get(REDIS_TCP_ENV):
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    @property
    def db(self) -> Path:
        return self.dir / "ledger.sqlite3"

    def environ(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "BETSTREAM_REDIS_URL": self.redis_url,
                "BETSTREAM_DB": str(self.db), "BETSTREAM_KEYRING": str(self.dir / "keyring.json"),
                "BETSTREAM_GATEWAY_SECRET_FILE": str(self.dir / "gateway-secret"),
                "BETSTREAM_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT), **extra}

    def start(self, *args: str, root: Path = ROOT, wrap: tuple[str, ...] = (),
              **extra: str) -> subprocess.Popen:
        """``betstream ARGS`` from the code at ``root`` (another checkout, to compare),
        under ``wrap`` (a command prefix such as valgrind), with ``extra`` settings."""
        path = self.dir / f"{args[0]}-{len(self.procs)}.log"
        environ = self.environ(**{"PYTHONPATH": str(root), **extra})
        with open(path, "wb") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen([*wrap, sys.executable, "-m", "workers.cli", *args],
                                    cwd=root, env=environ, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        self.logs[proc.pid] = path
        return proc

    def start_python(self, module: str, *args: str) -> subprocess.Popen:
        """``python -m MODULE ARGS`` from this checkout (a bench helper process)."""
        path = self.dir / f"{module}-{len(self.procs)}.log"
        with open(path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT,
                                    env=self.environ(), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        self.logs[proc.pid] = path
        return proc

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT,
                              env=self.environ(**extra), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, check=True)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@contextmanager
def private_env(keep: bool = False, keyring: dict | None = None) -> Iterator[Env]:
    """A fresh directory, keyring (``KEYRING`` unless given) and redis-server (no
    persistence) for one measurement."""
    tmp = Path(tempfile.mkdtemp(prefix="betstream-bench-"))
    (tmp / "keyring.json").write_text(json.dumps(KEYRING if keyring is None else keyring))
    (tmp / "keyring.json").chmod(0o600)  # as an operator keeps it (others' read: a warning)
    env = Env(tmp, free_port())
    server = subprocess.Popen(
        ["redis-server", "--port", str(env.port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp), "--unixsocket", str(env.socket_path),
         "--unixsocketperm", "700", *REDIS_SERVER_TUNING], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        wait(lambda: _pings(env), 10, "redis-server")
        yield env
    finally:
        for proc in env.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in env.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.kill()
        server.wait()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _pings(env: Env) -> bool:
    try:
        return bool(env.client().ping())
    except redis.RedisError:
        return False


def wait(check, timeout_s: float, what: str, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


SPEED_INDEX_LOOPS = 2_000_000  # a fixed pure-Python workload: ~80-150 ms on these machines


def speed_index_ms(tries: int = 5) -> float:
    """Milliseconds for a fixed single-threaded Python loop, the median of ``tries``.
    Shared machines drift by more than the changes being measured; this number, taken
    beside a measurement, says how fast the machine was then (lower is faster). The
    median, not the best: a drain suffers the machine's typical speed, not its peak."""
    times = []
    for _ in range(tries):
        started = time.perf_counter()
        table: dict[int, str] = {}
        for i in range(SPEED_INDEX_LOOPS):
            table[i & 0xFFFF] = "x"
        times.append(time.perf_counter() - started)
    return round(sorted(times)[len(times) // 2] * 1000, 1)
