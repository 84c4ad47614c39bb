"""The control socket on a real Unix socket: JSON lines each way, errors as replies, a server that keeps serving."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kioskd import log
from kioskd.adapters.control import COMMANDS, MAX_LINE_BYTES, ControlServer, request
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
        {"ok": False, "error": "unknown command 'dance' (commands: press, release, status)"},
        {"ok": True, "phase": "idle", "cmd_seen": "status"},
    ]
    assert [c for c, _ in handler.calls] == ["status"]
    assert COMMANDS == ("press", "release", "status")


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
