"""The control socket on a real Unix socket: JSON lines each way, errors as replies, a server that keeps serving."""

from __future__ import annotations

import asyncio
import io
import json
import os
import resource
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kioskd import ctl, log
from kioskd.adapters import control
from kioskd.adapters.control import COMMANDS, MAX_CLIENTS, MAX_LINE_BYTES, ControlServer, request
from kioskd.errors import KioskError
from tests.conftest import UNIT_S, run


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: a Unix socket path must fit in 108 bytes, and pytest's tmp_path may not."""
    with tempfile.TemporaryDirectory(prefix="kctl-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """kioskd's log (and asyncio's, through the bridge) as JSON lines in memory."""
    stream = io.StringIO()
    log.configure("debug", "json", stream=stream, environ={})
    yield stream
    log.reset()


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


class Recorder:
    """A small handler: remembers what it was asked, fails on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: Exception | None = None

    async def __call__(self, cmd: str, req: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((cmd, req))
        if self.fail is not None:
            raise self.fail
        return {"phase": "idle", "cmd_seen": cmd, "ok": "a handler cannot forge ok"}


async def exchange(path: str, payload: bytes, replies: int, *, read_rest: bool = True
                   ) -> tuple[list[dict[str, Any]], bytes]:
    """Send raw bytes, read ``replies`` reply lines, then whatever follows until the server closes (or 1 unit)."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    await writer.drain()
    got = [json.loads(await asyncio.wait_for(reader.readline(), 5 * UNIT_S)) for _ in range(replies)]
    if not read_rest:
        writer.close()
        return got, b""
    try:
        rest = await asyncio.wait_for(reader.read(), 1 * UNIT_S)
    except TimeoutError:
        rest = b"<still open>"
    writer.close()
    return got, rest


async def status_via_client(path: str) -> dict[str, Any]:
    return await asyncio.to_thread(request, path, "status", 5 * UNIT_S)


def test_status_round_trip(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")
    handler = Recorder()

    async def main() -> dict[str, Any]:
        server = ControlServer(path, handler)
        await server.start()
        try:
            return await status_via_client(path)
        finally:
            await server.close()

    reply = run(main())
    assert reply == {"ok": True, "phase": "idle", "cmd_seen": "status"}
    assert handler.calls == [("status", {"cmd": "status"})]


def test_socket_and_directory_modes(sock_dir: Path) -> None:
    path = str(sock_dir / "run" / "control.sock")
    os.umask(old := os.umask(0o077))  # read the umask without changing it

    async def main() -> tuple[int, int]:
        server = ControlServer(path, Recorder())
        await server.start()
        try:
            return stat.S_IMODE(os.stat(path).st_mode), stat.S_IMODE(os.stat(sock_dir / "run").st_mode)
        finally:
            await server.close()

    sock_mode, dir_mode = run(main())
    assert (sock_mode, dir_mode) == (0o660, 0o750)
    assert not os.path.exists(path), "close() removes the socket"
    assert os.umask(old) == old


def test_unknown_command_keeps_the_connection(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")
    handler = Recorder()

    async def main() -> list[dict[str, Any]]:
        server = ControlServer(path, handler)
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            replies = []
            for line in (b'{"cmd": "dance"}\n', b'{"cmd": "status"}\n'):  # the second on the same connection
                writer.write(line)
                replies.append(json.loads(await asyncio.wait_for(reader.readline(), 5 * UNIT_S)))
            writer.close()
            return replies
        finally:
            await server.close()

    replies = run(main())
    assert replies == [
        {"ok": False, "error": "unknown command 'dance' (commands: press, release, status, stats, devices, selftest, reload)"},
        {"ok": True, "phase": "idle", "cmd_seen": "status"},
    ]
    assert [c for c, _ in handler.calls] == ["status"]
    assert COMMANDS == ("press", "release", "status", "stats", "devices", "selftest", "reload")


def test_missing_cmd_is_an_error_reply(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")

    async def main() -> tuple[list[dict[str, Any]], bytes]:
        server = ControlServer(path, Recorder())
        await server.start()
        try:
            return await exchange(path, b'{"command": "status"}\n{"cmd": "status"}\n', replies=2, read_rest=False)
        finally:
            await server.close()

    replies, _ = run(main())
    assert replies[0]["ok"] is False and '"cmd"' in replies[0]["error"]
    assert replies[1]["ok"] is True, "a well-formed object keeps the connection"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"status\n", "request is not valid JSON"),
        (b'{"cmd": "status"\n', "request is not valid JSON"),
        (b"\xff\xfe\n", "request is not valid JSON"),
        (b'["status"]\n', "request must be a JSON object, got list"),
        (b"x" * (MAX_LINE_BYTES + 10) + b"\n", f"request line over {MAX_LINE_BYTES} bytes"),
        (b"x" * (MAX_LINE_BYTES * 2), f"request line over {MAX_LINE_BYTES} bytes"),
        (b"[" * 5_000 + b"\n", "request is nested too deeply"),
        (b'{"cmd": "status", "x": ' * 2_500 + b"\n", "request is nested too deeply"),
        (b"[" * 100_000 + b"\n", f"request line over {MAX_LINE_BYTES} bytes"),
    ],
    ids=["bare-word", "truncated", "not-utf8", "list", "oversized", "oversized-no-newline", "nested-5000",
         "nested-objects", "nested-100000"],
)
def test_malformed_request_gets_an_error_and_is_closed(sock_dir: Path, log_stream: io.StringIO, payload: bytes,
                                                      message: str) -> None:
    """An error reply, the connection closed, the server serving on, and nothing in the log (no traceback)."""
    path = str(sock_dir / "control.sock")

    async def main() -> tuple[list[dict[str, Any]], bytes, dict[str, Any]]:
        server = ControlServer(path, Recorder())
        await server.start()
        try:
            replies, rest = await exchange(path, payload, replies=1)
            return replies, rest, await status_via_client(path)
        finally:
            await server.close()

    replies, rest, after = run(main())
    assert replies[0]["ok"] is False
    assert replies[0]["error"].startswith(message)
    assert rest == b"", "the connection is closed after the error reply"
    assert after["ok"] is True, "the server keeps serving"
    assert log_lines(log_stream) == []


def test_handler_exception_is_an_error_reply(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")
    handler = Recorder()
    handler.fail = KioskError("button.kind is gpio: kioskctl cannot press a real button")

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        server = ControlServer(path, handler)
        await server.start()
        try:
            failed = await asyncio.to_thread(request, path, "press", 5 * UNIT_S)
            handler.fail = None
            return failed, await status_via_client(path)
        finally:
            await server.close()

    failed, after = run(main())
    assert failed == {"ok": False, "error": "button.kind is gpio: kioskctl cannot press a real button"}
    assert after["ok"] is True


def test_stale_socket_is_replaced(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # a socket file nobody listens on: what a killed daemon leaves behind
    dead.close()
    assert os.path.exists(path)

    async def main() -> dict[str, Any]:
        server = ControlServer(path, Recorder())
        await server.start()
        try:
            return await status_via_client(path)
        finally:
            await server.close()

    assert run(main())["ok"] is True


def test_refuses_to_start_over_a_live_daemon(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")

    async def main() -> dict[str, Any]:
        first = ControlServer(path, Recorder())
        await first.start()
        try:
            with pytest.raises(KioskError, match="another kioskd is already answering there"):
                await ControlServer(path, Recorder()).start()
            return await status_via_client(path)  # the first one is untouched
        finally:
            await first.close()

    assert run(main())["ok"] is True


def test_refuses_to_replace_a_regular_file(sock_dir: Path) -> None:
    path = sock_dir / "control.sock"
    path.write_text("precious")

    async def main() -> None:
        with pytest.raises(KioskError, match="exists and is not a socket"):
            await ControlServer(str(path), Recorder()).start()

    run(main())
    assert path.read_text() == "precious"


def test_close_ends_idle_connections(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")

    async def main() -> bytes:
        server = ControlServer(path, Recorder())
        await server.start()
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b'{"cmd": "status"}\n')
        await reader.readline()
        await server.close()  # must not wait for the idle client
        rest = await asyncio.wait_for(reader.read(), 5 * UNIT_S)
        writer.close()
        return rest

    assert run(main()) == b""


def test_request_without_a_daemon(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")
    with pytest.raises(KioskError, match=f"no kioskd at {path}: is it running"):
        request(path, "status")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    with pytest.raises(KioskError, match="no kioskd at"):
        request(path, "status")


def test_request_times_out_on_a_silent_listener(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(path)
        silent.listen()
        with pytest.raises(KioskError, match="no reply within"):
            request(path, "status", timeout_s=0.2 * UNIT_S)


# ------------------------------------------------------------------------------------- what a client can take

#: a separate process that opens ``n`` connections and holds them; it reads each connection the server refuses
#: (reply, then end of stream) and reports, then waits for stdin to close
HOLDER = r"""
import json, select, socket, sys, time
path, n, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.stdin.readline()
socks = []
for _ in range(n):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)  # blocking: waits while the server's backlog is full
    socks.append(sock)
data = {sock: b"" for sock in socks}
open_, refused, deadline = list(socks), 0, time.monotonic() + float(sys.argv[4])
while refused < n - limit and time.monotonic() < deadline:
    for sock in select.select(open_, [], [], 0.1)[0]:
        chunk = sock.recv(4096)
        data[sock] += chunk
        if not chunk:
            open_.remove(sock)
            refused += 1
replies = sorted({data[sock].decode() for sock in socks if sock not in open_})
print(json.dumps({"connected": len(socks), "refused": refused, "replies": replies}), flush=True)
sys.stdin.read()
"""


def open_fds() -> list[int]:
    return [int(fd) for fd in os.listdir("/proc/self/fd")]


def test_connections_beyond_the_cap_are_answered_busy_and_hold_no_descriptors(
        sock_dir: Path, log_stream: io.StringIO, capsys: pytest.CaptureFixture[str]) -> None:
    """200 held connections: 16 are served, 184 get the busy reply and are closed at once, one log line. This
    process is left 150 descriptors (fewer than the connections): it still accepts, and still opens a new TCP
    connection (what the Realtime link needs). kioskctl meets the busy reply, and works once the holder is gone."""
    path = str(sock_dir / "control.sock")
    held = 200

    async def main() -> dict[str, Any]:
        server = ControlServer(path, Recorder())
        await server.start()
        link_server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = link_server.sockets[0].getsockname()[1]
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLDER, path, str(held), str(MAX_CLIENTS), str(10 * UNIT_S),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdin is not None and holder.stdout is not None
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        before = open_fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(before) + 1 + 150, hard))
        out: dict[str, Any] = {"before": len(before)}
        try:
            holder.stdin.write(b"go\n")
            await holder.stdin.drain()
            out["holder"] = json.loads(await holder.stdout.readline())
            out["during"] = len(open_fds())
            _, link = await asyncio.open_connection("127.0.0.1", port)
            link.close()
            out["busy_code"] = await asyncio.to_thread(ctl.main, ["--socket", path, "status"])
            out["busy_reply"] = json.loads(capsys.readouterr().out)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            holder.stdin.close()
            await holder.wait()
            link_server.close()
            await link_server.wait_closed()
        out["after_code"] = await asyncio.to_thread(ctl.main, ["--socket", path, "status"])
        out["after_reply"] = json.loads(capsys.readouterr().out)
        await server.close()
        return out

    out = run(main())
    busy = {"ok": False, "busy": True,
            "error": f"kioskd is busy: {MAX_CLIENTS} control connections are open, the most it serves; try again"}
    assert (out["holder"]["connected"], out["holder"]["refused"]) == (held, held - MAX_CLIENTS)
    assert [json.loads(reply) for reply in out["holder"]["replies"]] == [busy], "each refused one: one reply line"
    assert out["during"] <= out["before"] + MAX_CLIENTS, "a refused connection keeps no descriptor"
    assert (out["busy_code"], out["busy_reply"]) == (1, busy)
    assert out["after_code"] == 0 and out["after_reply"]["ok"] is True
    lines = log_lines(log_stream)
    assert [(line["event"], line["level"]) for line in lines] == [("control.busy", "warning")], \
        "one line for all the refusals, and no asyncio accept errors"
    assert lines[0]["limit"] == MAX_CLIENTS


def test_a_pipelined_flood_is_answered_in_order_with_the_loop_running_between(sock_dir: Path) -> None:
    """20 requests in one write: every one answered in order, and other tasks run between any two."""
    path = str(sock_dir / "control.sock")
    ticks = 0
    seen: list[int] = []

    async def handler(cmd: str, req: dict[str, Any]) -> dict[str, Any]:
        seen.append(ticks)
        return {"n": req.get("n")}

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    async def main() -> list[dict[str, Any]]:
        server = ControlServer(path, handler)
        await server.start()
        other = asyncio.create_task(ticker())
        try:
            payload = b"".join(json.dumps({"cmd": "status", "n": n}).encode() + b"\n" for n in range(20))
            replies, _ = await exchange(path, payload, replies=20, read_rest=False)
            return replies
        finally:
            other.cancel()
            await asyncio.gather(other, return_exceptions=True)
            await server.close()

    replies = run(main())
    assert [r["n"] for r in replies] == list(range(20))
    assert all(later > earlier for earlier, later in zip(seen, seen[1:])), seen


def test_a_request_not_whole_within_the_deadline_is_closed(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Silence, half a request, or blank lines that never end: each connection is closed at the deadline."""
    monkeypatch.setattr(control, "IDLE_TIMEOUT_S", 0.2 * UNIT_S)
    path = str(sock_dir / "control.sock")

    async def closed_by_server(payload: bytes, keep_sending: bool) -> bytes:
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(payload)
        try:
            while keep_sending and not reader.at_eof():
                writer.write(b"\n")
                await writer.drain()
                await asyncio.sleep(0.02 * UNIT_S)
        except ConnectionError:
            pass
        rest = await asyncio.wait_for(reader.read(), 5 * UNIT_S)
        writer.close()
        return rest

    async def main() -> list[bytes]:
        server = ControlServer(path, Recorder())
        await server.start()
        try:
            return list(await asyncio.gather(closed_by_server(b"", False), closed_by_server(b'{"cmd": "st', False),
                                             closed_by_server(b"\n", True)))
        finally:
            await server.close()

    assert run(main()) == [b"", b"", b""]


def fill_backlog(path: str) -> list[socket.socket]:
    """Connections that fill a listener's backlog (listen(0)): the next connect gets EAGAIN."""
    queued: list[socket.socket] = []
    while len(queued) < 8:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(1 * UNIT_S)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            return queued
        queued.append(sock)
    raise AssertionError("the backlog never filled")


def test_request_reports_a_backlog_that_stays_full(sock_dir: Path) -> None:
    path = str(sock_dir / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(0)
        queued = fill_backlog(path)
        with pytest.raises(KioskError, match=f"control socket {path}: kioskd takes no more connections now"):
            request(path, "status")
        for sock in queued:
            sock.close()


def test_request_retries_until_the_backlog_has_room(sock_dir: Path) -> None:
    """EAGAIN (a full backlog) is tried again; the listener drains its backlog a moment later and answers."""
    path = str(sock_dir / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(0)
        queued = fill_backlog(path)
        got: list[bytes] = []

        def serve() -> None:
            threading.Event().wait(0.2 * UNIT_S)  # the client's first tries meet the full backlog
            for _ in queued:
                listener.accept()[0].close()
            conn, _ = listener.accept()
            with conn:
                got.append(conn.makefile("rb").readline())
                conn.sendall(b'{"ok": true, "phase": "idle"}\n')

        listener.settimeout(10 * UNIT_S)  # a client that never comes fails the test, never hangs it
        server = threading.Thread(target=serve, daemon=True)
        server.start()
        try:
            assert request(path, "status") == {"ok": True, "phase": "idle"}
        finally:
            server.join(10 * UNIT_S)
            for sock in queued:
                sock.close()
    assert got == [b'{"cmd": "status"}\n']
