"""kioskd under journald: native entries (kioskd/journal.py) on a real AF_UNIX datagram socket standing in for
journald's, parsed here by the native protocol (``KEY=value`` and the binary ``KEY\\n<u64 LE><value>\\n`` form),
sealed memfds for entries over the datagram limit, and the ``<N>`` lines on the stream while the socket cannot be
reached."""

from __future__ import annotations

import array
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from kioskd import journal, log
from kioskd.core.events import Note

KEY = "fake-proj-JOURNALKEY0123456789abc"
#: journald's field name rule for a client: upper case, digits, underscore; not starting with "_" or a digit
VALID_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def parse_entry(data: bytes) -> dict[str, list[str]]:
    """journald's native protocol, as journald reads it: each field ``KEY=value\\n``, or ``KEY\\n`` followed by
    the value's length (64-bit little-endian), the value and ``\\n``. A field may repeat."""
    fields: dict[str, list[str]] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        eq = data.find(b"=", i, end)
        if eq != -1:
            name, value = data[i:eq], data[eq + 1:end]
            i = end + 1
        else:
            name = data[i:end]
            size = int.from_bytes(data[end + 1:end + 9], "little")
            value = data[end + 9:end + 9 + size]
            assert data[end + 9 + size:end + 10 + size] == b"\n", "a binary value must end with a newline"
            i = end + 10 + size
        key = name.decode("ascii")
        assert VALID_NAME.fullmatch(key), f"not a valid journal field name: {key!r}"
        fields.setdefault(key, []).append(value.decode())
    return fields


class FakeJournal:
    """A datagram socket in a temporary directory, read by a thread (the kernel queues only ~10 datagrams for
    an unread socket: a sender would block). Each entry is kept as received: raw bytes, and whether it came in a
    memfd (then the descriptor must be sealed, as journald requires)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.raw: list[tuple[bytes, bool]] = []
        self._closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            except OSError:
                return
            if self._closed:
                return
            if ancillary:
                (level, kind, payload), = ancillary
                assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS) and data == b""
                fd = array.array("i", payload[:4])[0]
                try:
                    import fcntl

                    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
                    assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SHRINK, "an unsealed memfd"
                    data = os.pread(fd, os.fstat(fd).st_size, 0)
                finally:
                    os.close(fd)
            self.raw.append((data, bool(ancillary)))

    def entries(self, count: int, timeout_s: float = 5.0) -> list[dict[str, list[str]]]:
        deadline = time.monotonic() + timeout_s
        while len(self.raw) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.raw) >= count, f"{len(self.raw)} entries, expected {count}"
        return [parse_entry(data) for data, _ in self.raw]

    def close(self) -> None:
        """Close for real: a thread blocked in recvmsg would keep the socket alive after a plain close()."""
        self._closed = True
        self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self.sock.close()


def one(entry: dict[str, list[str]], name: str) -> str:
    (value,) = entry[name]
    return value


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeJournal]:
    j = FakeJournal(tmp_path / "journal.sock")
    try:
        yield j
    finally:
        j.close()


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    log.reset()


def under_journald(out: TextIO, socket_path: str, level: str = "debug") -> None:
    """configure() as under systemd: JOURNAL_STREAM names ``out``'s device and inode."""
    st = os.fstat(out.fileno())
    log.configure(level, "auto", stream=out, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                  journal_socket=socket_path)


# ---------------------------------------------------------------------------------------------------- native


def test_each_event_is_one_native_entry_and_the_stream_gets_nothing(tmp_path: Path, fake: FakeJournal) -> None:
    out_path = tmp_path / "stdout"
    with open(out_path, "w") as out:
        under_journald(out, fake.path)
        logger = log.get_logger("kioskd")
        logger.info("turn.done", turn=3, outcome="answered", release_to_first_sound_ms=352, underruns=0,
                    cause=None, answered=True, playout={"target_ms": 30, "jitter_ms": 1.5}, tools=["lookup"],
                    error="server said: no", **{"api-key-like name": "v", "from": "idle"})
        logger.debug("d")
        logger.info("i")
        logger.warning("w")
        logger.error("e")
        log.emit(logger, Note("turn.phase", "info", {"from": "idle", "to": "listening"}))
        entries = fake.entries(6)
    assert out_path.read_text() == ""
    done, d, i, w, e, phase = entries
    assert one(done, "SYSLOG_IDENTIFIER") == "kioskd" and one(done, "KIOSKD_EVENT") == "turn.done"
    assert one(done, "PRIORITY") == "6" and one(done, "KIOSKD_LOGGER") == "kioskd"
    # strings as they are, everything else as JSON
    assert one(done, "KIOSKD_OUTCOME") == "answered" and one(done, "KIOSKD_TURN") == "3"
    assert one(done, "KIOSKD_RELEASE_TO_FIRST_SOUND_MS") == "352" and one(done, "KIOSKD_CAUSE") == "null"
    assert one(done, "KIOSKD_ANSWERED") == "true" and one(done, "KIOSKD_TOOLS") == '["lookup"]'
    assert json.loads(one(done, "KIOSKD_PLAYOUT")) == {"target_ms": 30, "jitter_ms": 1.5}
    assert one(done, "KIOSKD_API_KEY_LIKE_NAME") == "v" and one(done, "KIOSKD_FROM") == "idle"
    # the envelope is not repeated as fields: PRIORITY is the level, journald stamps its own time
    assert not {"KIOSKD_LEVEL", "KIOSKD_TIMESTAMP"} & set(done)
    # the whole JSON line, so nothing is lost
    line = json.loads(one(done, "KIOSKD_JSON"))
    assert list(line)[:4] == ["timestamp", "level", "event", "logger"] and line["playout"]["jitter_ms"] == 1.5
    # a readable one-line summary: the event and its scalar fields
    message = one(done, "MESSAGE")
    assert message.startswith("turn.done turn=3 outcome=answered release_to_first_sound_ms=352 underruns=0 ")
    assert 'error="server said: no"' in message and "playout" not in message and "\n" not in message
    assert [one(x, "PRIORITY") for x in (d, i, w, e)] == ["7", "6", "4", "3"]
    assert [one(x, "KIOSKD_EVENT") for x in (d, i, w, e)] == ["d", "i", "w", "e"]
    assert one(phase, "KIOSKD_EVENT") == "turn.phase" and one(phase, "KIOSKD_TO") == "listening"
    assert all(not binary for _, binary in fake.raw)


def test_values_with_newlines_use_the_binary_form(tmp_path: Path, fake: FakeJournal) -> None:
    """A traceback, or any field with a newline, goes as KEY\\n<length><value>\\n; MESSAGE stays one line."""
    with open(tmp_path / "stdout", "w") as out:
        under_journald(out, fake.path)
        logger = log.get_logger("kioskd")
        logger.warning("prompts.unusable", cause="line one\nline two", file="x.wav")
        try:
            raise RuntimeError("the bug")
        except RuntimeError:
            logger.exception("turn.bug", phase="idle")
        first, second = fake.entries(2)
    raw = fake.raw[0][0]
    assert b"KIOSKD_CAUSE\n" + (17).to_bytes(8, "little") + b"line one\nline two\n" in raw
    assert one(first, "KIOSKD_CAUSE") == "line one\nline two" and one(first, "KIOSKD_FILE") == "x.wav"
    assert one(first, "MESSAGE") == 'prompts.unusable cause="line one\\nline two" file=x.wav'
    assert one(second, "PRIORITY") == "3"
    trace = one(second, "KIOSKD_EXCEPTION")
    assert trace.startswith("Traceback (most recent call last):\n") and trace.endswith("RuntimeError: the bug")
    assert one(second, "MESSAGE") == "turn.bug phase=idle"


def test_secrets_are_redacted_in_every_native_field(tmp_path: Path, fake: FakeJournal) -> None:
    with open(tmp_path / "stdout", "w") as out:
        under_journald(out, fake.path)
        log.add_secret(KEY)
        logger = log.get_logger("kioskd")
        logger.info("ws.connecting", note=f"Bearer {KEY}", api_key="anything", headers={"Authorization": "x"},
                    nested=[f"a{KEY}b"])
        try:
            raise RuntimeError(f"server said: bad key {KEY}")
        except RuntimeError as exc:
            logger.error("ws.fault", exc_info=exc, **log.error_fields(exc))
        entries = fake.entries(2)
    assert all(KEY.encode() not in data and b"anything" not in data for data, _ in fake.raw)
    first, second = entries
    assert one(first, "KIOSKD_NOTE") == "Bearer [redacted]" and one(first, "KIOSKD_API_KEY") == "[redacted]"
    assert json.loads(one(first, "KIOSKD_HEADERS")) == {"Authorization": "[redacted]"}
    assert one(first, "KIOSKD_NESTED") == '["a[redacted]b"]'
    assert "Bearer [redacted]" in one(first, "MESSAGE")
    assert one(second, "KIOSKD_ERROR") == "server said: bad key [redacted]"
    assert "[redacted]" in one(second, "KIOSKD_EXCEPTION")


def test_an_entry_over_the_datagram_limit_goes_in_a_sealed_memfd(tmp_path: Path, fake: FakeJournal) -> None:
    limit = int(Path("/proc/sys/net/core/wmem_default").read_text())
    with open(tmp_path / "stdout", "w") as out:
        under_journald(out, fake.path)
        log.get_logger("kioskd").info("big", blob="x" * (2 * limit))
        log.get_logger("kioskd").info("small")
        big, small = fake.entries(2)
    assert [binary for _, binary in fake.raw] == [True, False]
    assert one(big, "KIOSKD_BLOB") == "x" * (2 * limit) and one(small, "KIOSKD_EVENT") == "small"
    assert len(one(big, "MESSAGE")) == journal.MESSAGE_MAX_CHARS


def test_a_child_whose_stdout_is_the_journal_stream_sends_natively(tmp_path: Path, fake: FakeJournal) -> None:
    """As systemd starts kioskd: stdout is the stream JOURNAL_STREAM names (here a pipe), logging goes to the
    socket and nothing reaches stdout. Third-party ``logging`` records take the same way."""
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    code = ("import logging, sys\n"
            "from kioskd import log\n"
            f"log.configure('info', 'auto', stream=sys.stdout, journal_socket={fake.path!r})\n"
            "log.get_logger('kioskd').info('daemon.started', url='ws://127.0.0.1:1/v1/realtime')\n"
            "logging.getLogger('websockets.client').warning('handshake failed')\n")
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    try:
        child = subprocess.run([sys.executable, "-c", code], stdout=write_end, stderr=subprocess.PIPE, env=env,
                               timeout=60)
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        stdout = reader.read()
    assert child.returncode == 0, child.stderr
    assert stdout == b""
    started, third_party = fake.entries(2)
    assert one(started, "KIOSKD_EVENT") == "daemon.started" and one(started, "SYSLOG_IDENTIFIER") == "kioskd"
    assert one(started, "KIOSKD_URL") == "ws://127.0.0.1:1/v1/realtime"
    assert one(third_party, "KIOSKD_LOGGER") == "websockets.client" and one(third_party, "PRIORITY") == "4"


def test_elsewhere_json_lines_and_no_datagram(tmp_path: Path, fake: FakeJournal) -> None:
    """A stream that is not the journal's (an inherited JOURNAL_STREAM, a pipe) keeps plain JSON lines."""
    path = tmp_path / "out.log"
    with open(path, "w") as out:
        st = os.fstat(out.fileno())
        log.configure("info", "json", stream=out, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"},
                      journal_socket=fake.path)
        log.get_logger("kioskd").info("i")
    time.sleep(0.1)
    assert json.loads(path.read_text())["event"] == "i" and fake.raw == []


# ---------------------------------------------------------------------------------------------------- fallback


def test_an_unreachable_journal_socket_falls_back_to_prefixed_lines_said_once(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    missing = str(tmp_path / "no-journal.sock")
    with open(path, "w") as out:
        under_journald(out, missing)
        logger = log.get_logger("kioskd")
        logger.info("i")
        logger.error("e", api_key="anything")
    notice, i, e = path.read_text().splitlines()
    assert notice.startswith("<4>{") and i.startswith("<6>{") and e.startswith("<3>{")
    said = json.loads(notice[3:])
    assert said["event"] == "log.journal_unavailable" and said["socket"] == missing
    assert said["cause"] == "no such file or directory" and said["retry_s"] == journal.RETRY_S
    assert json.loads(e[3:])["api_key"] == "[redacted]"


def test_the_sender_tries_again_after_an_outage_and_says_each_outage_once(tmp_path: Path) -> None:
    path = tmp_path / "journal.sock"
    sender = journal.JournalSender(str(path), retry_s=0.0)
    try:
        assert sender.send(b"A=1\n") == (False, "no such file or directory")
        assert sender.send(b"A=2\n") == (False, None)  # the same outage: not said again
        server = FakeJournal(path)
        try:
            assert sender.send(b"A=3\n") == (True, None)
            assert server.entries(1) == [{"A": ["3"]}]
        finally:
            server.close()
        os.unlink(path)
        # journald went away: the old connection is refused, a fresh one finds no socket; a new outage, said
        assert sender.send(b"A=4\n") == (False, "no such file or directory")
        server = FakeJournal(path)  # and came back with a new socket: the old connection is replaced
        try:
            assert sender.send(b"A=5\n") == (True, None)
            assert server.entries(1) == [{"A": ["5"]}]
        finally:
            server.close()
    finally:
        sender.close()


def test_a_stalled_journal_does_not_hold_logging_forever(tmp_path: Path) -> None:
    """journald not reading: a send waits SEND_TIMEOUT_S at most, then the line goes to the stream (and the
    socket is left alone for RETRY_S)."""
    path = tmp_path / "journal.sock"
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(str(path))
    sender = journal.JournalSender(str(path), timeout_s=0.2)
    try:
        results = [sender.send(b"A=1\n") for _ in range(64)]  # the kernel queues a few, then the queue is full
        assert (True, None) in results
        assert (False, "journald did not take the entry in time") in results
        assert results[-1] == (False, None)
    finally:
        sender.close()
        unread.close()


# ---------------------------------------------------------------------------------------------------- fields


def test_field_names_follow_the_journal_rules() -> None:
    assert journal.field_name("release_to_first_sound_ms") == "KIOSKD_RELEASE_TO_FIRST_SOUND_MS"
    assert journal.field_name("api-key") == "KIOSKD_API_KEY"
    assert journal.field_name("Zoë 2") == "KIOSKD_ZO__2"
    long = journal.field_name("x" * 100)
    assert len(long) == 64 and VALID_NAME.fullmatch(long)
    # a name already used keeps both values: KIOSKD_JSON is the whole line, so a field "json" is KIOSKD_JSON_2
    assert journal.field_name("json", {"KIOSKD_EVENT", "KIOSKD_JSON"}) == "KIOSKD_JSON_2"
    assert len(journal.field_name("x" * 100, {long})) == 64
    entry = journal.entry({"event": "e", "json": 1, "JSON": 2, "a-b": 3, "a_b": 4}, "{}", 6)
    names = [name for name, _ in entry]
    assert names == ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "KIOSKD_EVENT", "KIOSKD_JSON_2",
                     "KIOSKD_JSON_3", "KIOSKD_A_B", "KIOSKD_A_B_2", "KIOSKD_JSON"]


def test_encode_round_trips_through_the_parser() -> None:
    fields = [("MESSAGE", "hello"), ("KIOSKD_X", "a\nb"), ("KIOSKD_EMPTY", ""), ("KIOSKD_EQ", "k=v"),
              ("KIOSKD_UTF8", "Grüße\n")]
    assert parse_entry(journal.encode(fields)) == {name: [value] for name, value in fields}


def test_message_is_capped_and_one_line() -> None:
    text = journal.message({"event": "e", "level": "info", "a": "x" * 5000, "b": "two\nlines"})
    assert len(text) == journal.MESSAGE_MAX_CHARS and text.endswith("…") and "\n" not in text
