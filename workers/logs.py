"""Structured logging: JSON lines in production, readable key=value lines in a terminal.

Our own events go through structlog. Libraries that log with the standard ``logging``
module (uvicorn, websockets, redis-py) are rendered the same way, through one handler that
also redacts subscriber tokens: uvicorn logs every WebSocket handshake with its query
string, and a token in a log is a credential anyone reading the log can use.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Final

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

REDACTED: Final = "[redacted]"
# ``token=…`` in a query string, and anything shaped like a subscriber token
# (``v1.<user>.<expiry>.<hmac hex>``) wherever it appears (a header, a sub-protocol).
_TOKEN_PARAM: Final = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)
_TOKEN_SHAPE: Final = re.compile(r"v1\.\d+\.\d+\.[0-9A-Fa-f]{8,}")
# uvicorn follows each WebSocket request line with one of these; the request line before
# it already says what happened (accepted, 403, 429), so they only double the volume.
_HANDSHAKE_CHATTER: Final = ("connection open", "connection closed", "connection rejected")


def redact_tokens(text: str) -> str:
    """``text`` with every subscriber token replaced by ``[redacted]``."""
    return _TOKEN_SHAPE.sub(REDACTED, _TOKEN_PARAM.sub(r"\1" + REDACTED, text))


class RedactTokens(logging.Filter):
    """Rewrites a record whose message carries a token (the message is formatted here,
    once, so the arguments cannot bring the token back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_tokens(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


class DropHandshakeChatter(logging.Filter):
    """One line per WebSocket handshake: uvicorn's request line, not its echo."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and isinstance(record.msg, str)
                    and record.msg.startswith(_HANDSHAKE_CHATTER))


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    """JSON when not a TTY (or forced), so log shippers parse every field."""
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    _route_standard_logging(renderer, shared, _LEVELS[level])


def _route_standard_logging(renderer: Any, shared: list[Any], level: int) -> None:
    """Every ``logging`` record (uvicorn's included) rendered like our own events, tokens
    redacted, through one handler on the root logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, renderer]))
    handler.addFilter(RedactTokens())
    handler.addFilter(DropHandshakeChatter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
