"""A confirmer SIGKILLed between taking a job off the queue and starting it (found by the
crash storm: the batch's confirmations then waited a fixed minute in RQ's intermediate
list). The job now goes back within the heartbeat grace and is published once."""

from __future__ import annotations

import time

import redis
from rq.serializers import JSONSerializer

from tests.conftest import wait_for
from tests.support import confirmations, deliver_confirmations
from workers.adapters.confirmation_queue import confirmation_queue, enqueue_delivery
from workers.confirmer.worker import ConfirmerWorker
from workers.core.batch_rows import MESSAGE_FIELDS
from workers.settings import Settings

GOOD = {"id": "5d2c3b1a-6e7f-4a8b-9c0d-1e2f3a4b5c6d", "kind": "deposit", "user_id": 4,
        "status": "accepted", "reason": None, "balance": 10, "seq": 1, "committed_at": 1,
        "duplicate": False, "detail": None}
GRACE_S = 1


def test_a_job_dequeued_by_a_worker_that_died_goes_back_within_the_grace(
        redis_client: redis.Redis, settings: Settings) -> None:
    queue = confirmation_queue(redis_client)
    pipe = redis_client.pipeline(transaction=True)
    enqueue_delivery(queue, pipe, settings, [tuple(GOOD[f] for f in MESSAGE_FIELDS)], [0])
    pipe.execute()
    # what RQ's dequeue does first; the worker is SIGKILLed before it registers the job
    assert redis_client.lmove(queue.key, queue.intermediate_queue.key)
    worker = ConfirmerWorker([queue], connection=redis_client, serializer=JSONSerializer)
    worker.heartbeat_grace_s = GRACE_S

    for _ in range(2):  # RQ's own cleanup leaves it there for a minute
        queue.intermediate_queue.cleanup(worker, queue)
        time.sleep(GRACE_S + 0.1)
    assert queue.intermediate_queue.get_job_ids(), "still stuck after RQ's own cleanup"

    started = time.monotonic()
    wait_for(lambda: worker.rescue_dequeued_jobs(), 10, "the stuck job to be given back")
    wait_for(lambda: worker.enqueue_due_retries(), 10, "its retry to be due")
    deliver_confirmations(redis_client)
    assert [m["id"] for m in confirmations(redis_client)] == [GOOD["id"]]
    assert time.monotonic() - started < 10, "seconds, not RQ's fixed minute"
    assert queue.intermediate_queue.get_job_ids() == []
