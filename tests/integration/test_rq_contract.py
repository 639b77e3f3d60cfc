"""What the confirmer relies on in rq and redis-py beyond their documented API, pinned here
so that an upgrade that changes it fails in this one place instead of stalling elsewhere.

- ``Worker.get_heartbeat_ttl`` decides how long a started job survives its worker
  (``ConfirmerWorker`` shortens RQ's fixed 60 s grace).
- ``Worker.run_maintenance_tasks`` runs in the work loop: ``ConfirmerWorker`` adds its own
  moves of due retries there (RQ's scheduler lock outlives a killed holder by 61 s).
- rq's worker teardown stops its pubsub thread with ``PubSubWorkerThread.stop()`` and
  expects it to return at once. From redis-py 8 ``stop()`` waits for the thread, which
  polls every 60 s: every worker stop could then take a minute (README, "Dependencies").
The intermediate-queue rescue is pinned by ``test_confirmer_rescue.py``, the light job
compression by ``tests/unit/test_jobjson.py``.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import redis
from rq import Queue, get_current_job

from tests.conftest import wait_for
from workers.adapters.rq_job_codec import JobJSON
from workers.confirmer.worker import ConfirmerWorker

MONITORING_S, GRACE_S = 2, 3
STOP_RETURNS_S = 2.0
RQ_POLL_S = 60  # the sleep_time rq's worker gives its pubsub thread
TTL_KEY = "test:started-ttl"


def record_started_ttl() -> None:
    """An RQ job: how long its own started-registry entry has left to live, in seconds."""
    job = get_current_job()
    registry = Queue(job.origin, connection=job.connection).started_job_registry
    deadline = max(score for _, score in job.connection.zrange(registry.key, 0, -1,
                                                               withscores=True))
    job.connection.set(TTL_KEY, deadline - time.time())


def test_a_started_job_outlives_a_dead_confirmer_by_the_grace_not_a_minute(
        redis_client: redis.Redis) -> None:
    queue = Queue("test-contract", connection=redis_client, serializer=JobJSON)
    queue.enqueue_call(f"{__name__}.record_started_ttl")
    worker = ConfirmerWorker([queue], connection=redis_client, serializer=JobJSON,
                             job_monitoring_interval=MONITORING_S)
    worker.heartbeat_grace_s = GRACE_S
    worker.work(burst=True)
    ttl_s = float(redis_client.get(TTL_KEY))
    assert 0 < ttl_s <= MONITORING_S + GRACE_S + 1, (
        f"a started job would be found abandoned after {ttl_s:.0f} s: rq no longer asks "
        "Worker.get_heartbeat_ttl (ConfirmerWorker's grace)")


def test_the_work_loop_runs_the_confirmers_maintenance(redis_client: redis.Redis) -> None:
    queue = Queue("test-contract", connection=redis_client, serializer=JobJSON)
    queue.enqueue_at(datetime(2000, 1, 1, tzinfo=UTC), f"{__name__}.record_started_ttl")
    worker = ConfirmerWorker([queue], connection=redis_client, serializer=JobJSON)
    worker.work(burst=True)  # no scheduler: only the maintenance can move the due job
    assert redis_client.exists(TTL_KEY), (
        "a due retry was not moved: rq no longer calls Worker.run_maintenance_tasks "
        "(ConfirmerWorker.enqueue_due_retries) from its work loop")


def test_stopping_a_pubsub_thread_does_not_wait_for_its_poll(
        redis_client: redis.Redis) -> None:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(**{"test-contract": lambda message: None})  # as rq's worker does
    # closing the connection under a reading thread raises there: the handler ends it
    thread = pubsub.run_in_thread(sleep_time=RQ_POLL_S, daemon=True,
                                  exception_handler=lambda exc, ps, worker: worker.stop())
    wait_for(lambda: pubsub.subscribed and thread.is_alive(), 5, "the pubsub thread")
    time.sleep(0.2)  # let it block in get_message(timeout=60), as in a worker's teardown
    stopped = threading.Event()
    threading.Thread(target=lambda: (thread.stop(), stopped.set()), daemon=True).start()
    try:
        assert stopped.wait(STOP_RETURNS_S), (
            "PubSubWorkerThread.stop() now waits for the thread's poll (redis-py 8): rq's "
            f"worker teardown would stall up to {RQ_POLL_S} s; keep redis-py below 8")
    finally:
        pubsub.close()
        thread.join(STOP_RETURNS_S)
