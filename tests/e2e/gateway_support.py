"""Start the whole pipeline (writer, confirmer, gateway) as real processes for a test."""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx
from websockets.sync.client import ClientConnection, connect

from tests.conftest import Procs, free_port, wait_for


@dataclass
class Pipeline:
    procs: Procs
    port: int
    ops_port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ops(self) -> str:
        """The operator listener: /metrics and the detailed /health."""
        return f"http://127.0.0.1:{self.ops_port}"

    def token(self, user_id: int, *extra: str) -> str:
        done = self.procs.run("token", str(user_id), *extra)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def ws(self, token: str, since: int | None = None) -> ClientConnection:
        query = f"token={token}" + (f"&since={since}" if since is not None else "")
        return connect(f"ws://127.0.0.1:{self.port}/ws?{query}", open_timeout=10)


def gateway_args(port: int, ops_port: int) -> tuple[str, ...]:
    return "--port", str(port), "--ops-port", str(ops_port)


def start_pipeline(procs: Procs, demo: bool = False, **env: str) -> Pipeline:
    port, ops_port = free_port(), free_port()
    procs.start("writer", **env)
    procs.start("confirmer", **env)
    procs.start("gateway", *gateway_args(port, ops_port), *(["--demo"] if demo else []), **env)
    pipeline = Pipeline(procs, port, ops_port)
    wait_for(lambda: _healthy(pipeline), 60, "writer, confirmer and gateway to be healthy")
    return pipeline


def start_gateway(procs: Procs, **env: str) -> Pipeline:
    """The gateway alone (no writer or confirmer): confirmations are PUBLISHed by the test."""
    port, ops_port = free_port(), free_port()
    procs.start("gateway", *gateway_args(port, ops_port), **env)
    pipeline = Pipeline(procs, port, ops_port)
    wait_for(lambda: _upstream_connected(pipeline), 60, "the gateway's upstream subscription")
    return pipeline


def gateway_state(pipeline: Pipeline) -> dict:
    """The gateway's own part of /health (200 or 503: the writer may not run)."""
    return httpx.get(f"{pipeline.ops}/health", timeout=5).json().get("gateway", {})


def _upstream_connected(pipeline: Pipeline) -> bool:
    try:
        return bool(gateway_state(pipeline).get("upstream"))
    except httpx.HTTPError:
        return False


def _healthy(pipeline: Pipeline) -> bool:
    try:
        return httpx.get(f"{pipeline.http}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def receive(ws: ClientConnection, count: int, timeout_s: float = 20) -> list[dict]:
    """Exactly ``count`` messages, each within the deadline."""
    return [json.loads(ws.recv(timeout=timeout_s)) for _ in range(count)]


class Collector:
    """Reads a WebSocket on its own thread, as a browser would, so frames (and pongs)
    never pile up unread while the test waits on something else."""

    def __init__(self, ws: ClientConnection) -> None:
        import threading

        self.ws = ws
        self.messages: list[dict] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for raw in self.ws:
                self.messages.append(json.loads(raw))
        except ConnectionClosed:
            pass

    def close(self) -> list[dict]:
        self.ws.close()
        self._thread.join(10)
        return self.messages
