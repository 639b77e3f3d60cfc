"""Runs the gateway: the public listener and the operator listener in one process, one loop.

Both sockets are bound before anything is served, so a port in use is an operator's
message and exit code 2, not a traceback from inside the server.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette

from producer.errors import ConfigError
from workers.logs import get_logger
from workers.settings import Settings


@dataclass(frozen=True)
class Listener:
    host: str
    port: int

    def bind(self, role: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            return socket.create_server((self.host, self.port), family=family)
        except OSError as exc:
            raise ConfigError(f"the gateway's {role} listener cannot listen on "
                              f"{self.host}:{self.port}: {exc.strerror}") from None


def _url(sock: socket.socket, path: str = "/") -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def serve(settings: Settings, apps: tuple[Starlette, Starlette], public: Listener,
          operator: Listener, demo: bool) -> None:
    public_socket, operator_socket = public.bind("public"), operator.bind("operator")
    get_logger("betstream.gateway").info(
        "gateway.start", url=_url(public_socket), demo=demo,
        health=_url(operator_socket, "/health"), metrics=_url(operator_socket, "/metrics"))

    def server(app: Starlette, lifespan: str) -> uvicorn.Server:
        return uvicorn.Server(uvicorn.Config(
            app, log_config=None, log_level=settings.log_level, access_log=False,
            lifespan=lifespan))

    asyncio.run(_serve_both(server(apps[0], "on"), public_socket,
                            server(apps[1], "off"), operator_socket))


async def _serve_both(public: uvicorn.Server, public_socket: socket.socket,
                      operator: uvicorn.Server, operator_socket: socket.socket) -> None:
    """Until the public server stops (a signal: each server passes it on to the other as
    it stops); the operator listener stops with it."""
    operator_task = asyncio.create_task(operator.serve(sockets=[operator_socket]))
    try:
        await public.serve(sockets=[public_socket])
    finally:
        operator.should_exit = True
        await operator_task
