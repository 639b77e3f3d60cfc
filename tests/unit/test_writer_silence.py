"""How a watcher reckons a writer's silence from its beacons: pure rules
with an injected clock, and the settings that bound it."""

from __future__ import annotations

import pytest

from producer.errors import ConfigError
from workers.core.writer_silence import Silence, newest_live_beat, observe, overdue_ms
from workers.settings import load_settings

MAX_MS = 20_000


def test_only_beacons_of_writers_that_may_commit_are_signs_of_life() -> None:
    beacons = [{"state": "leading", "beat_ms": "1000"}, {"state": "retrying", "beat_ms": "900"},
               {"state": "standby", "beat_ms": "5000"}, {"state": "starting", "beat_ms": "1200"},
               {"state": "leading", "beat_ms": "garbled"}, {}]
    assert newest_live_beat(beacons) == 1200
    assert newest_live_beat([{"state": "standby", "beat_ms": "5000"}]) is None


def test_a_fresh_beat_is_never_overdue() -> None:
    s = observe(Silence(), 100_000, 99_000, waiting=50)
    assert overdue_ms(s, 100_000, MAX_MS) is None


def test_silence_counts_from_the_last_beat_even_after_the_beacon_expired() -> None:
    s = observe(Silence(), 10_000, 9_000, waiting=0)
    s = observe(s, 25_000, None, waiting=3)  # the beacon expired: the beat is remembered
    assert overdue_ms(s, 25_000, MAX_MS) is None, "16 s < 20 s"
    s = observe(s, 29_000, None, waiting=3)
    assert overdue_ms(s, 29_000, MAX_MS) == 20_000


def test_nothing_waiting_is_never_overdue() -> None:
    s = observe(observe(Silence(), 0, 0, waiting=0), 100_000, None, waiting=0)
    assert overdue_ms(s, 100_000, MAX_MS) is None


def test_a_watcher_that_never_saw_a_writer_counts_from_when_intents_first_waited() -> None:
    s = observe(Silence(), 1_000_000, None, waiting=5)
    assert overdue_ms(s, 1_000_000, MAX_MS) is None, "a watcher just started never trips"
    s = observe(s, 1_019_999, None, waiting=5)
    assert overdue_ms(s, 1_019_999, MAX_MS) is None
    s = observe(s, 1_020_000, None, waiting=6)
    assert overdue_ms(s, 1_020_000, MAX_MS) == 20_000
    s = observe(s, 1_030_000, None, waiting=0)  # drained (or trimmed) meanwhile
    s = observe(s, 1_040_000, None, waiting=1)
    assert overdue_ms(s, 1_040_000, MAX_MS) is None, "counting starts again"


def test_a_beat_from_a_clock_ahead_of_ours_means_alive_now_not_later() -> None:
    s = observe(Silence(), 10_000, 60_000, waiting=1)
    assert s.last_beat_ms == 10_000
    assert overdue_ms(observe(s, 30_000, None, waiting=1), 30_000, MAX_MS) == 20_000


def test_the_bound_defaults_above_a_failover_and_follows_a_longer_lease(monkeypatch) -> None:
    for name in ("BETSTREAM_LEASE_MS", "BETSTREAM_HEALTH_TTL_MS", "BETSTREAM_STANDBY_POLL_MS",
                 "BETSTREAM_WRITER_SILENT_MAX_MS"):
        monkeypatch.delenv(name, raising=False)
    assert load_settings().writer_silence_bound_ms == 20_000
    long_lease = load_settings(lease_ms=60_000)
    assert long_lease.writer_silence_bound_ms > long_lease.writer_failover_ms == 65_500
    assert load_settings(writer_silent_max_ms=15_501).writer_silence_bound_ms == 15_501


def test_a_bound_a_failover_would_trip_is_refused(monkeypatch) -> None:
    monkeypatch.delenv("BETSTREAM_LEASE_MS", raising=False)
    with pytest.raises(ConfigError, match=r"writer_silent_max_ms must exceed .*\(15500 ms\)"):
        load_settings(writer_silent_max_ms=15_500)
