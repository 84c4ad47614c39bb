"""sd_notify against real datagram sockets, and the packaged unit through systemd-analyze."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kioskd.adapters.systemd import monotonic_usec, notify, watchdog_interval_s
from tests.conftest import REPO, UNIT_S

UNIT = REPO / "systemd" / "kioskd.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian package systemd)")


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound SOCK_DGRAM socket standing in for systemd's notify socket, and its NOTIFY_SOCKET value."""
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5 * UNIT_S)
        yield sock, path


def test_ready_and_status_arrive_as_one_datagram(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    assert notify("READY=1", "STATUS=idle", environ={"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=idle"


def test_abstract_socket_name() -> None:
    name = f"kioskd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5 * UNIT_S)
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_newline_in_a_value_cannot_start_a_new_field(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    assert notify("STATUS=offline\nREADY=1", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"STATUS=offline READY=1"


def test_field_without_equals_is_a_bug(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver
    with pytest.raises(ValueError, match="READY"):
        notify("READY", environ={"NOTIFY_SOCKET": path})


def test_without_notify_socket_nothing_is_sent() -> None:
    assert notify("READY=1", environ={}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    assert notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_dead_socket_reports_false(tmp_path: Path) -> None:
    assert notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody")}) is False


def test_a_receiver_that_stops_reading_never_blocks_the_sender(receiver: tuple[socket.socket, str]) -> None:
    """A notify socket nobody reads fills after a few datagrams (net.unix.max_dgram_qlen); notify() then returns
    False at once instead of blocking the event loop, and works again once the receiver reads."""
    import threading

    sock, path = receiver
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": path})
                                                            for _ in range(2000)), daemon=True)
    sender.start()
    sender.join(10 * UNIT_S)
    assert not sender.is_alive(), "notify() blocked on a full socket"
    assert results[0] is True and results.count(False) > 0
    sock.recv(4096)
    assert notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": path}) is True


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}) == 1.5


def test_watchdog_off_or_meant_for_another_process() -> None:
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None


def test_monotonic_usec_is_clock_monotonic() -> None:
    before = time.monotonic_ns() // 1000
    value = monotonic_usec()
    after = time.monotonic_ns() // 1000
    assert before <= value <= after


# ---------------------------------------------------------------------------------------------------- the unit


def _unit_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";")):
            key, _, value = line.partition("=")
            keys.setdefault(key.strip(), []).append(value.strip())
    return keys


def test_unit_has_the_service_contract() -> None:
    keys = _unit_keys()
    assert keys["Type"] == ["notify"]
    assert keys["NotifyAccess"] == ["main"]
    assert keys["ExecStart"] == ["/opt/kioskd/venv/bin/kioskd run --config /etc/kioskd/kioskd.yaml"]
    assert keys["RestartPreventExitStatus"] == ["78"]
    assert keys["Restart"] == ["on-failure"]
    # never `failed` for good: no start limit (kioskd paces itself, and waits for a missing device in-process)
    assert keys["StartLimitIntervalSec"] == ["0"] and "StartLimitBurst" not in keys
    assert keys["LoadCredential"] == ["openai_api_key:/etc/credstore/kioskd.openai_api_key"]
    assert "LG_WD=%t/kioskd" in keys["Environment"][0].split()
    assert keys["LimitNOFILE"] == ["1024"]  # soft = hard: the descriptor budget is stated, not inherited


def test_unit_bounds_memory_and_tasks() -> None:
    """A runaway kioskd is killed inside its cgroup and restarted, not left to swap the Pi or exhaust its tasks."""
    keys = _unit_keys()
    assert keys["MemoryMax"] == ["192M"] and keys["MemorySwapMax"] == ["0"]
    assert keys["TasksMax"] == ["64"]


def test_unit_leaves_out_what_breaks_kioskd() -> None:
    keys = _unit_keys()
    for key in ("MemoryDenyWriteExecute", "PrivateDevices", "PrivateUsers", "ProcSubset"):
        assert key not in keys, f"{key}= breaks kioskd (see the comment in the unit)"
        assert f"# {key}=yes" in UNIT.read_text() or f"# {key}=pid" in UNIT.read_text(), f"{key}: no reason given"


@needs_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify checks the syntax and that ExecStart exists: point it at a stub binary."""
    stub = tmp_path / "kioskd"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "kioskd.service"
    copy.write_text(UNIT.read_text().replace("/opt/kioskd/venv/bin/kioskd", str(stub)))
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60 * UNIT_S)
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "kioskd.service" in line]
    assert done.returncode == 0, done.stderr
    assert complaints == []  # unknown keys are only warnings: rc stays 0, so read the output too


@needs_analyze
def test_unit_exposure_is_within_threshold() -> None:
    assert ANALYZE is not None
    done = subprocess.run([ANALYZE, "security", "--offline=yes", "--threshold=25", str(UNIT)],
                          capture_output=True, text=True, timeout=60 * UNIT_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "Overall exposure level for kioskd.service" in done.stdout
