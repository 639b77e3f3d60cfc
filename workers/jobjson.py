"""RQ's serializer for betstream jobs: JSON, never pickle (rq #2389), encoded by msgspec.

RQ serializes every job (function, args) and zlib-compresses the result inside the
writer's post-commit MULTI; with the stdlib ``json`` module that was ~7 % of the writer's
time. msgspec writes the same JSON several times faster, and either side reads what the
other wrote (rq's own ``JSONSerializer`` included).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder()


class JobJSON:
    """The ``serializer`` argument for rq's Queue, Job and Worker (dumps/loads)."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return _ENCODER.encode(obj)

    @staticmethod
    def loads(raw: bytes | str) -> Any:
        return _DECODER.decode(raw)
