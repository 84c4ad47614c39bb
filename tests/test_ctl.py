"""kioskctl against a real ControlServer on a temporary Unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from kioskd import config as config_mod
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
    assert replies[0]["error"] == "unknown command 'dance' (commands: press, release, status, stats, devices, selftest, reload)"
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


# ------------------------------------------------------------------------------ the last-resort socket directory


class FakeKioskd:
    """Someone else's socket in the fallback directory, answering like kioskd: what kioskctl must never show."""

    def __init__(self, path: Path) -> None:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.listener.settimeout(0)

    def was_asked(self) -> bool:
        try:
            self.listener.accept()[0].close()
        except BlockingIOError:
            return False
        return True


@pytest.fixture
def fallback_root(sock_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """kioskctl with no --socket, no config and none of the runtime directories: the /tmp fallback, moved here."""
    if os.path.isdir(config_mod.SERVICE_RUNTIME_DIR):
        pytest.skip(f"{config_mod.SERVICE_RUNTIME_DIR} exists here: kioskctl would use it, not the fallback")
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(config_mod, "FALLBACK_SOCKET_ROOT", str(sock_dir))
    return sock_dir


def hostile_dir(root: Path, how: str) -> Path:
    """The fallback directory as another user (or a careless one) left it, with a fake kioskd inside."""
    path = root / f"kioskd-{os.getuid()}"
    target = root / "elsewhere" if how == "symlink" else path
    target.mkdir(mode=0o700)
    if how == "symlink":
        path.symlink_to(target)
    elif how == "world-writable":
        os.chmod(path, 0o777)
    elif how == "other-user":
        os.chown(path, 65534, 65534)
    return target


@pytest.mark.parametrize(("how", "problem"), [
    ("world-writable", "is writable by other users (mode 0777)"),
    ("symlink", "is a symbolic link"),
    pytest.param("other-user", f"is owned by uid 65534, not by this user (uid {os.geteuid()})",
                 marks=pytest.mark.skipif(os.geteuid() != 0, reason="only root can chown to another user")),
])
def test_a_fallback_directory_others_control_is_refused(fallback_root: Path, capsys: pytest.CaptureFixture[str],
                                                        how: str, problem: str) -> None:
    fake = FakeKioskd(hostile_dir(fallback_root, how) / "control.sock")
    try:
        assert main(["status"]) == 2
        assert not fake.was_asked()
    finally:
        fake.listener.close()
    captured = capsys.readouterr()
    assert captured.out == "", "no reply shown"
    assert captured.err.startswith(f"kioskctl: {fallback_root}/kioskd-{os.getuid()}: control socket directory "
                                   f"{problem}: ")
    assert captured.err.rstrip().endswith("(remove it, or set control.socket)")


def test_a_missing_fallback_directory_is_made_private(fallback_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status"]) == 3
    made = fallback_root / f"kioskd-{os.getuid()}"
    assert f"no kioskd at {made}/control.sock" in capsys.readouterr().err
    assert stat.S_IMODE(os.lstat(made).st_mode) == 0o700 and os.lstat(made).st_uid == os.geteuid()


def test_socket_from_a_base_and_an_overlay(sock_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """kioskctl takes the same --config files as `kioskd run`, merged: the overlay's control.socket wins."""
    base, overlay = sock_dir / "kioskd.yaml", sock_dir / "exhibit.yaml"
    base.write_text(f"control:\n  socket: {sock_dir / 'base.sock'}\n")
    overlay.write_text("control:\n  socket: overlay.sock\n")  # relative: from the overlay's directory

    async def scenario() -> int:
        async with serving(str(sock_dir / "overlay.sock"), FakeKiosk()):
            return await ctl("--config", str(base), "--config", str(overlay), "status")

    assert run(scenario()) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    overlay.write_text("control:\n  sockett: x\n")
    assert main(["--config", str(base), "--config", str(overlay), "status"]) == 2
    assert f"{overlay}:2: control.sockett" in capsys.readouterr().err
