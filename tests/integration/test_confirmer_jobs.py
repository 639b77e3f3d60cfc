"""Confirmation jobs: JSON on the wire (no pickle), retried with backoff, never dropped."""

from __future__ import annotations

import json
import zlib

import redis
from rq import SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from tests.support import confirmations
from workers.adapters.confirmation_queue import confirmation_queue, enqueue_delivery
from workers.confirmer.worker import ConfirmerWorker
from workers.core.batch_rows import MESSAGE_FIELDS
from workers.settings import Settings

GOOD = {"id": "3f1c2a9e-5b7d-4c1e-9a0b-2f4e6d8c1a3b", "kind": "deposit", "user_id": 4,
        "status": "accepted", "reason": None, "balance": 10, "seq": 1, "committed_at": 1,
        "duplicate": False, "detail": None}


def _row(message: dict) -> tuple:
    return tuple(message[name] for name in MESSAGE_FIELDS)


def _enqueue(client: redis.Redis, settings: Settings, messages: list[dict]) -> Job:
    pipe = client.pipeline(transaction=True)
    enqueue_delivery(confirmation_queue(client), pipe, settings, [_row(m) for m in messages],
                     [0] * len(messages))
    pipe.execute()
    (job_id,) = confirmation_queue(client).job_ids
    return Job.fetch(job_id, connection=client, serializer=JSONSerializer)


def _work(client: redis.Redis) -> None:
    SimpleWorker([confirmation_queue(client)], connection=client,
                 serializer=JSONSerializer).work(burst=True)


def test_job_payload_is_json_and_publishing_twice_is_guarded(
        redis_client: redis.Redis, settings: Settings) -> None:
    job = _enqueue(redis_client, settings, [GOOD])
    stored = json.loads(zlib.decompress(redis_client.hget(f"rq:job:{job.id}", "data")))
    assert stored[2][:2] == [list(MESSAGE_FIELDS), [list(_row(GOOD))]], "plain JSON, no pickle"
    _work(redis_client)
    assert confirmations(redis_client) == [GOOD], "the message subscribers get, field by field"
    redis_client.hdel(f"rq:job:{job.id}", "status")
    confirmation_queue(redis_client).enqueue_job(job)  # as if it ran again after a crash
    _work(redis_client)
    assert len(confirmations(redis_client)) == 1, "a job that already published is not re-run"


def test_a_failing_job_is_retried_with_backoff_then_kept_visible(
        redis_client: redis.Redis, settings: Settings) -> None:
    broken = {**GOOD, "user_id": "nobody"}  # the job will raise ValueError
    one_retry = settings.model_copy(update={"confirm_retries_max": 1})
    job = _enqueue(redis_client, one_retry, [broken])
    queue = confirmation_queue(redis_client)
    _work(redis_client)
    job.refresh()
    assert job.get_status() == "scheduled" and job.retries_left == 0, "retried later, not lost"
    assert job.id in queue.scheduled_job_registry.get_job_ids()
    redis_client.zadd(queue.scheduled_job_registry.key, {job.id: 0})  # due now, not in 1 s
    worker = ConfirmerWorker([queue], connection=redis_client, serializer=JSONSerializer)
    assert worker.enqueue_due_retries() == 1, "due retries move without RQ's scheduler"
    _work(redis_client)
    assert job.id in queue.failed_job_registry.get_job_ids(), "visible once retries run out"
    assert confirmations(redis_client) == [], "nothing half-published"
