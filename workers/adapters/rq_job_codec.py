"""How betstream writes RQ jobs: JSON, never pickle (rq #2389), encoded by msgspec, and
compressed at a light zlib level.

RQ serializes every job (function, args) and zlib-compresses the result inside the
writer's post-commit MULTI; with the stdlib ``json`` module that was ~7 % of the writer's
time. msgspec writes the same JSON several times faster, and either side reads what the
other wrote (rq's own ``JSONSerializer`` included). RQ's default zlib level then cost
~20 ms per 4,000-outcome job on the writer's busiest thread; level 1 takes ~8 ms and
any RQ worker decompresses it the same way.
"""

from __future__ import annotations

import zlib
from typing import Any, Final

import msgspec
from rq.job import Job

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder()
JOB_ZLIB_LEVEL: Final = 1  # fastest; a batch's JSON still shrinks ~5x (default 6: ~6x)


class JobJSON:
    """The ``serializer`` argument for rq's Queue, Job and Worker (dumps/loads)."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return _ENCODER.encode(obj)

    @staticmethod
    def loads(raw: bytes | str) -> Any:
        return _DECODER.decode(raw)


class LightJob(Job):
    """An RQ job whose data is compressed at :data:`JOB_ZLIB_LEVEL` (the writer's queue).

    Only the compression level differs from rq's ``Job``: the stored hash has the same
    fields, and workers load it with rq's own ``Job`` (zlib reads any level).
    """

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict:
        data = self.data
        self.data = b""  # rq compresses this empty stand-in at its default level
        try:
            obj = super().to_dict(include_meta=include_meta, include_result=include_result)
        finally:
            self.data = data
        obj["data"] = zlib.compress(data, JOB_ZLIB_LEVEL)
        return obj
