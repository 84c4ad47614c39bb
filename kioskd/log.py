"""structlog set-up: JSON lines off a TTY, native journald entries under systemd, a console format on a TTY,
secrets redacted twice.

The contract (DESIGN §6, docs/logging.md): each line has a stable dotted event name at a fixed level, and the
fields of that event. The core never logs; it returns ``Note`` actions and ``emit`` writes them. Redaction runs
last before rendering, after the traceback has been turned into text, so it covers every field, nested values
and exception text: the ``api_key``, ``authorization`` and ``api-key`` fields are masked whatever their value,
and any registered secret's value is cut out of every string.

Under journald (the output is the stream named by $JOURNAL_STREAM) each event goes to journald's socket as
structured fields instead of a line (``kioskd/journal.py``): ``journalctl -u kioskd KIOSKD_EVENT=turn.done``.
While that socket cannot be reached the lines go to the stream with the ``<N>`` priority prefix, said once.

Thread affinity: ``configure`` and ``add_secret`` are called from the main thread (at start and after the key
is read); logging itself is safe from any thread (structlog's WriteLogger holds a lock per write, the journal
sender one per send), but the audio callbacks never log.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final, TextIO, TypeAlias, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from kioskd import journal
from kioskd.core.events import Note

Logger: TypeAlias = FilteringBoundLogger

REDACTED: Final = "[redacted]"
LEVELS: Final[Mapping[str, int]] = {
    "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
}
FORMATS: Final = ("auto", "json", "console")
#: syslog priorities that journald reads from a "<N>" line prefix (SyslogLevelPrefix=yes, the default)
SYSLOG_PRIORITY: Final[Mapping[str, int]] = {
    "debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3,
}
#: field names whose values are always masked, compared in lower case
MASKED_FIELDS: Final = frozenset({"api_key", "authorization", "api-key"})
#: keys the processors own; a Note field of that name is written as note_<name> instead
RESERVED_FIELDS: Final = frozenset({"event", "level", "timestamp", "logger", "exception", "exc_info"})
#: third-party loggers (websockets, asyncio) reach the same output at WARNING and above only: their DEBUG is
#: per-frame, and websockets' handshake DEBUG would print headers
STDLIB_MIN_LEVEL: Final = logging.WARNING

_secrets: tuple[str, ...] = ()
_bridge: logging.Handler | None = None
_journal: journal.JournalSender | None = None


def add_secret(value: str) -> None:
    """Register a secret (the API key) whose value is replaced by "[redacted]" wherever it appears."""
    global _secrets
    value = value.strip()
    if value and value not in _secrets:
        # longest first, so a secret that contains another is cut out whole
        _secrets = tuple(sorted((*_secrets, value), key=len, reverse=True))


def _scrub(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {k: REDACTED if isinstance(k, str) and k.lower() in MASKED_FIELDS else _scrub(v, secrets)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_scrub(v, secrets) for v in value]
    if isinstance(value, BaseException):
        return _scrub(str(value), secrets)
    # any other object renders through repr() or str(); render it here if that text would carry a secret
    text = str(value)
    return _scrub(text, secrets) if any(s in text for s in secrets) else value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask the secret-named fields and every registered secret's value."""
    return cast(EventDict, _scrub(event_dict, _secrets))


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's WriteLogger plus the name ``get_logger`` was given (``add_logger_name`` reads it)."""

    def __init__(self, file: TextIO, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    """Builds the logger behind each ``get_logger(name)`` proxy, at its first use after each ``configure``."""

    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else None)


def _add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


def _ordered(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Put timestamp, level, event and logger first, so lines read alike."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event", "logger") if k in event_dict}
    return {**head, **event_dict}


class _JournalEntry:
    """Under journald: render the event as a native journal entry, and as the ``<N>`` JSON line that the stream
    gets instead while the journal socket cannot be reached. Runs after ``redact``, so both are redacted."""

    def __init__(self) -> None:
        self._json = structlog.processors.JSONRenderer()

    def __call__(self, logger: WrappedLogger, method: str,
                 event_dict: EventDict) -> tuple[tuple[bytes, str], dict[str, Any]]:
        priority = SYSLOG_PRIORITY.get(str(event_dict.get("level", "info")), 6)
        line = cast(str, self._json(logger, method, event_dict))
        return (journal.encode(journal.entry(event_dict, line, priority)), f"<{priority}>{line}"), {}


class _JournalLogger:
    """Sends each entry to journald; one it cannot send goes to the stream as its ``<N>`` line (never lost),
    and the first of an outage is preceded by a ``log.journal_unavailable`` line there."""

    def __init__(self, sender: journal.JournalSender, file: TextIO, name: str | None) -> None:
        self._sender = sender
        self._stream = structlog.WriteLogger(file)  # shares the stream's lock with every other writer of it
        self.name = name

    def msg(self, entry: bytes, line: str) -> None:
        sent, cause = self._sender.send(entry)
        if sent:
            return
        if cause is not None:  # the sender is down now, so this line itself goes to the stream
            get_logger("kioskd.log").warning("log.journal_unavailable", socket=self._sender.path, cause=cause,
                                             retry_s=self._sender.retry_s)
        self._stream.msg(line)

    log = debug = info = warn = warning = error = err = critical = exception = fatal = failure = msg


class _JournalLoggerFactory:
    def __init__(self, sender: journal.JournalSender, file: TextIO) -> None:
        self._sender = sender
        self._file = file

    def __call__(self, *args: Any) -> _JournalLogger:
        return _JournalLogger(self._sender, self._file, str(args[0]) if args else None)


def writes_to_journal(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True when ``stream`` is systemd's journal stream. systemd sets JOURNAL_STREAM to "<dev>:<inode>" of the
    stream it connected; a child whose output went elsewhere inherits the variable, so compare the two. A
    stream without a file descriptor cannot be checked, and then the variable is trusted."""
    expected = environ.get("JOURNAL_STREAM")
    if not expected:
        return False
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both OSError and ValueError
        return True
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}" == expected


class _StdlibBridge(logging.Handler):
    """Send third-party ``logging`` records through the same processors (JSON, redaction)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kw: dict[str, Any] = {"exc_info": record.exc_info} if record.exc_info else {}
            get_logger(record.name).log(record.levelno, record.getMessage(), **kw)
        except Exception:  # a logging failure must never take down the caller
            self.handleError(record)


def configure(level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None,
              secrets: Iterable[str] = (), environ: Mapping[str, str] | None = None,
              journal_socket: str = journal.JOURNAL_SOCKET) -> None:
    """Set up logging for the process; may be called again (tests, reload) and replaces the previous set-up.

    ``fmt`` "auto" writes console lines on a TTY and JSON otherwise: native entries to ``journal_socket`` when
    ``stream`` is the journal stream, JSON lines to ``stream`` elsewhere. ``stream`` defaults to stderr.
    ``environ`` (default os.environ) is read for JOURNAL_STREAM. Raises ValueError for an unknown level or fmt.
    """
    global _bridge, _journal
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out: TextIO = stream if stream is not None else sys.stderr
    for secret in secrets:
        add_secret(secret)
    tty = _isatty(out)
    if _journal is not None:
        _journal.close()
        _journal = None
    renderer: Processor
    factory: _NamedWriteLoggerFactory | _JournalLoggerFactory = _NamedWriteLoggerFactory(out)
    if fmt == "console" or (fmt == "auto" and tty):
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    elif writes_to_journal(out, os.environ if environ is None else environ):
        _journal = journal.JournalSender(journal_socket)
        renderer = _JournalEntry()
        factory = _JournalLoggerFactory(_journal, out)
    else:
        renderer = structlog.processors.JSONRenderer()  # one JSON object per line
    processors: list[Processor] = [
        structlog.processors.add_log_level,
        _add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # the traceback becomes text here, before redaction, so the key cannot leak through it
        structlog.processors.format_exc_info,
        redact,
        _ordered,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=factory,
        # not cached: loggers made before configure() (module level, tests) follow a later configure()
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    if _bridge is not None:
        root.removeHandler(_bridge)
    _bridge = _StdlibBridge(level=max(LEVELS[level], STDLIB_MIN_LEVEL))
    root.addHandler(_bridge)


def reset() -> None:
    """Undo ``configure``: structlog's defaults, no stdlib bridge. Registered secrets stay registered."""
    global _bridge, _journal
    structlog.reset_defaults()
    if _journal is not None:
        _journal.close()
        _journal = None
    if _bridge is not None:
        logging.getLogger().removeHandler(_bridge)
        _bridge = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or exotic streams are not terminals
        return False


def get_logger(name: str) -> Logger:
    """A logger whose lines carry ``logger=name``; it follows the current ``configure`` set-up."""
    return cast(Logger, structlog.get_logger(name))


def emit(logger: Logger, note: Note) -> None:
    """Write the core's ``Note`` as one line: event ``note.name`` at ``note.level`` with ``note.fields``."""
    fields = {f"note_{k}" if k in RESERVED_FIELDS else k: v for k, v in note.fields.items()}
    logger.log(LEVELS[note.level], note.name, **fields)


def error_fields(exc: BaseException) -> dict[str, str]:
    """The two fields every failure line carries: ``error`` (the exception's str, written to be the message;
    the type name when it is empty, as for a bare TimeoutError) and ``error_type``."""
    return {"error": str(exc) or type(exc).__name__, "error_type": type(exc).__name__}
