"""kioskctl against a real ControlServer on a temporary Unix socket."""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kioskd.adapters.control import MAX_LINE_BYTES, ControlServer
from kioskd.ctl import main
from kioskd.errors import KioskError
from tests.conftest import UNIT_S, run


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory: a Unix socket path must fit in 108 bytes, and pytest's tmp_path may not."""
    with tempfile.TemporaryDirectory(prefix="kctl-", dir="/tmp") as d:
        yield Path(d)


class FakeKiosk:
    """A small handler standing in for the daemon: a phase that press/release move, a failing mode."""

    def __init__(self) -> None:
        self.phase = "idle"
        self.commands: list[str] = []
        self.refuse: str | None = None

    async def __call__(self, cmd: str, req: dict[str, Any]) -> dict[str, Any]:
        self.commands.append(cmd)
        if self.refuse is not None:
            raise KioskError(self.refuse)
        if cmd == "press":
            self.phase = "listening"
        elif cmd == "release":
            self.phase = "waiting"
        return {"phase": self.phase, "counters": {"turns": 0}}


@asynccontextmanager
async def serving(path: str, handler: FakeKiosk) -> AsyncIterator[ControlServer]:
    server = ControlServer(path, handler)
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def ctl(*argv: str) -> int:
    """kioskctl's main() off the loop thread, as a separate process would be."""
    return await asyncio.to_thread(main, [*argv])


def test_press_release_status(sock_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(sock_dir / "control.sock")
    kiosk = FakeKiosk()

    async def scenario() -> list[tuple[int, Any]]:
        out = []
        async with serving(path, kiosk):
            for cmd in ("press", "release", "status"):
                code = await ctl("--socket", path, cmd)
                out.append((code, json.loads(capsys.readouterr().out)))
        return out

    results = run(scenario())
    assert [code for code, _ in results] == [0, 0, 0]
    assert [reply["phase"] for _, reply in results] == ["listening", "waiting", "waiting"]
    assert results[2][1] == {"ok": True, "phase": "waiting", "counters": {"turns": 0}}
    assert kiosk.commands == ["press", "release", "status"]


def test_output_is_indented_json(sock_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(sock_dir / "control.sock")

    async def scenario() -> int:
        async with serving(path, FakeKiosk()):
            return await ctl("--socket", path, "status")

    assert run(scenario()) == 0
    out = capsys.readouterr().out
    assert out == json.dumps(json.loads(out), indent=2) + "\n"


def test_error_reply_exits_1(sock_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(sock_dir / "control.sock")
    kiosk = FakeKiosk()
    kiosk.refuse = "button.kind is gpio: kioskctl cannot press a real button"

    async def scenario() -> int:
        async with serving(path, kiosk):
            return await ctl("--socket", path, "press")

    assert run(scenario()) == 1
    assert json.loads(capsys.readouterr().out) == {"ok": False, "error": kiosk.refuse}


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--socket", "/nonexistent/control.sock", "dance"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'dance'" in capsys.readouterr().err


def test_no_daemon_exits_3(sock_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(sock_dir / "control.sock")
    assert main(["--socket", path, "status"]) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no kioskd at {path}: is it running?" in captured.err


def test_server_still_serves_after_bad_clients(sock_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed, oversized and unknown requests from other clients get error replies; kioskctl still works."""
    path = str(sock_dir / "control.sock")
    bad = [b'{"cmd": "dance"}\n', b"not json\n", b"[1, 2]\n", b"y" * (MAX_LINE_BYTES + 1) + b"\n"]

    def send_raw(payload: bytes) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5 * UNIT_S)
            sock.connect(path)
            sock.sendall(payload)
            reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
            return reply

    async def scenario() -> tuple[list[dict[str, Any]], int]:
        async with serving(path, FakeKiosk()):
            replies = [await asyncio.to_thread(send_raw, p) for p in bad]
            return replies, await ctl("--socket", path, "status")

    replies, code = run(scenario())
    assert [r["ok"] for r in replies] == [False] * len(bad)
    assert replies[0]["error"] == "unknown command 'dance' (commands: press, release, status)"
    assert replies[1]["error"].startswith("request is not valid JSON")
    assert replies[2]["error"] == "request must be a JSON object, got list"
    assert replies[3]["error"] == f"request line over {MAX_LINE_BYTES} bytes"
    assert code == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_socket_from_config_file(sock_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(sock_dir / "from-config.sock")
    config = sock_dir / "kioskd.yaml"
    config.write_text(f"control:\n  socket: {path}\n")

    async def scenario() -> int:
        async with serving(path, FakeKiosk()):
            return await ctl("--config", str(config), "status")

    assert run(scenario()) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_socket_from_runtime_directory(sock_dir: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Without options kioskctl finds the socket where systemd's RuntimeDirectory= puts it."""
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(sock_dir))

    async def scenario() -> int:
        async with serving(str(sock_dir / "control.sock"), FakeKiosk()):
            return await ctl("status")

    assert run(scenario()) == 0
    assert json.loads(capsys.readouterr().out)["phase"] == "idle"


def test_broken_config_exits_2(sock_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = sock_dir / "kioskd.yaml"
    config.write_text("control:\n  sockett: /tmp/x.sock\n")
    assert main(["--config", str(config), "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kioskctl: ") and "control.sockett" in err
