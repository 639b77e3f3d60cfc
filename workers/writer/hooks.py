"""Cross-cutting concerns of the writer as small hooks (cf. dramatiq's middleware).

The batch pipeline calls ``hooks.<event>(...)``; logging, progress, health and (later)
metrics and breaker reports subscribe here instead of being threaded through decisions.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field

import redis

from producer import constants as c
from workers.adapters.metrics_store import Recorder
from workers.logs import get_logger


@dataclass(frozen=True, slots=True)
class BatchReport:
    size: int
    accepted: int
    rejected: Counter[str]
    dead: Counter[str]
    repeats: int
    commit_ms: float
    oldest_ingress_ms: int | None
    ingress_to_commit_ms: list[int] = field(default_factory=list)


class Hook:
    """No-op base: a hook overrides only the events it cares about."""

    def on_lead(self, epoch: int, claimed: int) -> None: ...
    def on_standby(self, holder: str | None) -> None: ...
    def on_batch(self, report: BatchReport) -> None: ...
    def on_retry(self, what: str, error: Exception, attempt: int, delay_ms: int) -> None: ...
    def on_fenced(self, error: Exception) -> None: ...
    def on_idle(self) -> None: ...
    def on_invariant_violation(self, error: Exception) -> None: ...
    def on_redis_data_lost(self, committed_seq: int) -> None: ...


class Hooks(Hook):
    """Fan one event out to several hooks."""

    def __init__(self, *hooks: Hook) -> None:
        self._hooks = hooks

    def on_lead(self, epoch: int, claimed: int) -> None:
        for h in self._hooks:
            h.on_lead(epoch, claimed)

    def on_standby(self, holder: str | None) -> None:
        for h in self._hooks:
            h.on_standby(holder)

    def on_batch(self, report: BatchReport) -> None:
        for h in self._hooks:
            h.on_batch(report)

    def on_retry(self, what: str, error: Exception, attempt: int, delay_ms: int) -> None:
        for h in self._hooks:
            h.on_retry(what, error, attempt, delay_ms)

    def on_fenced(self, error: Exception) -> None:
        for h in self._hooks:
            h.on_fenced(error)

    def on_idle(self) -> None:
        for h in self._hooks:
            h.on_idle()

    def on_invariant_violation(self, error: Exception) -> None:
        for h in self._hooks:
            h.on_invariant_violation(error)

    def on_redis_data_lost(self, committed_seq: int) -> None:
        for h in self._hooks:
            h.on_redis_data_lost(committed_seq)


@dataclass
class ProgressLog(Hook):
    """A progress line every ``interval_s`` while work flows, plus every fault as it happens."""

    interval_s: float
    log: object = field(default_factory=lambda: get_logger("betstream.writer"))
    totals: Counter[str] = field(default_factory=Counter)
    _last: float = field(default_factory=time.monotonic)
    _since: int = 0

    def on_lead(self, epoch: int, claimed: int) -> None:
        self.log.info("writer.leading", epoch=epoch, pending_claimed=claimed)

    def on_standby(self, holder: str | None) -> None:
        self.log.info("writer.standby", lease_holder=holder)

    def on_batch(self, report: BatchReport) -> None:
        self.totals["intents"] += report.size
        self.totals["duplicates"] += report.repeats
        self.totals["accepted"] += report.accepted
        self.totals.update({f"rejected:{k}": v for k, v in report.rejected.items()})
        self.totals.update({f"deadletter:{k}": v for k, v in report.dead.items()})
        self._since += report.size
        self._maybe_report()

    def on_idle(self) -> None:
        self._maybe_report()

    def _maybe_report(self) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s or not self._since:
            return
        rate = self._since / (now - self._last)
        self.log.info("writer.progress", per_s=round(rate), **dict(self.totals))
        self._last, self._since = now, 0

    def on_retry(self, what: str, error: Exception, attempt: int, delay_ms: int) -> None:
        self.log.warning("writer.retry", step=what, error=str(error), attempt=attempt,
                         delay_ms=delay_ms)

    def on_fenced(self, error: Exception) -> None:
        self.log.error("writer.fenced_out", error=str(error))

    def on_invariant_violation(self, error: Exception) -> None:
        self.log.error("writer.invariant_violation", error=str(error),
                       action="the breaker is forced open and the writer stops; audit the "
                              "ledger before starting a writer again")

    def on_redis_data_lost(self, committed_seq: int) -> None:
        self.log.error("redis.data_lost", last_committed_seq=committed_seq,
                       consequence="intents Redis acknowledged (XADD) but the writer had "
                                   "not committed may be lost; every committed outcome is "
                                   "kept and confirmed again",
                       action="run `betstream reconcile` with the producers' journals to "
                              "list them; the writer recreated its group and goes on")


@dataclass
class HealthBeacon(Hook):
    """Keeps ``betstream:writer:health`` fresh so the gateway and operators can see us."""

    client: redis.Redis
    consumer: str
    ttl_ms: int
    state: str = "starting"
    epoch: int = 0
    committed: int = 0
    last_batch_ms: int = 0
    last_fault: str = ""  # the latest retried fault (kept after recovery, for operators)
    last_fault_ms: int = 0
    data_lost_ms: int = 0  # when this writer last found Redis without its data
    data_lost_seq: int = 0  # the last committed seq then
    _last_beat: float = 0.0

    def on_lead(self, epoch: int, claimed: int) -> None:
        self.state, self.epoch = "leading", epoch
        self._beat(force=True)

    def on_standby(self, holder: str | None) -> None:
        self.state = "standby"
        self._beat()

    def on_retry(self, what: str, error: Exception, attempt: int, delay_ms: int) -> None:
        """A leading writer that retries a step is not healthy: ``betstream health`` says so
        (while Redis itself is away the beat cannot land; the breaker records the outage)."""
        self.last_fault = f"{what}: {error}"[:200]
        self.last_fault_ms = time.time_ns() // 1_000_000
        changed = self.state == "leading"
        if changed:
            self.state = "retrying"
        self._beat(force=changed)  # later retries beat at the usual pace

    def on_redis_data_lost(self, committed_seq: int) -> None:
        self.data_lost_ms, self.data_lost_seq = time.time_ns() // 1_000_000, committed_seq
        self._beat(force=True)

    def on_batch(self, report: BatchReport) -> None:
        self.committed += report.size
        self.last_batch_ms = time.time_ns() // 1_000_000
        self._beat(force=self._resumed())

    def on_idle(self) -> None:
        self._beat(force=self._resumed())

    def _resumed(self) -> bool:
        if self.state != "retrying":
            return False
        self.state = "leading"
        return True

    def _beat(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_beat < self.ttl_ms / 3000:
            return
        self._last_beat = now
        key = f"{c.KEY_WRITER_HEALTH}:{self.consumer}"
        fields = {"state": self.state, "epoch": self.epoch, "pid": os.getpid(),
                  "committed": self.committed, "last_batch_ms": self.last_batch_ms,
                  "last_fault": self.last_fault, "last_fault_ms": self.last_fault_ms,
                  "redis_data_lost_ms": self.data_lost_ms,
                  "redis_data_lost_seq": self.data_lost_seq,
                  "beat_ms": time.time_ns() // 1_000_000}
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, mapping=fields)
            pipe.pexpire(key, self.ttl_ms)
            pipe.execute()
        except redis.RedisError:
            pass  # health is best effort; the batch path reports Redis faults itself


@dataclass
class MetricsHook(Hook):
    """Counts and latency histograms into Redis (read back by the gateway's /metrics)."""

    recorder: Recorder

    def on_batch(self, report: BatchReport) -> None:
        r = self.recorder
        r.count("accepted", report.accepted)
        for reason, n in report.rejected.items():
            r.count(f"rejected:{reason}", n)
        for reason, n in report.dead.items():
            r.count(f"deadletter:{reason}", n)
        r.count("duplicates", report.repeats)
        r.observe_many("batch_size", [report.size])
        r.observe_many("commit_ms", [report.commit_ms])
        r.observe_many("ingress_to_commit_ms", report.ingress_to_commit_ms)
        r.maybe_flush()

    def on_idle(self) -> None:
        self.recorder.maybe_flush()

    def on_redis_data_lost(self, committed_seq: int) -> None:
        self.recorder.count("redis_data_lost")
        self.recorder.maybe_flush(force=True)  # rare, and operators want it now
