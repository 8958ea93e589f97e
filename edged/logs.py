"""Structured logging: readable lines on a terminal, JSON lines, or journald fields.

Every module logs with ``structlog.get_logger()`` and keyword context
(``log.info("frame dropped", camera="front")``). Under systemd the keys become journald
fields (``CAMERA=front``), so ``journalctl -u edged CAMERA=front`` finds them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from typing import Any, Literal, TextIO

import structlog
from pydantic import BaseModel, ConfigDict

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "console", "json", "journal"]


class LogConfig(BaseModel):
    """The ``[log]`` table."""

    model_config = ConfigDict(extra="forbid")

    level: LogLevel = "info"
    format: LogFormat = "auto"


# syslog priorities, which journald's PRIORITY field uses.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
_LEVEL_NUMBER = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# Fields journald or this module set itself; an event key of the same name is renamed.
_RESERVED_FIELDS = {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "EXCEPTION", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}


def started_by_systemd(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """True when systemd started this process (its stdout/stderr go to the journal)."""
    return bool(environ.get("JOURNAL_STREAM") or environ.get("INVOCATION_ID"))


def resolve_format(fmt: LogFormat) -> Literal["console", "json", "journal"]:
    """``auto`` means journald under systemd and readable lines elsewhere."""
    if fmt != "auto":
        return fmt
    return "journal" if started_by_systemd() else "console"


def journal_field_name(key: str) -> str:
    """A journald field name for an event key: upper case, letters, digits and '_'."""
    name = re.sub(r"[^A-Z0-9_]", "_", key.upper()).lstrip("_0123456789")
    name = name or "FIELD"
    return "EDGED_" + name if name in _RESERVED_FIELDS else name


def _journal_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


def _to_journal_fields(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Final processor for the journal format: the event dict as journald fields."""
    level = event.pop("level", method)
    fields = {
        "MESSAGE": str(event.pop("event", "")),
        "PRIORITY": str(_PRIORITY.get(level, 6)),
        "SYSLOG_IDENTIFIER": "edged",
    }
    exc_info = event.pop("exc_info", None)
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        if isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        fields["EXCEPTION"] = "".join(traceback.format_exception(*exc_info))
    event.pop("timestamp", None)  # journald stamps every entry itself
    for key, value in event.items():
        fields[journal_field_name(key)] = _journal_value(value)
    return fields


class JournalLogger:
    """A structlog logger that sends each event to journald as one entry of fields."""

    def __init__(self) -> None:
        from systemd import journal

        self._send = journal.send

    def msg(self, **fields: Any) -> None:
        message = fields.pop("MESSAGE")
        self._send(message, **fields)

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg


def configure_logging(config: LogConfig, stream: TextIO | None = None) -> str:
    """Set up structlog (and route the standard library's logging into it).

    Returns the format in use. Safe to call again on reload: loggers are not cached.
    """
    fmt = resolve_format(config.format)
    stream = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if fmt == "journal":
        processors = [*shared, _to_journal_fields]
        factory: Any = lambda *_: JournalLogger()  # noqa: E731
    elif fmt == "json":
        processors = [
            *shared,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(default=str),
        ]
        factory = structlog.PrintLoggerFactory(stream)
    else:
        processors = [
            *shared,
            structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False),
            structlog.dev.ConsoleRenderer(colors=stream.isatty()),
        ]
        factory = structlog.PrintLoggerFactory(stream)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVEL_NUMBER[config.level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(_LEVEL_NUMBER[config.level])
    return fmt


class _StructlogHandler(logging.Handler):
    """Sends libraries' standard-library log records through structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        log = structlog.get_logger().bind(logger=record.name)
        method = getattr(log, level if level in _PRIORITY else "info")
        if record.exc_info:
            method(record.getMessage(), exc_info=record.exc_info)
        else:
            method(record.getMessage())


def _route_stdlib_logging(level: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _StructlogHandler):
            root.removeHandler(handler)
    root.addHandler(_StructlogHandler())
    root.setLevel(max(level, logging.INFO))  # libraries' debug chatter stays out
