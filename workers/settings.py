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


# Added to a failover's longest time for WRITER_SILENT_MAX_MS's default: the new leader
# bumps the epoch and claims the dead writer's pending entries before its first beat.
WRITER_SILENT_MARGIN_MS_DEFAULT: Final = 4_500


@dataclass(frozen=True, slots=True)
class Listing:
    """How the writer's lister runs (settings ``LISTING_*``)."""

    interval_ms: int = LISTING_INTERVAL_MS_DEFAULT
    lag_rows_min: int = LISTING_LAG_ROWS_MIN_DEFAULT
    slice_rows_max: int = LISTING_SLICE_ROWS_MAX_DEFAULT


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BETSTREAM_", frozen=True, extra="ignore")

    redis_url: str = Field("redis://127.0.0.1:6379/0",
                           description="Redis holding the streams, the lease and the breaker")
    db: Path = Field(Path("./var/betstream.sqlite3"), description="the SQLite ledger")
    keyring: Path = Field(
        Path("./var/keyring.json"),
        description="key ids, secrets, the kinds each may sign and an optional `retire_at` "
                    "(ms); `kill -HUP` the writer to re-read it (docs/wire-contract.md)")
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="log lines as JSON, or for a terminal; auto: JSON unless stderr "
                            "is a terminal")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the least important log level written")

    # Larger batches write fewer index pages per intent: 8000 drained 2M intents 12 % faster
    # than 4000 (docs/performance.md).
    batch_size_max: int = Field(8000, ge=1, le=100_000,
                                description="intents committed in one SQLite transaction")
    batch_wait_ms: int = Field(20, ge=1, le=10_000,
                               description="how long a read of new intents blocks")
    # A batch keeps tens of GC-tracked objects per intent alive until it is finished, so
    # CPython's default young collections ran several times per batch for nothing.
    writer_gc_gen0_threshold: int = Field(
        1_000_000, ge=100, le=10_000_000,
        description="net new objects before a young GC pass, in the writer and its "
                    "admission child (CPython: 700)")
    commit_overlap: bool = Field(
        True, description="under a backlog, read and admit the next batch and confirm the "
                          "one before while a batch commits")
    # Under light load overlapping only splits the flow into more, smaller batches.
    read_ahead_size_min: int = Field(
        1000, ge=1, le=100_000,
        description="what counts as a backlog for `COMMIT_OVERLAP`: a batch of at least this "
                    "many new entries (or a full batch, if smaller)")
    admission_process: bool = Field(
        True, description="the batch read ahead is read and admitted by a child process "
                          "of the writer, on the other core (the writer is bound by the GIL)")
    admission_reply_timeout_ms: int = Field(
        10_000, ge=100, le=600_000,
        description="an admission child silent this long is stopped; the writer reads what "
                    "it had read from its own pending list, in process meanwhile")
    admission_restart_ms: int = Field(
        5_000, ge=0, le=3_600_000,
        description="when a new admission child is started after one failed")
    writer_switch_interval_us: int = Field(
        500, ge=50, le=100_000,
        description="how long a writer thread may hold the GIL before another asks for it "
                    "back (CPython: 5000); the committer thread needs it after every SQLite "
                    "step")
    pending_claim_count: int = Field(
        1000, ge=1, le=100_000,
        description="pending entries of dead consumers claimed per call when a writer "
                    "starts leading")

    nonce_ttl_s: int = Field(90, ge=1, le=86_400,
                             description="how long a nonce is remembered (the seed's value)")
    intent_age_max_ms: int = Field(
        60_000, ge=100,
        description="older intents are rejected `stale`; must stay below the nonce TTL")
    clock_skew_max_ms: int = Field(5_000, ge=0,
                                   description="how far in the future `issued_at` may be")

    lease_ms: int = Field(10_000, ge=500, le=600_000,
                          description="writer lease: a dead writer is replaced after at most "
                                      "this")
    standby_poll_ms: int = Field(500, ge=10, le=60_000,
                                 description="how often a standby writer tries to take the "
                                             "lease")

    retry_backoff_min_ms: int = Field(50, ge=1, description="first wait before retrying a "
                                                            "failed commit or Redis call")
    retry_backoff_max_ms: int = Field(5_000, ge=1, description="longest wait between retries "
                                                               "(exponential, with jitter)")
    sqlite_busy_timeout_ms: int = Field(2_000, ge=0, le=600_000,
                                        description="wait for the SQLite write lock before "
                                                    "retrying")
    listing_interval_ms: int = Field(
        LISTING_INTERVAL_MS_DEFAULT, ge=10, le=3_600_000,
        description="how often the writer's lister lists users' ledger rows in "
                    "`user_entries`, where statements find them (docs/ledger.md)")
    listing_lag_rows_min: int = Field(
        LISTING_LAG_ROWS_MIN_DEFAULT, ge=1, le=10_000_000,
        description="a listing round starts once this many rows wait (more: fewer page "
                    "writes per posting, a longer tail for statements to scan)")
    listing_slice_rows_max: int = Field(
        LISTING_SLICE_ROWS_MAX_DEFAULT, ge=1, le=10_000_000,
        description="rows listed per transaction: the longest a commit waits for the lock")

    intents_retention_ms: int = Field(
        3_600_000, ge=0,
        description="acknowledged intents older than this are trimmed from the stream, "
                    "never a pending or unread one")
    intents_trim_interval_s: float = Field(10.0, gt=0, description="how often the writer "
                                                                   "trims the intents stream")
    confirmations_len_max: int = Field(200_000, ge=1_000,
                                       description="approximate length bound of "
                                                   "`betstream:confirmations`")
    deadletter_len_max: int = Field(100_000, ge=100, description="approximate length bound "
                                                                 "of `betstream:deadletter`")

    archive_dir: Path | None = Field(
        None, description="where `betstream archive` writes its monthly files (default: "
                          "`archive/` beside the ledger)")
    archive_chunk_rows_max: int = Field(5_000, ge=1, le=1_000_000,
                                        description="ledger rows moved per archival step (a "
                                                    "short live transaction)")
    archive_chunk_batches_max: int = Field(500, ge=1, le=100_000,
                                           description="batches moved per archival step")
    archive_pause_ms: int = Field(20, ge=0, le=60_000,
                                  description="the writer's turn between archival steps")

    user_confirmations_len_max: int = Field(
        100, ge=10,
        description="outcomes kept per user for subscribers that resume with `since` (Redis "
                    "memory grows with users x this)")
    user_confirmations_ttl_s: int = Field(3_600, ge=60, description="how long a quiet user's "
                                                                    "kept outcomes live")
    confirm_round_max: int = Field(2_000, ge=1, le=100_000,
                                   description="outcomes the confirmer publishes per round "
                                               "(one MULTI)")
    confirm_poll_ms: int = Field(5, ge=1, le=10_000,
                                 description="how often a confirmer that has published "
                                             "everything looks for new outcomes in the "
                                             "ledger")
    confirm_progress_file: Path | None = Field(
        None, description="where the confirmer records the last seq it published, so a "
                          "restart goes on from there even if Redis lost its data (default: "
                          "the ledger's path + `.confirmed`)")
    confirm_progress_save_ms: int = Field(200, ge=0, le=60_000,
                                          description="how often that record is written "
                                                      "(a crash republishes at most this "
                                                      "much)")
    confirm_lease_ms: int = Field(3_000, ge=500, le=600_000,
                                  description="the confirmer's lease: a standby confirmer "
                                              "takes over this long after the active one "
                                              "died")
    confirm_lag_max_ms: int = Field(5_000, ge=100,
                                    description="health turns non-OK when an outcome has "
                                                "waited this long unpublished")

    gateway_host: str = Field("127.0.0.1", description="where the gateway listens")
    gateway_port: int = Field(8000, ge=0, le=65_535,
                              description="the gateway's public port (WebSockets, bet "
                                          "lookups, a minimal /health)")
    gateway_ops_host: str = Field("127.0.0.1",
                                  description="where the gateway's operator listener "
                                              "(/metrics, detailed /health) listens; keep it "
                                              "off the public network")
    gateway_ops_port: int = Field(9101, ge=0, le=65_535,
                                  description="the operator listener's port")
    gateway_health_cache_ms: int = Field(
        1_000, ge=0, le=60_000,
        description="how long the public /health answer is reused, so a flood of health "
                    "checks costs one check per interval")
    ws_auth_timeout_ms: int = Field(
        5_000, ge=100, le=60_000,
        description="how long a WebSocket that brings no token in its handshake has to send "
                    "it as its first message")
    gateway_secret_file: Path = Field(Path("./var/gateway-secret"),
                                      description="the token signing secret (created on "
                                                  "first use)")
    token_ttl_s: int = Field(3_600, ge=1, le=30 * 86_400,
                             description="lifetime of a subscriber token")
    ws_seen_max: int = Field(10_000, ge=100, description="seqs remembered per WebSocket to "
                                                         "drop repeated confirmations")
    ws_per_user_max: int = Field(5, ge=1, le=10_000,
                                 description="WebSockets one user may hold open on one "
                                             "gateway; more are refused (HTTP 429)")
    ws_connections_max: int = Field(20_000, ge=1, le=1_000_000,
                                    description="WebSockets one gateway holds open; more "
                                                "are refused (HTTP 503)")
    ws_send_queue_max: int = Field(1_000, ge=1, le=1_000_000,
                                   description="confirmations waiting to be sent on one "
                                               "WebSocket; a subscriber that does not read "
                                               "is disconnected past this")
    gateway_gc_full_interval_s: float = Field(
        600.0, ge=1, le=86_400,
        description="how often the gateway runs a full garbage collection (it pauses sends "
                    "about 0.1 s per 1,000 open sockets; between two, memory of closed "
                    "sockets waits)")
    gateway_redis_connections_max: int = Field(
        64, ge=2, le=10_000,
        description="Redis connections one gateway uses at most (one of them carries every "
                    "live confirmation); requests wait for one")

    breaker_failures_max: int = Field(3, ge=1, description="consecutive failed commits that "
                                                           "open the breaker")
    breaker_commit_max_ms: int = Field(2_000, ge=1, description="a slower commit opens the "
                                                                "breaker")
    breaker_backlog_age_max_ms: int = Field(
        30_000, ge=100,
        description="an older unacknowledged intent opens the breaker; below "
                    "`INTENT_AGE_MAX_MS`, so load is shed before intents turn stale")
    breaker_cooldown_s: float = Field(5.0, gt=0, description="OPEN for at least this before "
                                                             "probing (HALF_OPEN)")
    breaker_cooldown_max_s: float = Field(60.0, gt=0, description="the cool-down doubles at "
                                                                  "each re-open, up to this")
    breaker_stability_s: float = Field(30.0, gt=0, description="healthy this long without "
                                                               "interruption before CLOSED "
                                                               "(the seed's window)")
    breaker_half_open_share: float = Field(0.1, ge=0, le=1, description="share of intents "
                                                                        "producers send "
                                                                        "while probing")
    breaker_sync_ms: int = Field(1_000, ge=10, description="how often the writer re-reads "
                                                           "an operator's breaker changes")

    progress_interval_s: float = Field(5.0, gt=0, description="how often processes log "
                                                              "their progress")
    settle_chunk_bets_max: int = Field(
        5_000, ge=1, le=100_000,
        description="bets of a market being resulted (settle_market) that one batch settles: "
                    "other intents wait at most one such chunk")
    health_ttl_ms: int = Field(15_000, ge=1_000, description="a writer's health beacon "
                                                             "expires after this")
    # Above a failover: a writer's last beat is up to a beat interval (HEALTH_TTL_MS / 3)
    # old when it dies, and a standby takes over within LEASE_MS + STANDBY_POLL_MS (the
    # default is derived, 20 s with the defaults: a longer lease must not fail validation).
    writer_silent_max_ms: int | None = Field(
        None, ge=1_000, le=3_600_000,
        description="no writer's beacon (starting, leading or retrying) newer than this while "
                    "intents wait opens the breaker; a gateway or a standby writer notices. "
                    "Must exceed `HEALTH_TTL_MS` / 3 + `LEASE_MS` + `STANDBY_POLL_MS` (a "
                    f"failover); default: that + {WRITER_SILENT_MARGIN_MS_DEFAULT:,} ms")
    writer_silence_check_interval_ms: int = Field(
        1_000, ge=10, le=60_000,
        description="how often a gateway, and a standby writer, look for a silent writer")
    metrics_flush_interval_s: float = Field(1.0, gt=0, description="how often processes "
                                                                   "write their metrics to "
                                                                   "Redis")

    @model_validator(mode="after")
    def _bounds_agree(self) -> Settings:
        if self.intent_age_max_ms >= self.nonce_ttl_s * 1000:
            raise ValueError(
                "intent_age_max_ms must stay below nonce_ttl_s, or a replayed nonce could "
                "outlive its record"
            )
        if self.breaker_backlog_age_max_ms >= self.intent_age_max_ms:
            raise ValueError(
                "breaker_backlog_age_max_ms must stay below intent_age_max_ms, so load is "
                "shed before intents turn stale")
        if self.retry_backoff_min_ms > self.retry_backoff_max_ms:
            raise ValueError("retry_backoff_min_ms must not exceed retry_backoff_max_ms")
        return self

    @model_validator(mode="after")
    def _writer_silence_bound(self) -> Settings:
        if self.writer_silent_max_ms is not None and \
                self.writer_silent_max_ms <= self.writer_failover_ms:
            raise ValueError(
                f"writer_silent_max_ms must exceed health_ttl_ms / 3 + lease_ms + "
                f"standby_poll_ms ({self.writer_failover_ms} ms): a writer's last beat is up "
                f"to a third of the beacon's TTL old when it dies, and a standby takes over "
                f"within the lease and a poll; shorter would open the breaker on a failover")
        return self

    @property
    def listing(self) -> Listing:
        return Listing(self.listing_interval_ms, self.listing_lag_rows_min,
                       self.listing_slice_rows_max)

    @property
    def breaker_limits(self) -> BreakerLimits:
        return BreakerLimits(
            failures_max=self.breaker_failures_max, commit_max_ms=self.breaker_commit_max_ms,
            backlog_age_max_ms=self.breaker_backlog_age_max_ms,
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

    @property
    def writer_failover_ms(self) -> int:
        """The longest a failover leaves no live beacon: the dead writer's last beat (up
        to a beat interval old), its lease running out, the standby's next poll."""
        return self.health_ttl_ms // 3 + self.lease_ms + self.standby_poll_ms

    @property
    def writer_silence_bound_ms(self) -> int:
        """``WRITER_SILENT_MAX_MS``, or its default derived from the failover's bound."""
        if self.writer_silent_max_ms is not None:
            return self.writer_silent_max_ms
        return self.writer_failover_ms + WRITER_SILENT_MARGIN_MS_DEFAULT

    @property
    def breaker_record_path(self) -> Path:
        """Where a breaker forced open is recorded, beside the ledger."""
        return self.db.with_name(self.db.name + ".breaker")

    @property
    def confirm_progress_path(self) -> Path:
        if self.confirm_progress_file is not None:
            return self.confirm_progress_file
        return self.db.with_name(self.db.name + ".confirmed")


SETTINGS_DOC_HEAD: Final = """# Settings

Every setting is an environment variable; unset, it takes the default. Bad values stop the
process with exit code 2 and a message naming the variable. This page is generated from
the settings' own descriptions (`betstream settings`); a test fails when it is stale.

"""


def settings_reference() -> str:
    """docs/settings.md: every setting with its default and meaning, from the fields'
    descriptions."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else f"`{field.default}`"
        rows.append(f"| `BETSTREAM_{name.upper()}` | {default} | {field.description} |")
    return SETTINGS_DOC_HEAD + "\n".join(rows) + "\n"


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
