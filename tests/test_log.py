"""kioskd.log: JSON lines, level filter, journald priority prefix, console on a real pty, redaction, emit(Note)."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from kioskd import log
from kioskd.core.events import Note
from kioskd.errors import AuthError

KEY = "fake-proj-LOGTESTKEY9876543210zyxwv"


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    log.reset()


def json_stream(level: str = "debug", environ: dict[str, str] | None = None) -> io.StringIO:
    stream = io.StringIO()
    log.configure(level, "auto", stream=stream, environ=environ or {})
    return stream


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_shape_off_a_tty() -> None:
    """One JSON object per line: timestamp (ISO, UTC), level, event, logger first, then the fields."""
    stream = json_stream()
    logger = log.get_logger("kioskd.test")
    logger.info("ws.connected", endpoint="wss://api.openai.com/v1/realtime", attempt=2)
    logger.warning("ws.reconnecting", retry_in_s=0.5)
    raw = stream.getvalue().splitlines()
    assert len(raw) == 2
    first, second = (json.loads(line) for line in raw)
    assert list(first) == ["timestamp", "level", "event", "logger", "endpoint", "attempt"]
    assert first["level"] == "info" and first["event"] == "ws.connected" and first["logger"] == "kioskd.test"
    assert first["attempt"] == 2
    assert datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00")).utcoffset() is not None
    assert second["level"] == "warning" and second["retry_in_s"] == 0.5


def test_json_when_asked_even_on_a_tty() -> None:
    primary, secondary = os.openpty()
    with open(secondary, "w", closefd=True) as tty, open(primary, "rb", buffering=0, closefd=True) as reader:
        log.configure("info", "json", stream=tty, environ={})
        log.get_logger("kioskd.test").info("daemon.ready", phase="idle")
        line = reader.read(4096).decode()
    assert json.loads(line)["event"] == "daemon.ready"


def test_console_on_a_real_tty() -> None:
    """fmt auto on a pseudo-terminal renders structlog's console format, not JSON."""
    primary, secondary = os.openpty()
    with open(secondary, "w", closefd=True) as tty, open(primary, "rb", buffering=0, closefd=True) as reader:
        log.configure("info", "auto", stream=tty, environ={})
        log.get_logger("kioskd.test").info("daemon.ready", phase="idle")
        text = reader.read(4096).decode()
    assert "daemon.ready" in text and "phase" in text and "idle" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_console_when_asked_off_a_tty() -> None:
    stream = io.StringIO()
    log.configure("info", "console", stream=stream, environ={})
    log.get_logger("kioskd.test").info("turn.done", underruns=0)
    text = stream.getvalue()
    assert "turn.done" in text and "underruns=0" in text and "\x1b[" not in text  # no colours off a TTY


@pytest.mark.parametrize(
    ("level", "expected"),
    [("debug", ["d", "i", "w", "e"]), ("info", ["i", "w", "e"]), ("warning", ["w", "e"]), ("error", ["e"])],
)
def test_level_filter(level: str, expected: list[str]) -> None:
    stream = json_stream(level)
    logger = log.get_logger("kioskd.test")
    logger.debug("d")
    logger.info("i")
    logger.warning("w")
    logger.error("e")
    assert [line["event"] for line in lines_of(stream)] == expected


def test_loggers_made_before_configure_follow_it() -> None:
    """Modules take their logger at import; configure() later still decides where and how it writes."""
    early = log.get_logger("kioskd.early")
    stream = json_stream("info")
    early.info("audio.device_opened", device="kiosk_speaker")
    assert lines_of(stream)[0]["logger"] == "kioskd.early"


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="verbose"):
        log.configure("verbose", stream=io.StringIO())
    with pytest.raises(ValueError, match="xml"):
        log.configure("info", "xml", stream=io.StringIO())


# ---------------------------------------------------------------------------------------------------- journald


def test_journald_priority_prefix_while_the_journal_socket_is_unreachable(tmp_path: Path) -> None:
    """Under journald kioskd sends native entries (tests/test_journal.py); while journald's socket cannot be
    reached the lines go to the stream instead, each with its syslog priority, after one line saying why."""
    stream = io.StringIO()  # no descriptor to check: JOURNAL_STREAM is trusted
    log.configure("debug", "auto", stream=stream, environ={"JOURNAL_STREAM": "8:12345"},
                  journal_socket=str(tmp_path / "no-journal.sock"))
    logger = log.get_logger("kioskd.test")
    logger.debug("d")
    logger.info("i")
    logger.warning("w")
    logger.error("e")
    raw = stream.getvalue().splitlines()
    assert [line[:3] for line in raw] == ["<4>", "<7>", "<6>", "<4>", "<3>"]
    assert [json.loads(line[3:])["event"] for line in raw] == ["log.journal_unavailable", "d", "i", "w", "e"]


def test_no_prefix_without_journal_stream() -> None:
    stream = json_stream("info")
    log.get_logger("kioskd.test").error("e")
    assert stream.getvalue().startswith("{")


def test_journal_stream_is_matched_against_the_real_descriptor(tmp_path: Path) -> None:
    """A child that inherits JOURNAL_STREAM but writes elsewhere must neither use the journal nor prefix
    (systemd's dev:inode rule)."""
    path = tmp_path / "out.log"
    missing = str(tmp_path / "no-journal.sock")
    with open(path, "w") as out:
        st = os.fstat(out.fileno())
        log.configure("info", "json", stream=out, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                      journal_socket=missing)
        log.get_logger("kioskd.test").warning("w")
        log.configure("info", "json", stream=out, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"},
                      journal_socket=missing)
        log.get_logger("kioskd.test").warning("w2")
    unavailable, first, second = path.read_text().splitlines()
    assert json.loads(unavailable[3:])["event"] == "log.journal_unavailable"
    assert first.startswith("<4>{") and second.startswith("{")
    assert log.writes_to_journal(io.StringIO(), {}) is False


# ---------------------------------------------------------------------------------------------------- secrets


def test_secret_fields_are_masked_by_name() -> None:
    stream = json_stream()
    log.get_logger("kioskd.test").info(
        "ws.connecting", api_key="anything", Authorization="Bearer anything",
        headers={"API-KEY": "anything", "User-Agent": "kioskd"}, items=[{"api_key": "anything"}],
    )
    (line,) = lines_of(stream)
    assert line["api_key"] == line["Authorization"] == "[redacted]"
    assert line["headers"] == {"API-KEY": "[redacted]", "User-Agent": "kioskd"}
    assert line["items"] == [{"api_key": "[redacted]"}]
    assert "anything" not in stream.getvalue()


def test_registered_key_never_appears() -> None:
    """The key's value is cut from every field, nested values, the event text and exception text."""
    stream = json_stream()
    log.add_secret(KEY)  # registered after logging started, as cli.py does once it has read the key
    logger = log.get_logger("kioskd.test")
    logger.info("ws.connecting", note=f"header Bearer {KEY}", nested={"deep": [f"x{KEY}y"]}, pair=(KEY, 1))
    logger.warning(f"odd event text {KEY}")
    try:
        raise RuntimeError(f"server said: bad key {KEY}")
    except RuntimeError as exc:
        logger.error("ws.fault", exc_info=exc, **log.error_fields(exc))
        logger.error("ws.fault", cause=exc)
        logger.exception("ws.fault")
    text = stream.getvalue()
    assert KEY not in text
    assert text.count("[redacted]") >= 6
    lines = lines_of(stream)
    assert lines[0]["nested"] == {"deep": ["x[redacted]y"]} and lines[0]["pair"] == ["[redacted]", 1]
    assert lines[2]["error"] == "server said: bad key [redacted]" and lines[2]["error_type"] == "RuntimeError"
    assert "Traceback" in lines[2]["exception"] and "[redacted]" in lines[2]["exception"]
    assert lines[3]["cause"] == "server said: bad key [redacted]"
    assert "RuntimeError: server said: bad key [redacted]" in lines[4]["exception"]


def test_secrets_given_to_configure_and_console_format() -> None:
    stream = io.StringIO()
    other = "fake-another-secret-value-42"
    log.configure("info", "console", stream=stream, secrets=[other], environ={})
    log.get_logger("kioskd.test").info("x", text=f"key={other}")
    assert other not in stream.getvalue() and "[redacted]" in stream.getvalue()


def test_third_party_logging_goes_through_redaction_at_warning_and_above() -> None:
    """websockets logs headers at DEBUG and errors at WARNING: the bridge keeps WARNING+, redacted, as JSON."""
    stream = json_stream("debug")
    log.add_secret(KEY)
    third_party = logging.getLogger("websockets.client")
    third_party.debug("> Authorization: Bearer %s", KEY)
    third_party.warning("handshake failed for %s", KEY)
    (line,) = lines_of(stream)
    assert line == {**line, "level": "warning", "logger": "websockets.client",
                    "event": "handshake failed for [redacted]"}


# ---------------------------------------------------------------------------------------------------- emit, errors


def test_emit_writes_a_note_at_its_level_with_its_fields() -> None:
    stream = json_stream("info")
    logger = log.get_logger("kioskd")
    log.emit(logger, Note("turn.phase", "info", {"from": "idle", "to": "listening"}))
    log.emit(logger, Note("turn.bounce", "debug"))  # below the level: dropped
    log.emit(logger, Note("turn.timeout", "error", {"waited_s": 10.0, "event": "clash", "level": "clash"}))
    first, second = lines_of(stream)
    assert first == {**first, "event": "turn.phase", "level": "info", "logger": "kioskd",
                     "from": "idle", "to": "listening"}
    assert second["event"] == "turn.timeout" and second["level"] == "error" and second["waited_s"] == 10.0
    assert second["note_event"] == "clash" and second["note_level"] == "clash"


def test_error_fields() -> None:
    exc = AuthError("wss://api.openai.com/v1/realtime", 401)
    assert log.error_fields(exc) == {"error": str(exc), "error_type": "AuthError"}
    assert log.error_fields(TimeoutError()) == {"error": "TimeoutError", "error_type": "TimeoutError"}


def test_every_event_name_is_documented_and_every_documented_one_exists() -> None:
    """docs/logging.md's event table and the code agree: each name kioskd logs (a core Note or an adapter's log
    call) has a row, and each row names an event some code still logs."""
    import re

    from tests.conftest import REPO

    pattern = re.compile(r'(?:Note\(|\.(?:debug|info|warning|error|critical|exception)\()\s*"([a-z_]+\.[a-z_]+)"')
    logged = {m.group(1) for path in (REPO / "kioskd").rglob("*.py") for m in pattern.finditer(path.read_text())}
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)`", (REPO / "docs" / "logging.md").read_text(), re.M))
    assert logged, "the pattern found no log call: it no longer matches how kioskd logs"
    assert not logged - documented, f"logged but not in docs/logging.md: {sorted(logged - documented)}"
    assert not documented - logged, f"in docs/logging.md but never logged: {sorted(documented - logged)}"


def test_the_technicians_page_says_what_to_do_about_every_event() -> None:
    """docs/technician.md has a row for each event in docs/logging.md (what it means at the exhibit, what to do)."""
    import re

    from tests.conftest import REPO

    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)`", (REPO / "docs" / "logging.md").read_text(), re.M))
    explained = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)`", (REPO / "docs" / "technician.md").read_text(), re.M))
    assert not documented - explained, f"not in docs/technician.md: {sorted(documented - explained)}"
