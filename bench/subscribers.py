"""Ingress -> WebSocket frame latency with many subscribers connected to one gateway.

The whole pipeline runs (writer, confirmer, gateway); a client process holds
``--sockets`` WebSockets, one per user, and records when each confirmation frame arrives.
Producers then stream signed intents for those users at a steady rate. Latency per intent
is the frame's arrival time minus its stream entry id's time (ingress), beside ingress ->
commit from the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Final

from bench.harness import Env, free_port, percentile, private_env, wait
from bench.latency import PCTS
from workers.adapters.intent_stream import backlog

USER_FIRST: Final = 1
CONNECT_TIMEOUT_S: Final = 60.0
RECEIVE_IDLE_S: Final = 30.0  # the client stops after this long without a frame


def measure(env: Env, rate: float, seconds: float, sockets: int) -> dict[str, Any]:
    port = free_port()
    env.start("writer")
    env.start("confirmer")
    env.start("gateway", "--port", str(port), "--ops-port", str(free_port()))
    client = env.client()
    wait(lambda: backlog(client) is not None, 30, "the writer's consumer group")
    users = list(range(USER_FIRST, USER_FIRST + sockets))
    tokens = env.run("token", *map(str, users)).stdout.split()
    (env.dir / "tokens").write_text("\n".join(f"{u} {t}" for u, t in zip(users, tokens)))
    frames = env.dir / "frames.jsonl"
    listener = env.start_python("bench.subscribers", "--listen", str(port),
                                str(env.dir / "tokens"), str(frames))
    wait(lambda: (env.dir / "connected").exists() or listener.poll() is not None,
         CONNECT_TIMEOUT_S * 2, f"{sockets:,} WebSockets to connect")
    bets = max(1, int(rate * seconds) - sockets)
    env.run("load", "--users", str(sockets), "--user-first", str(USER_FIRST), "--bets",
            str(bets), "--rate", str(rate), "--deposit", "100000000", "--quiet")
    wait(lambda: backlog(client) == (0, 0), 300, "the writer to drain")
    total = env.query("SELECT COUNT(*) FROM outcomes")[0][0]
    wait(lambda: _lines(frames) >= total, 300, "every confirmation frame")
    listener.terminate()
    listener.wait(30)
    return summarise(env, frames, rate, seconds, sockets, total)


def summarise(env: Env, frames: Path, rate: float, seconds: float, sockets: int,
              total: int) -> dict[str, Any]:
    ingress = {i: int(e.split("-")[0]) for i, e in env.query("SELECT id, entry_id FROM outcomes")}
    committed = [c - ingress[i] for i, c in env.query("SELECT id, committed_at FROM outcomes")]
    received = {}
    for line in frames.read_text().splitlines():
        intent_id, at_ms = json.loads(line)
        received.setdefault(intent_id, at_ms)  # the first frame of each intent
    framed = [at - ingress[i] for i, at in received.items() if i in ingress]
    return {"offered_per_s": rate, "seconds": seconds, "sockets": sockets, "intents": total,
            "frames": len(framed),
            **{f"commit_p{k}_ms": percentile(committed, q) for k, q in PCTS},
            **{f"frame_p{k}_ms": percentile(framed, q) for k, q in PCTS}}


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


async def _listen(port: int, tokens: Path, out: Path) -> None:
    """The client side: one socket per token; every frame's intent id and arrival time."""
    import websockets

    pairs = [line.split() for line in tokens.read_text().splitlines()]
    sockets = []
    for _, token in pairs:
        sockets.append(await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token}",
                                                open_timeout=CONNECT_TIMEOUT_S))
    # This process stands in for 10,000 browsers: its own pauses are not the gateway's.
    # With the collector on, walking 10,000 sockets' objects stalled it up to ~1 s at a
    # time and that showed as frame latency; a 20 s run allocates too little to need it.
    gc.freeze()
    gc.disable()
    (out.parent / "connected").write_text(str(len(sockets)))
    with open(out, "w", buffering=1) as sink:
        async def drain(ws) -> None:
            while True:
                try:
                    raw = await asyncio.wait_for(ws.recv(), RECEIVE_IDLE_S)
                except (asyncio.TimeoutError, websockets.ConnectionClosed):
                    return
                at_ms = time.time_ns() // 1_000_000
                sink.write(json.dumps([json.loads(raw)["id"], at_ms]) + "\n")

        await asyncio.gather(*(drain(ws) for ws in sockets))


def _raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", nargs=3, metavar=("PORT", "TOKENS", "OUT"),
                        help="(internal) be the client process")
    parser.add_argument("--sockets", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=3_000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    _raise_open_files_limit()
    if args.listen:
        port, tokens, out = args.listen
        asyncio.run(_listen(int(port), Path(tokens), Path(out)))
        return
    with private_env() as env:
        print(json.dumps(measure(env, args.rate, args.seconds, args.sockets), indent=2))


if __name__ == "__main__":
    sys.exit(main())
