"""The admission child process (``python -m workers.writer.admission_child``) and the
writer's handle.

See workers/writer/admission.py for why and for the frames. The child reads only when the writer
asks (one batch per request), so it never reads while the writer is not leading, and at
most one batch is in flight.
"""

from __future__ import annotations

import faulthandler
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import msgspec
import redis

from producer.contract import now_ms
from producer.signing import Key, Keyring
from workers.adapters.intent_stream import Claims, Entry, IntentStream
from workers.core.decision import Candidate
from workers.core.intake import DeadLetter
from workers.logs import configure_logging, get_logger
from workers.settings import Settings
from workers.writer.admission import (
    Hello,
    Reply,
    Request,
    merge,
    raw_keyring,
    read_frame,
    split,
    write_frame,
)
from workers.writer.gc_tuning import tune_runtime
from workers.writer.nonce_claims import claim_fresh

_ENCODER = msgspec.msgpack.Encoder()
_REPLIES = msgspec.msgpack.Decoder(Reply)


class Collected(NamedTuple):
    """A batch the child read and admitted, and the nonces it claimed (None: none)."""

    entries: list[Entry]
    candidates: list[Candidate]
    dead: list[DeadLetter]
    claims: Claims | None = None


class Admitter:
    """The writer's handle: ``ask`` before a batch is decided, ``collect`` while it commits.

    Any failure (the child cannot start, dies, hangs past ``admission_reply_timeout_ms``
    or answers nonsense) returns None and stops the child; a new one is started
    ``admission_restart_ms`` later, and the writer reads in process meanwhile. A read
    Redis failed in the child also returns None (the child stays). Either way the writer
    then reads its own pending entries first: the failed read may have delivered some.
    """

    def __init__(self, settings: Settings, consumer: str) -> None:
        self._s = settings
        self._consumer = consumer
        self._proc: subprocess.Popen | None = None
        self._sent: Keyring | None = None
        self._asked_with: Keyring | None = None
        self._down_until = 0.0
        self._log = get_logger("betstream.admission")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def asked(self) -> bool:
        """A batch was asked for and not yet collected."""
        return self._asked_with is not None

    def ask(self, keyring: Keyring, lease_owner: str) -> bool:
        """Ask the child to read and admit the next batch; False: read in process.
        At most one request is in flight: asking again before collecting changes nothing."""
        if self._asked_with is not None:
            return True
        if time.monotonic() < self._down_until:
            return False
        try:
            proc = self._proc or self._start()
            changed = keyring is not self._sent
            request = Request(lease_owner, raw_keyring(keyring) if changed else None)
            write_frame(proc.stdin.fileno(), _ENCODER.encode(request))
        except (OSError, ValueError) as exc:
            self._fail("ask", exc)
            return False
        self._sent = self._asked_with = keyring
        return True

    def collect(self, keep_alive: Callable[[], None] = lambda: None) -> Collected | None:
        """The batch asked for (maybe empty), or None if the child or Redis failed it.

        ``keep_alive`` runs every ``lease_renew_ms`` while the reply is awaited: the reply
        timeout may be as long as the lease, and a child starting up (imports: ~1 s on a
        slow machine) must not cost the writer its lease. If it raises (lease lost), the
        child is stopped first, so that its late reply cannot answer a later request."""
        proc = self._proc
        if proc is None or self._asked_with is None:
            return None
        keyring, self._asked_with = self._asked_with, None
        try:
            fd = proc.stdout.fileno()
            self._await_reply(fd, keep_alive)
            frame = read_frame(fd)
            if frame is None:
                raise EOFError(f"child exited ({proc.poll()})")
            reply = _REPLIES.decode(frame)
            if reply.error is not None:
                return None  # Redis failed the read (maybe after it ran); the child is fine
            return Collected(*merge(reply, keyring), reply.claims)
        except (OSError, ValueError, EOFError, TimeoutError, msgspec.MsgspecError) as exc:
            self._fail("collect", exc)
            return None

    def _await_reply(self, fd: int, keep_alive: Callable[[], None]) -> None:
        deadline = time.monotonic() + self._s.admission_reply_timeout_ms / 1000
        while True:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise TimeoutError("no reply in time")
            ready, _, _ = select.select([fd], [], [], min(left_s, self._s.lease_renew_ms / 1000))
            if ready:
                return
            try:
                keep_alive()
            except BaseException:
                self.close()
                raise

    def _start(self) -> subprocess.Popen:
        # In a process group of its own: a Ctrl-C or SIGTERM to the writer's group stops
        # the writer, which then ends the child (close(), or its pipe closing when the
        # writer dies); signalled too, the child could die mid-import with a traceback.
        proc = subprocess.Popen([sys.executable, "-m", "workers.writer.admission_child"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                process_group=0)
        self._proc, self._sent = proc, None
        hello = Hello(self._s.model_dump_json(), self._consumer)
        write_frame(proc.stdin.fileno(), _ENCODER.encode(hello))
        self._log.info("admission.started", pid=proc.pid)
        return proc

    def _fail(self, step: str, exc: BaseException) -> None:
        self._log.warning("admission.failed", step=step, error=str(exc)[:200],
                          restart_in_ms=self._s.admission_restart_ms)
        self.close()
        self._down_until = time.monotonic() + self._s.admission_restart_ms / 1000

    def close(self) -> None:
        proc, self._proc, self._asked_with = self._proc, None, None
        if proc is None:
            return
        proc.kill()  # it holds nothing: entries it read stay pending under the writer
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            pipe.close()


def _keyring(raw: dict) -> Keyring:
    return Keyring({kid: Key(kid, secret, frozenset(kinds), retire_at)
                    for kid, (secret, kinds, retire_at) in raw.items()})


def _claimed(reply: Reply, fast: list[Candidate], stream: IntentStream,
             settings: Settings) -> Reply:
    """The reply with the nonces of its fast candidates claimed, or as it is if Redis
    failed the claims: the writer then claims them itself."""
    try:
        claims = claim_fresh(stream.claim_nonces, fast, now_ms(), settings)
    except redis.RedisError:
        return reply
    return msgspec.structs.replace(reply, claims=claims)


def main() -> int:
    """Child: read a batch as the writer's consumer and admit it, once per request.

    Frames use the original stdout; fd 1 then points at stderr so that nothing printed
    by a library can corrupt them. Exits when the writer closes its end (or dies).
    """
    faulthandler.enable()  # not started through the cli: a fatal signal leaves a traceback
    from workers.adapters.redis_connection import redis_client

    rfd, wfd = 0, os.dup(1)
    os.dup2(2, 1)
    parent = os.getppid()
    hello = msgspec.msgpack.decode(read_frame(rfd) or b"", type=Hello)
    settings = Settings.model_validate_json(hello.settings_json)
    configure_logging(settings.log_format, settings.log_level)
    stream = IntentStream(redis_client(settings.redis_url), settings, hello.consumer)
    keyring = Keyring({})
    tune_runtime(settings.writer_gc_gen0_threshold, settings.writer_switch_interval_us)
    requests = msgspec.msgpack.Decoder(Request)
    while (frame := read_frame(rfd)) is not None:
        request = requests.decode(frame)
        if request.keyring is not None:
            keyring = _keyring(request.keyring)
        if os.getppid() != parent:
            return 0  # the writer died (SIGKILL): read nothing more under its name
        try:
            reply, fast = split(stream.read_new_now(request.lease_owner), keyring)
        except redis.RedisError as exc:
            reply = Reply([], [], [], error=str(exc)[:200])
        else:
            reply = _claimed(reply, fast, stream, settings)
        try:
            write_frame(wfd, _ENCODER.encode(reply))
        except BrokenPipeError:
            return 0  # the writer is gone; what we read stays pending for the next leader
    return 0


if __name__ == "__main__":
    sys.exit(main())
