"""journald's native protocol, with the stdlib alone: one log event becomes one datagram of structured fields.

The protocol (systemd's "Native Journal Protocol"): a datagram to /run/systemd/journal/socket (AF_UNIX,
SOCK_DGRAM) holds the fields one after another, each either ``KEY=value\\n`` or, for a value that contains a
newline (a traceback), ``KEY\\n`` + the value's length as 64-bit little-endian + the value + ``\\n``. A field name
is upper-case letters, digits and underscores, at most 64 characters, and starts with neither a digit nor an
underscore. An entry too large for one datagram (EMSGSIZE: the sending socket's buffer, 208 KiB by default) goes
in a sealed memfd whose descriptor is passed in an empty datagram (SCM_RIGHTS), as libsystemd does.

``entry`` builds the fields of one structlog event (already redacted: it runs after ``log.redact``);
``JournalSender`` sends them, and tells its caller when to write the line to the stream instead (the journal
socket unreachable): nothing is lost, and an outage is said once. Thread-safe: one lock per sender, held for one
send, as structlog's WriteLogger holds one per write.
"""

from __future__ import annotations

import array
import errno
import fcntl
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, Final

#: where journald listens for native entries
JOURNAL_SOCKET: Final = "/run/systemd/journal/socket"
IDENTIFIER: Final = "kioskd"
#: every event field is written as KIOSKD_<NAME>; the event's name and its whole JSON line have their own
PREFIX: Final = "KIOSKD_"
EVENT_FIELD: Final = "KIOSKD_EVENT"
JSON_FIELD: Final = "KIOSKD_JSON"
FIELD_NAME_MAX: Final = 64
#: the event dict keys that are not fields of the event: PRIORITY carries the level, journald its own timestamp
ENVELOPE: Final = frozenset({"event", "level", "timestamp"})
#: keys left out of the one-line MESSAGE (still in their own fields and in KIOSKD_JSON)
NOT_IN_MESSAGE: Final = ENVELOPE | {"logger", "exception"}
MESSAGE_MAX_CHARS: Final = 1024
#: a send that cannot go through this long (journald stalled) counts as an outage
SEND_TIMEOUT_S: Final = 1.0
#: during an outage the socket is tried again this often; lines go to the stream meanwhile
RETRY_S: Final = 10.0

_NOT_NAME_CHARS: Final = re.compile(r"[^A-Z0-9_]")
_BARE: Final = re.compile(r"[^\s\"'=]+")


def field_name(key: str, taken: Iterable[str] = ()) -> str:
    """``KIOSKD_<KEY>`` as journald accepts it: upper case, any other character an underscore, at most 64
    characters; a name already ``taken`` gets ``_2``, ``_3``, … (two keys that differ only in case or
    punctuation both keep their values)."""
    base = (PREFIX + _NOT_NAME_CHARS.sub("_", key.upper()))[:FIELD_NAME_MAX]
    taken = set(taken)
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[:FIELD_NAME_MAX - len(suffix)] + suffix
    return name


def _text(value: Any) -> str:
    """A field's value: a string as it is, anything else as JSON (as the JSON line writes it)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=repr, ensure_ascii=False)


def _shown(value: Any) -> str:
    """A value in MESSAGE: bare when it is one word, quoted (JSON, newlines escaped) otherwise."""
    if isinstance(value, str):
        return value if _BARE.fullmatch(value) else json.dumps(value, ensure_ascii=False)
    return json.dumps(value, default=repr, ensure_ascii=False)


def message(event_dict: Mapping[str, Any]) -> str:
    """The readable one-line summary journalctl shows: the event, then its scalar fields as ``key=value``
    (nested values and a traceback are left to their own fields), at most ``MESSAGE_MAX_CHARS``."""
    parts = [str(event_dict.get("event", ""))]
    for key, value in event_dict.items():
        if key in NOT_IN_MESSAGE or isinstance(value, (Mapping, list, tuple)):
            continue
        parts.append(f"{key}={_shown(value)}")
    text = " ".join(parts).replace("\n", " ")
    return text if len(text) <= MESSAGE_MAX_CHARS else text[:MESSAGE_MAX_CHARS - 1] + "…"


def entry(event_dict: Mapping[str, Any], line: str, priority: int) -> list[tuple[str, str]]:
    """The journal fields of one event: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, KIOSKD_EVENT, each event field as
    KIOSKD_<NAME> (``logger`` and ``exception`` included) and the whole JSON ``line`` as KIOSKD_JSON."""
    fields = [("MESSAGE", message(event_dict)), ("PRIORITY", str(priority)), ("SYSLOG_IDENTIFIER", IDENTIFIER),
              (EVENT_FIELD, _text(event_dict.get("event", "")))]
    taken = {EVENT_FIELD, JSON_FIELD}
    for key, value in event_dict.items():
        if key in ENVELOPE:
            continue
        name = field_name(str(key), taken)
        taken.add(name)
        fields.append((name, _text(value)))
    fields.append((JSON_FIELD, line))
    return fields


def encode(fields: Iterable[tuple[str, str]]) -> bytes:
    """The native protocol's bytes: ``KEY=value\\n``, or ``KEY\\n<u64 LE length><value>\\n`` when the value holds a
    newline."""
    out = bytearray()
    for name, value in fields:
        data = value.encode("utf-8", "surrogateescape")
        if b"\n" in data:
            out += name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """Sends encoded entries to journald's socket, connected once and again after a failure.

    ``send`` returns ``(sent, cause)``: when not sent the caller writes the event's line to its stream instead;
    ``cause`` is set on the first failure of an outage only, so the caller says it once. During an outage the
    socket is tried again every ``retry_s``; the first entry that goes through ends it.
    """

    def __init__(self, path: str = JOURNAL_SOCKET, *, retry_s: float = RETRY_S,
                 timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.path = path
        self.retry_s = retry_s
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._down = False
        self._retry_at = 0.0

    def send(self, data: bytes) -> tuple[bool, str | None]:
        with self._lock:
            now = time.monotonic()
            if self._down and now < self._retry_at:
                return False, None
            try:
                try:
                    self._send(data)
                except OSError as exc:
                    if self._sock is None or isinstance(exc, TimeoutError):
                        raise
                    # an old connection (journald restarted and made the socket anew): one fresh try
                    self._close()
                    self._send(data)
            except TooLarge:
                return False, None  # this one entry goes to the stream; the journal is fine
            except OSError as exc:
                self._close()
                self._retry_at = now + self.retry_s
                if self._down:
                    return False, None
                self._down = True
                return False, _cause(exc)
            self._down = False
            return True, None

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(self._timeout_s)
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            self._sock = sock
        try:
            self._sock.send(data)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_memfd(self._sock, data)

    @staticmethod
    def _send_memfd(sock: socket.socket, data: bytes) -> None:
        """An entry over the datagram limit: write it to a sealed memfd and pass the descriptor (journald
        accepts only a sealed one, so the content cannot change under it)."""
        try:
            fd = os.memfd_create("kioskd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            raise TooLarge from exc
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
        except OSError as exc:
            if exc.errno in (errno.EMSGSIZE, errno.ENOBUFS, errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise TooLarge from exc
            raise
        finally:
            os.close(fd)

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._close()


class TooLarge(Exception):
    """An entry neither a datagram nor a memfd could carry: that one line goes to the stream."""


def _cause(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "journald did not take the entry in time"
    return (exc.strerror or type(exc).__name__).lower()
