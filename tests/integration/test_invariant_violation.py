"""An invariant violation is a bug, not a fault: the writer never retries it as a store
error. It rolls the batch back, forces the breaker open (producers shed instead of feeding
a stopped writer), logs the error with the batch, and the process exits non-zero."""

from __future__ import annotations

import threading

import pytest
import redis
import structlog

from producer.breaker_state import OPEN
from producer.client import Producer
from producer.contract import new_deposit
from producer.errors import InvariantViolation
from producer.signing import Keyring
from tests.support import drained, query
from workers.adapters.breaker_store import BreakerStore
from workers.adapters.ledger_store import Store
from workers.settings import Settings
from workers.writer.batch_writer import Writer
from workers.writer.breaker_hook import BreakerHook
from workers.writer.hooks import Hooks, ProgressLog

STOP_S = 30


def _broken_write(self: Store, batch: object) -> None:
    """What a store check finds mid-transaction (say, a balance update that missed one)."""
    raise InvariantViolation("a balance update missed an account or met one twice")


def test_the_writer_stops_rolls_back_and_forces_the_breaker_open(
        settings: Settings, keyring: Keyring, producer: Producer, redis_client: redis.Redis,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Store, "_write", _broken_write)
    s = settings.model_copy(update={"admission_process": False})
    breaker = BreakerStore(redis_client, s.breaker_limits)
    hooks = Hooks(ProgressLog(s.progress_interval_s), BreakerHook(breaker, 1.0))
    writer = Writer(s, redis.Redis.from_url(s.redis_url),
                    Store(s.db, s.sqlite_busy_timeout_ms), keyring, hooks, consumer="w")
    producer.submit(new_deposit(5, 100))
    raised: list[BaseException] = []

    def run() -> None:
        try:
            writer.run(threading.Event())
        except BaseException as exc:  # the thread hands it to the test
            raised.append(exc)

    with structlog.testing.capture_logs() as logs:
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(STOP_S)
    writer.close()
    assert not thread.is_alive(), "the writer stopped by itself"
    assert [type(e) for e in raised] == [InvariantViolation], "raised, never retried"
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "writer.invariant_violation"]
    state = breaker.load().breaker
    assert (state.state, state.forced) == (OPEN, True) and "invariant" in state.reason
    assert query(s.db, "SELECT COUNT(*) FROM outcomes") == [(0,)], "nothing committed"
    assert not drained(redis_client), "the entry stays pending for a fixed writer"
