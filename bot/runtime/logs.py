"""Slipway's own logs: one JSON object per line, for a log pipeline, or
plain text, for a person at a terminal.

Work that belongs to a deploy runs inside :func:`deploy_context` (the
runner's task, a click's background work, an engine callback), so every
line it logs carries that deploy's ``deploy_id`` without each call passing
it. The context lives in a :class:`contextvars.ContextVar`: a task started
inside it inherits it, and two deploys running side by side on the one
event loop never see each other's.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import datetime, timezone
from types import MappingProxyType
from typing import IO, Any

FORMATS = ("json", "text")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("slipway_log_context", default=_EMPTY)

# What every LogRecord has of its own; anything else on a record came from
# ``extra=`` or from the context, and goes into the line as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every line logged inside (and in tasks started inside)."""
    token = _context.set(MappingProxyType({**_context.get(), **fields}))
    try:
        yield
    finally:
        _context.reset(token)


def current_deploy() -> int | None:
    """The deploy the running code works on, if it says (see :func:`deploy_context`)."""
    return _context.get().get("deploy_id")


def deploy_context(deploy_id: int | None) -> contextlib.AbstractContextManager[None]:
    """Mark what runs inside as work on ``deploy_id`` (no-op for None)."""
    return log_context(deploy_id=deploy_id) if deploy_id is not None else contextlib.nullcontext()


def current_context() -> dict[str, Any]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the log context onto each record as it is emitted, in the
    task that logged it (a field given with ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``ts``, ``level``,
    ``logger``, ``message``, the context and ``extra=`` fields, and the
    traceback (``exception``) as a string inside the same line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in extra_fields(record).items():
            entry.setdefault(name, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii=False: "api 2.6.3 → 2.7.0" stays greppable as written
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic one-line format, for a person: the deploy a line belongs
    to is appended (``[deploy 42]``); other structured fields are left to
    the JSON format (aiohttp's access log alone carries a dozen that repeat
    its message). A traceback follows on its own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        deploy_id = getattr(record, "deploy_id", None)
        return f"{line} [deploy {deploy_id}]" if deploy_id is not None else line


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``fmt`` (``json`` or ``text``).

    Raises:
        ValueError: another format was asked for.
    """
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {fmt!r}: use one of {', '.join(FORMATS)}")


def configure_logging(level: str | int = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records to ``stream`` (stderr) in ``fmt``, at
    ``level`` and above; replaces whatever handlers the root logger had.
    Returns the handler installed.

    Raises:
        ValueError: an unknown level or format.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter(fmt))
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, handlers=[handler], force=True)
    return handler
