"""`kioskd` as a technician runs it: exit codes and messages, on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kioskd.cli import EX_CONFIG


def kioskd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kioskd", *args], capture_output=True, text=True, timeout=60)


def refused_by_run_and_check_config(cfg: Path, message: str) -> None:
    """`run` and `check-config` both exit 78 (EX_CONFIG) on ``cfg``, saying ``message``."""
    for args in (("run", "--config", str(cfg)), ("check-config", str(cfg))):
        done = kioskd(*args)
        assert done.returncode == EX_CONFIG, done.stderr
        assert message in done.stderr, done.stderr


def test_check_config_prints_the_effective_config() -> None:
    """The shipped config validates and prints as JSON with every section."""
    done = kioskd("check-config", "config/kioskd.yaml")
    assert done.returncode == 0, done.stderr
    for section in ("realtime", "audio", "button", "led", "control", "turn", "log", "simulator"):
        assert f'"{section}"' in done.stdout


def test_a_broken_config_refuses_to_start_naming_file_line_and_key(tmp_path: Path) -> None:
    """`kioskd run` with a misspelt key exits 78 (EX_CONFIG) with file:line: key and the closest valid key."""
    bad = tmp_path / "kioskd.yaml"
    bad.write_text("audio:\n  block_ms: 20\n  output_devcie: USB\n")
    refused_by_run_and_check_config(
        bad, f"{bad}:3: audio.output_devcie: unknown key (did you mean audio.output_device?)")


def test_a_missing_key_for_a_cloud_endpoint_is_a_config_error(tmp_path: Path) -> None:
    """A wss:// endpoint with no key anywhere exits 78 and says where a key can come from."""
    cfg = tmp_path / "kioskd.yaml"
    cfg.write_text("realtime:\n  url: wss://api.openai.com/v1/realtime?model=gpt-realtime\n")
    done = subprocess.run([sys.executable, "-m", "kioskd", "run", "--config", str(cfg)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == EX_CONFIG
    assert "realtime.api_key_file" in done.stderr and "OPENAI_API_KEY" in done.stderr


def test_a_key_file_that_is_no_regular_file_exits_78_at_once(tmp_path: Path) -> None:
    """A key file that is a FIFO or a link to /dev/zero: `run` and `check-config` (which checks the key exactly
    as `run` does) exit 78 (EX_CONFIG, no restart loop) without reading it or hanging."""
    import os

    fifo, zero = tmp_path / "fifo", tmp_path / "zero"
    os.mkfifo(fifo, 0o600)
    zero.symlink_to("/dev/zero")
    for key_file in (fifo, zero):
        cfg = tmp_path / "kioskd.yaml"
        cfg.write_text(f"realtime:\n  url: wss://api.openai.com/v1/realtime\n  api_key_file: {key_file}\n")
        refused_by_run_and_check_config(cfg, f"{key_file}: realtime.api_key_file: key file is not a regular file")


def test_check_config_refuses_a_key_sent_in_plaintext(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("test-key-1234567890")
    key.chmod(0o600)
    cfg = tmp_path / "kioskd.yaml"
    cfg.write_text(f"realtime:\n  url: ws://203.0.113.7/v1/realtime\n  api_key_file: {key}\n")
    done = kioskd("check-config", str(cfg))
    assert done.returncode == EX_CONFIG
    assert f"{cfg}:2: realtime.url: ws:// would send the API key unencrypted to 203.0.113.7" in done.stderr
    assert "test-key-1234567890" not in done.stderr + done.stdout


def test_devices_lists_audio_devices_by_name() -> None:
    """`kioskd devices` names the null-sink PCMs scripts/audio-env defines."""
    done = kioskd("devices")
    assert done.returncode == 0, done.stderr
    assert "kiosk_speaker" in done.stdout and "kiosk_microphone" in done.stdout


def test_simulate_serves_on_the_port_it_prints() -> None:
    """`kioskd simulate --port 0` prints its URL; a GA client gets session.created there."""
    import asyncio

    from websockets.asyncio.client import connect

    proc = subprocess.Popen([sys.executable, "-m", "kioskd", "simulate", "--port", "0", "--voice", "tone"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on ws://127.0.0.1:" in line
        url = line.split("listening on ", 1)[1].split()[0]

        async def first_event() -> str:
            async with connect(url) as ws:
                return str(await ws.recv())

        assert '"session.created"' in asyncio.run(first_event())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_simulate_webrtc_serves_calls_at_the_url_it_prints() -> None:
    """`kioskd simulate --transport webrtc` prints the same ws:// Realtime URL; the calls endpoint derived from it
    (http, path + /calls) answers: here a raw SDP body with no ephemeral key, refused with a JSON error."""
    pytest.importorskip("aiortc")
    import json
    import urllib.error
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "kioskd", "simulate", "--transport", "webrtc", "--port", "0",
                             "--voice", "tone"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on ws://127.0.0.1:" in line
        url = line.split("listening on ", 1)[1].split()[0]
        calls = url.replace("ws://", "http://", 1).split("?")[0] + "/calls"
        request = urllib.request.Request(calls, data=b"v=0\r\n", headers={"Content-Type": "application/sdp"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400
        assert "ephemeral" in json.loads(refused.value.read())["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_exhibit_files_are_checked_as_run_checks_them(tmp_path: Path) -> None:
    """A broken knowledge file stops `check-config` and `run` with exit 78 and its own file:line: key; the
    shipped example exhibit's files pass."""
    knowledge = tmp_path / "knowledge.yaml"
    knowledge.write_text("- topic: Age\n  text: Made around 320 AD.\n- topic: Size\n")
    cfg = tmp_path / "kioskd.yaml"
    cfg.write_text("exhibit:\n  knowledge_file: knowledge.yaml\n")
    refused_by_run_and_check_config(cfg, f"{knowledge}:3: [2]: has no text")
    examples = Path(__file__).resolve().parent.parent / "config" / "examples"
    cfg.write_text(f"exhibit:\n  knowledge_file: {examples / 'knowledge.yaml'}\n"
                   f"  tools_file: {examples / 'tools.yaml'}\n")
    done = kioskd("check-config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert '"knowledge_file": "' + str(examples / "knowledge.yaml") in done.stdout


def test_run_refuses_a_fallback_socket_directory_others_can_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`kioskd run` with no socket configured and no runtime directory uses /tmp/kioskd-<uid>; one others can
    write to is refused with exit 78 before anything opens. In-process, to move that /tmp root here."""
    from kioskd import config, log
    from kioskd.cli import main

    if os.path.isdir(config.SERVICE_RUNTIME_DIR):
        pytest.skip(f"{config.SERVICE_RUNTIME_DIR} exists here: kioskd would use it, not the fallback")
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(config, "FALLBACK_SOCKET_ROOT", str(tmp_path))
    hostile = tmp_path / f"kioskd-{os.getuid()}"
    hostile.mkdir()
    os.chmod(hostile, 0o777)
    try:
        assert main(["run"]) == EX_CONFIG
    finally:
        log.reset()
    assert capsys.readouterr().err == (
        f"kioskd: {hostile}: control socket directory is writable by other users (mode 0777): a socket there could "
        "be another user's, answering in kioskd's place (remove it, or set control.socket)\n")
    assert os.listdir(hostile) == []


def test_check_config_merges_a_base_and_an_overlay(tmp_path: Path) -> None:
    """A fleet's shared base plus an exhibit's overlay, as positional files or as repeated --config (as `run`
    takes them): the overlay wins, each key says which file set it, paths follow the file that sets them."""
    import json

    base, overlay = tmp_path / "kioskd.yaml", tmp_path / "exhibits" / "exhibit.yaml"
    overlay.parent.mkdir()
    base.write_text("realtime:\n  voice: marin\naudio:\n  block_ms: 10\nexhibit:\n  knowledge_file: k.yaml\n")
    overlay.write_text(f"realtime:\n  voice: cedar\nexhibit:\n  knowledge_file: k.yaml\n"
                       f"control:\n  socket: {tmp_path / 'control.sock'}\n")
    (tmp_path / "k.yaml").write_text("- topic: Age\n  text: Base.\n")
    (overlay.parent / "k.yaml").write_text("- topic: Age\n  text: Made around 320 AD.\n")
    for args in (("check-config", str(base), str(overlay)),
                 ("check-config", "--config", str(base), "--config", str(overlay))):
        done = kioskd(*args)
        assert done.returncode == 0, done.stderr
        described = json.loads(done.stdout)
        assert described["source"] == f"{base} + {overlay}"
        assert described["realtime"]["voice"] == "cedar" and described["audio"]["block_ms"] == 10
        assert described["exhibit"]["knowledge_file"] == str(overlay.parent / "k.yaml")
        assert described["set_in"]["realtime.voice"] == f"{overlay}:2"
        assert described["set_in"]["audio.block_ms"] == f"{base}:4"


def test_an_error_in_the_overlay_names_the_overlay(tmp_path: Path) -> None:
    """`run --config base --config overlay` and `check-config` exit 78 naming the overlay's file, line and key."""
    base, overlay = tmp_path / "kioskd.yaml", tmp_path / "exhibit.yaml"
    base.write_text("audio:\n  block_ms: 10\n")
    overlay.write_text("realtime:\n  voice: cedar\naudio:\n  output_devcie: USB\n")
    for args in (("run", "--config", str(base), "--config", str(overlay)),
                 ("check-config", str(base), str(overlay))):
        done = kioskd(*args)
        assert done.returncode == EX_CONFIG, done.stderr
        assert f"{overlay}:4: audio.output_devcie: unknown key (did you mean audio.output_device?)" in done.stderr
