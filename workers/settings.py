"""One frozen settings object, built from ``BETSTREAM_*`` environment variables.

Every bound the service relies on (batch sizes, waits, TTLs, retries, queue lengths) is a
named field here with a safe default, so operators can see and tune it, and no module
keeps its own global configuration. Build it once with :func:`load_settings` and pass it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from producer.breaker_state import BreakerLimits
from producer.errors import ConfigError

LISTING_INTERVAL_MS_DEFAULT: Final = 1_000
# A round starts once this many ledger rows wait past the mark: each page of
# user_entries is written about once per round, and a statement scans at most this many
# rows (plus what a round takes to finish) of the ledger's tail.
LISTING_LAG_ROWS_MIN_DEFAULT: Final = 200_000
# Rows listed per transaction (a slice of rows in (account, entry) order):
# the longest the writer's next commit waits for the write lock.
LISTING_SLICE_ROWS_MAX_DEFAULT: Final = 20_000


@dataclass(frozen=True, slots=True)
class Listing:
    """How the writer's lister runs (settings ``LISTING_*``)."""

    interval_ms: int = LISTING_INTERVAL_MS_DEFAULT
    lag_rows_min: int = LISTING_LAG_ROWS_MIN_DEFAULT
    slice_rows_max: int = LISTING_SLICE_ROWS_MAX_DEFAULT


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BETSTREAM_", frozen=True, extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    db: Path = Path("./var/betstream.sqlite3")
    keyring: Path = Path("./var/keyring.json")
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Batching: one SQLite transaction per batch of at most batch_size_max intents. A batch
    # is what is waiting, up to this: small under light load, large under heavy load.
    # Each batch writes every index page it touches to the WAL; the per-user ledger index
    # took one page per distinct user, so a larger batch wrote fewer pages per intent,
    # more so as the ledger grew: 4000 wrote ~half the pages per intent of 1000, and
    # 8000 drained 2M intents 12 % faster than 4000 (docs/performance.md, round 6). Since
    # schema 5 that index is user_entries, listed in bulk beside the writer (listing_*).
    batch_size_max: int = Field(8000, ge=1, le=100_000)
    batch_wait_ms: int = Field(20, ge=1, le=10_000)
    # A batch keeps tens of GC-tracked objects per intent alive until it is finished, so
    # CPython's young collections (every 700 net allocations; 50,000 until round 4) ran
    # several times per batch and found them all alive. Startup objects are frozen out of
    # the GC, and a collection waits for this many net new objects: in steady state
    # reference counting frees each batch first (workers/writer/gc_tuning.py). Writer and its child.
    writer_gc_gen0_threshold: int = Field(1_000_000, ge=100, le=10_000_000)
    # Read and admit the next batch while this one commits on the committer thread.
    commit_overlap: bool = True
    # ... once a batch holds at least this many entries (or batch_size_max, if smaller).
    # Under light load overlapping only splits the flow into more, smaller batches, one
    # confirmation job each. A stream fed at tens of thousands per second rarely leaves a
    # full batch waiting, and without overlap each batch is read, admitted, decided and
    # committed in turn (docs/performance.md, round 8).
    read_ahead_size_min: int = Field(1000, ge=1, le=100_000)
    # ... and do that reading and admitting in a child process, on the other core (the
    # writer is bound by the GIL; workers/writer/admission.py). A child that fails or stays
    # silent past the reply timeout is stopped; the writer reads what it had read from its
    # own pending list, reads in process meanwhile and starts a new child after
    # admission_restart_ms.
    admission_process: bool = True
    admission_reply_timeout_ms: int = Field(10_000, ge=100, le=600_000)
    admission_restart_ms: int = Field(5_000, ge=0, le=3_600_000)
    # How long a thread may hold the GIL before another asks for it back: the committer
    # thread needs it for a moment after every SQLite step (CPython's default is 5000).
    writer_switch_interval_us: int = Field(500, ge=50, le=100_000)
    pending_claim_count: int = Field(1000, ge=1, le=100_000)

    # Freshness and replay protection (the seed's 90 s nonce TTL).
    nonce_ttl_s: int = Field(90, ge=1, le=86_400)
    intent_age_max_ms: int = Field(60_000, ge=100)
    clock_skew_max_ms: int = Field(5_000, ge=0)

    # Single writer: Redis lease plus fencing epoch in SQLite.
    lease_ms: int = Field(10_000, ge=500, le=600_000)
    standby_poll_ms: int = Field(500, ge=10, le=60_000)

    # Retries of a failed commit or Redis call: bounded exponential backoff with jitter.
    retry_backoff_min_ms: int = Field(50, ge=1)
    retry_backoff_max_ms: int = Field(5_000, ge=1)
    sqlite_busy_timeout_ms: int = Field(2_000, ge=0, le=600_000)
    # The writer's lister lists ledger rows in user_entries, the table statements find an
    # account's entries in (workers/adapters/ledger_listing.py): a round every listing_interval_ms once
    # listing_lag_rows_min rows wait (more: fewer page writes per posting, a longer tail
    # for statements to scan), in transactions of about listing_slice_rows_max rows (the
    # longest a commit waits for the write lock).
    listing_interval_ms: int = Field(LISTING_INTERVAL_MS_DEFAULT, ge=10, le=3_600_000)
    listing_lag_rows_min: int = Field(LISTING_LAG_ROWS_MIN_DEFAULT, ge=1, le=10_000_000)
    listing_slice_rows_max: int = Field(LISTING_SLICE_ROWS_MAX_DEFAULT, ge=1, le=10_000_000)

    # Retention of the intents stream: acknowledged entries older than this are trimmed
    # (never one still pending or undelivered), checked every intents_trim_interval_s.
    intents_retention_ms: int = Field(3_600_000, ge=0)
    intents_trim_interval_s: float = Field(10.0, gt=0)

    # Retention of the output streams (approximate MAXLEN).
    confirmations_len_max: int = Field(200_000, ge=1_000)
    deadletter_len_max: int = Field(100_000, ge=100)

    # Archival (betstream archive): per-month files in archive_dir (default: an "archive"
    # directory beside the ledger), moved in chunks of at most archive_chunk_rows_max ledger
    # rows / archive_chunk_batches_max batches, each a short live transaction.
    archive_dir: Path | None = None
    archive_chunk_rows_max: int = Field(5_000, ge=1, le=1_000_000)
    archive_chunk_batches_max: int = Field(500, ge=1, le=100_000)
    archive_pause_ms: int = Field(20, ge=0, le=60_000)  # the writer's turn between chunks

    # Confirmer (RQ worker): one job per committed batch, retried until delivered.
    # Per-user replay window for reconnecting subscribers: memory is users x this, so it is
    # kept short (a bet slip needs its last few outcomes, not its history).
    user_confirmations_len_max: int = Field(100, ge=10)
    user_confirmations_ttl_s: int = Field(3_600, ge=60)
    confirm_job_timeout_s: int = Field(30, ge=1)
    confirm_retries_max: int = Field(20, ge=1)
    confirm_failure_ttl_s: int = Field(7 * 86_400, ge=60)  # failed jobs stay visible
    confirm_worker_ttl_s: int = Field(20, ge=16)  # RQ blocks for worker_ttl - 15 s at most
    confirm_maintenance_s: int = Field(5, ge=1)  # how often abandoned jobs are looked for
    confirm_monitoring_s: int = Field(5, ge=1)
    confirm_heartbeat_grace_s: int = Field(10, ge=1)
    confirm_guard_ttl_s: int = Field(3_600, ge=60)  # a published job is not re-published
    # Under light load every batch is one confirmation job, and RQ's per-job cost caps the
    # confirmer. When at least confirm_jobs_waiting_max jobs wait, the writer waits
    # confirm_linger_ms before reading a batch that would not be full: fewer, bigger jobs.
    # A full batch (a backlog) never waits; 0 turns it off.
    confirm_jobs_waiting_max: int = Field(2, ge=1, le=1_000_000)
    confirm_linger_ms: int = Field(50, ge=0, le=10_000)

    # Gateway (WebSocket confirmations, bet lookups, health, metrics).
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8000, ge=0, le=65_535)
    gateway_secret_file: Path = Path("./var/gateway-secret")
    token_ttl_s: int = Field(3_600, ge=1, le=30 * 86_400)
    ws_seen_max: int = Field(10_000, ge=100)  # seqs remembered per WebSocket for dedupe

    # Circuit breaker (state shared in Redis; the seed's 30 s stability window).
    breaker_failures_max: int = Field(3, ge=1)
    breaker_commit_ms_max: int = Field(2_000, ge=1)
    breaker_backlog_age_ms_max: int = Field(30_000, ge=100)
    breaker_cooldown_s: float = Field(5.0, gt=0)
    breaker_cooldown_max_s: float = Field(60.0, gt=0)
    breaker_stability_s: float = Field(30.0, gt=0)
    breaker_half_open_share: float = Field(0.1, ge=0, le=1)
    breaker_sync_ms: int = Field(1_000, ge=10)  # how often the writer re-reads operator changes

    # Observability.
    progress_interval_s: float = Field(5.0, gt=0)
    health_ttl_ms: int = Field(15_000, ge=1_000)
    metrics_flush_interval_s: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _bounds_agree(self) -> Settings:
        if self.intent_age_max_ms >= self.nonce_ttl_s * 1000:
            raise ValueError(
                "intent_age_max_ms must stay below nonce_ttl_s, or a replayed nonce could "
                "outlive its record"
            )
        if self.breaker_backlog_age_ms_max >= self.intent_age_max_ms:
            raise ValueError(
                "breaker_backlog_age_ms_max must stay below intent_age_max_ms, so load is "
                "shed before intents turn stale")
        if self.retry_backoff_min_ms > self.retry_backoff_max_ms:
            raise ValueError("retry_backoff_min_ms must not exceed retry_backoff_max_ms")
        return self

    @property
    def listing(self) -> Listing:
        return Listing(self.listing_interval_ms, self.listing_lag_rows_min,
                       self.listing_slice_rows_max)

    @property
    def breaker_limits(self) -> BreakerLimits:
        return BreakerLimits(
            failures_max=self.breaker_failures_max, commit_ms_max=self.breaker_commit_ms_max,
            backlog_age_ms_max=self.breaker_backlog_age_ms_max,
            cooldown_s=self.breaker_cooldown_s, cooldown_max_s=self.breaker_cooldown_max_s,
            stability_s=self.breaker_stability_s,
            half_open_share=self.breaker_half_open_share)

    @property
    def archive_path(self) -> Path:
        return self.archive_dir if self.archive_dir is not None else self.db.parent / "archive"

    @property
    def lease_renew_ms(self) -> int:
        """Renew well before expiry: three chances per lease period."""
        return self.lease_ms // 3


def load_settings(**overrides: object) -> Settings:
    """Read the environment (and explicit overrides); bad values become a ConfigError."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            name = ".".join(str(p) for p in err["loc"])
            env = f"BETSTREAM_{name.upper()}" if name else "settings"
            lines.append(f"{env}: {err['msg']}")
        raise ConfigError("invalid settings: " + "; ".join(lines)) from None
