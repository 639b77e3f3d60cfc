"""Confirmation jobs are plain JSON whichever side wrote them (never pickle, rq #2389)."""

from __future__ import annotations

import json
import zlib

from hypothesis import given
from hypothesis import strategies as st
from rq.serializers import JSONSerializer

from workers.adapters.rq_job_codec import JOB_ZLIB_LEVEL, JobJSON

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


@given(_JSON)
def test_job_json_and_rq_json_read_each_other(value: object) -> None:
    # A writer on this version and a confirmer on the previous one (or the reverse)
    # during a rolling upgrade must read each other's jobs.
    assert json.loads(JobJSON.dumps(value)) == value
    assert JSONSerializer.loads(JobJSON.dumps(value)) == value
    assert JobJSON.loads(JSONSerializer.dumps(value)) == value


def test_a_confirmation_job_round_trips() -> None:
    message = {"id": "0b6c2d1e-8f3a-4c5b-9d7e-1a2b3c4d5e6f", "kind": "bet", "user_id": 7,
               "status": "accepted", "reason": None, "balance": 900, "seq": 12,
               "committed_at": 1_764_000_000_000, "duplicate": False, "detail": None}
    args = [[message], [1_764_000_000_000], {"stream_len_max": 100}]
    assert JSONSerializer.loads(JobJSON.dumps(args)) == args


def test_a_job_the_writer_enqueues_is_read_by_rqs_own_job_class() -> None:
    """The writer compresses lightly (LightJob); confirmers load jobs with rq's plain Job."""
    import fakeredis
    from rq.job import Job

    from workers.adapters.confirmation_queue import JOB_FUNC, confirmation_queue
    from workers.core.batch_rows import MESSAGE_FIELDS

    client = fakeredis.FakeRedis()
    rows = [[f"id-{i}", "bet", 7, "accepted", None, 900, i, 1_764_000_000_000, False, None]
            for i in range(500)]
    args = [list(MESSAGE_FIELDS), rows, list(range(500)), {"stream_len_max": 100}]
    pipe = client.pipeline(transaction=True)
    job = confirmation_queue(client).enqueue_call(JOB_FUNC, args=args, pipeline=pipe)
    pipe.execute()
    loaded = Job.fetch(job.id, connection=client, serializer=JobJSON)
    assert loaded.func_name == "workers.confirmer.worker.deliver_rows"
    assert list(loaded.args) == args
    stored = client.hget(job.key, "data")
    assert json.loads(zlib.decompress(stored)) == [JOB_FUNC, None, args, {}]
    assert stored == zlib.compress(zlib.decompress(stored), JOB_ZLIB_LEVEL)  # the light level
