"""The confirmer: an RQ worker (JSON serializer, never pickle) that publishes outcomes.

The writer enqueues one job per committed batch, in the same MULTI as its XACK. A job
appends each outcome to ``betstream:confirmations`` (bounded), to the user's short stream
(for reconnecting subscribers) and PUBLISHes it on the user's channel, all in one MULTI:
a job either delivers its whole batch or nothing, and is retried until it does.
A retried job whose earlier run did publish (the worker died before RQ marked it done)
finds its guard key and publishes nothing again. Confirmations are at-least-once (e.g. the
guard expired while the confirmer was down); ``seq`` lets subscribers drop repeats.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from datetime import timedelta
from typing import Any

import redis
from rq import Queue, SimpleWorker, get_current_job
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.utils import now

from producer import constants as c
from producer.backoff import backoff_ms
from workers.adapters.confirmation_queue import confirmation_queue
from workers.adapters.metrics_store import Recorder
from workers.adapters.rq_job_codec import JobJSON
from workers.logs import get_logger
from workers.settings import Settings


def deliver_rows(fields: list[str], rows: list[list[Any]], ingress_ms: list[int],
                 limits: dict[str, int]) -> int:
    """RQ job: publish one batch of outcomes (all of them, or none and the job is retried)."""
    messages = [dict(zip(fields, row, strict=True)) for row in rows]
    job = get_current_job()
    if job is None:  # programmer error: only RQ calls this
        raise RuntimeError("deliver_rows() runs inside an RQ job")
    client: redis.Redis = job.connection
    guard = f"{c.KEY_CONFIRMED_JOB_PREFIX}{job.id}"
    if client.exists(guard):
        return 0  # a run of this job already published (killed before RQ marked it done)
    pipe = client.pipeline(transaction=True)
    pipe.set(guard, 1, ex=limits["guard_ttl_s"])
    for message in messages:
        data = json.dumps(message, separators=(",", ":"))
        user = int(message["user_id"])
        pipe.xadd(c.STREAM_CONFIRMATIONS, {"outcome": data},
                  maxlen=limits["stream_len_max"], approximate=True)
        pipe.xadd(c.user_confirmations(user), {"outcome": data},
                  maxlen=limits["user_len_max"], approximate=True)
        pipe.expire(c.user_confirmations(user), limits["user_ttl_s"])
        pipe.publish(c.user_channel(user), data)
    recorder = Recorder(client, 0)
    now = time.time_ns() // 1_000_000
    recorder.observe_many("ingress_to_confirm_ms", [now - t for t in ingress_ms])
    recorder.count("confirmed", len(messages))
    recorder.write_to(pipe)
    pipe.execute()
    return len(messages)


class ConfirmerWorker(SimpleWorker):
    """An RQ SimpleWorker whose abandoned jobs are found in seconds, not minutes.

    RQ adds a fixed 60 s to a job's heartbeat TTL, so a SIGKILLed worker's job would wait
    over a minute before another worker requeues it (the peers' "stuck job" failure,
    arq #343). Here the grace is a setting, and maintenance runs every few seconds.
    """

    heartbeat_grace_s: int = 10
    stop_asked: bool = False  # SIGTERM/SIGINT, as opposed to RQ giving up on a fault

    def request_stop(self, signum, frame) -> None:
        self.stop_asked = True
        super().request_stop(signum, frame)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = int(min(job.timeout - working_time, interval))
        return max(1, interval) + self.heartbeat_grace_s

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        self.enqueue_due_retries()
        self.rescue_dequeued_jobs()

    def rescue_dequeued_jobs(self) -> int:
        """Give back jobs a worker took off the queue but died before starting.

        RQ moves a job to an intermediate list as it dequeues it and registers it as
        started a moment later; a worker SIGKILLed in between leaves the job there, and RQ
        only looks at it again after a fixed minute. Here it goes back (as a failed attempt,
        so it is retried) once it has sat there for the heartbeat grace. The maintenance
        lock keeps two confirmers from doing it twice; the job's guard would in any case.
        """
        rescued = 0
        for queue in self.queues:
            if not queue.acquire_maintenance_lock():
                continue
            try:
                rescued += self._rescue_from(queue)
            finally:
                queue.release_maintenance_lock()
        return rescued

    def _rescue_from(self, queue: Queue) -> int:
        stuck, rescued = queue.intermediate_queue, 0
        for job_id in stuck.get_job_ids():
            if job_id in queue.started_job_registry or stuck.set_first_seen(job_id):
                continue  # running, or seen for the first time now
            first_seen = stuck.get_first_seen(job_id)
            if first_seen is None or now() - first_seen < timedelta(
                    seconds=self.heartbeat_grace_s):
                continue
            job = queue.fetch_job(job_id)
            if job is not None:
                self.handle_job_failure(job, queue, exc_string="dequeued by a worker that "
                                        "died before starting it")
                rescued += 1
            stuck.remove(job_id)
        return rescued

    def enqueue_due_retries(self) -> int:
        """Move retries that are due onto the queue ourselves.

        RQ's scheduler lock lives for 61 s; if the process holding it was killed, retries
        (and jobs requeued after a crash) would wait that long. Whoever removes a job from
        the scheduled registry enqueues it; should RQ's scheduler enqueue it as well, the
        job's guard keeps it from publishing twice.
        """
        moved = 0
        for queue in self.queues:
            registry = queue.scheduled_job_registry
            for job_id in registry.get_jobs_to_schedule(int(time.time())):
                if not registry.remove(job_id):
                    continue  # the scheduler took it first
                try:
                    queue.enqueue_job(Job.fetch(job_id, connection=self.connection,
                                                serializer=self.serializer))
                    moved += 1
                except NoSuchJobError:
                    continue
        return moved


def run_confirmer(settings: Settings, client: redis.Redis) -> None:
    """Work the confirmation queue until SIGTERM/SIGINT (RQ's warm shutdown).

    RQ's worker returns (logging "unhandled exception, quitting") when Redis vanishes
    outside its dequeue loop, e.g. during a heartbeat or maintenance; left alone, the
    process would exit 0 and confirmations would stop. A worker that ended without a stop
    request is replaced after a bounded backoff, as long as it takes Redis to come back.
    """
    log = get_logger("betstream.confirmer")
    attempt, stop = 0, threading.Event()
    while not stop.is_set():
        worker = None
        started = time.monotonic()
        try:
            worker = _new_worker(settings, client)
            worker.work(with_scheduler=True, logging_level=settings.log_level.upper())
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # start-up or teardown
            log.warning("confirmer.redis_unreachable", error=str(exc))
        finally:
            if worker is not None:
                _drop_pubsub(worker)
        if worker is not None and worker.stop_asked:
            return
        if time.monotonic() - started > settings.retry_backoff_max_ms / 1000:
            attempt = 0  # it worked for a while: start the backoff afresh
        attempt += 1
        delay_ms = backoff_ms(attempt, settings.retry_backoff_min_ms,
                              settings.retry_backoff_max_ms)
        log.warning("confirmer.restart", attempt=attempt, delay_ms=delay_ms)
        _stop_on_signals(stop)
        stop.wait(delay_ms / 1000)


def _new_worker(settings: Settings, client: redis.Redis) -> ConfirmerWorker:
    worker = ConfirmerWorker(
        [confirmation_queue(client)], connection=client, serializer=JobJSON,
        worker_ttl=settings.confirm_worker_ttl_s,
        maintenance_interval=settings.confirm_maintenance_s,
        job_monitoring_interval=settings.confirm_monitoring_s)
    worker.heartbeat_grace_s = settings.confirm_heartbeat_grace_s
    # RQ's own reconnect backoff in its dequeue loop grows to 60 s; keep it to ours.
    worker.max_connection_wait_time = settings.retry_backoff_max_ms / 1000
    return worker


def _drop_pubsub(worker: ConfirmerWorker) -> None:
    """RQ's teardown skips this when Redis is away; a dead worker's thread must not linger."""
    thread = getattr(worker, "pubsub_thread", None)
    if thread is not None:
        thread.stop()
        thread.join(timeout=1)
    try:
        if getattr(worker, "pubsub", None) is not None:
            worker.pubsub.close()
    except redis.RedisError:
        pass


def _stop_on_signals(stop: threading.Event) -> None:
    """Between two workers nobody handles SIGTERM/SIGINT: they stop the loop."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
