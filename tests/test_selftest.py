"""kioskctl selftest, devices, reload and the readable status, against a real `kioskd run` (embedded default,
PulseAudio null sinks): the checks pass or fail on what the devices really do."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

from kioskd.core.pcm import tone
from kioskd.ctl import readable
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, speak, write_wav
from tests.conftest import UNIT_S


def ctl(kiosk: KioskdProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kioskd.ctl", "--socket", kiosk.socket, *args],
                          capture_output=True, text=True, timeout=60)


def test_selftest_devices_reload_and_status(tmp_path: Path) -> None:
    kiosk = KioskdProcess(tmp_path, f"{NULL_SINK_AUDIO}log:\n  format: json\n")
    sound = write_wav(tmp_path / "room.wav", tone(300, 3000, 48000, 0.3), 48000)
    try:
        kiosk.wait_ready(timeout_s=20 * UNIT_S)
        quiet = kiosk.ctl("selftest", timeout_s=30)  # nothing reaches the microphone's sink: digital silence
        checks = {c["name"]: c for c in quiet["checks"]}
        assert list(checks) == ["speaker", "microphone", "endpoint", "button", "led"]
        assert checks["speaker"]["ok"] and "440 Hz played on 'kiosk_speaker'" in checks["speaker"]["detail"]
        assert not checks["microphone"]["ok"] and "digital silence" in checks["microphone"]["detail"]
        assert checks["endpoint"]["ok"] and "session.created (sess_" in checks["endpoint"]["detail"]
        assert "gpt-realtime: no shutdown date" in checks["endpoint"]["detail"]
        assert checks["button"]["ok"] and checks["led"]["ok"] and quiet["passed"] is False
        assert kiosk.ctl("status")["led"] == "idle"  # the LED is back to what the phase shows

        player = threading.Thread(target=speak, args=(sound,))  # someone talks near the exhibit
        player.start()
        try:
            result = ctl(kiosk, "selftest", "--json")
        finally:
            player.join()
        assert result.returncode == 0, result.stdout
        assert '"passed": true' in result.stdout

        devices = kiosk.ctl("devices")
        assert devices["in_use"]["input"]["device"] == "kiosk_microphone"
        assert "kiosk_speaker" in devices["listing"]

        config = tmp_path / "kioskd.yaml"
        good = config.read_text()
        config.write_text(good + "turn:\n  reply_wait_s: -1\n")
        refused = ctl(kiosk, "reload")
        assert refused.returncode == 1 and '"reloaded": false' in refused.stdout
        assert "turn.reply_wait_s" in refused.stdout and "must be greater than 0" in refused.stdout
        config.write_text(good + "turn:\n  reply_wait_s: 12\n")
        assert ctl(kiosk, "reload").returncode == 0

        text = readable("status", kiosk.ctl("status"))
        assert text.startswith("phase      idle   (link ready, session model gpt-realtime)")
        assert "fallback   gpt-audio-1.5, up" in text and "today      $0.0000 over 0 turns" in text
        assert "PASS  speaker" in readable("selftest", quiet) and "FAIL  microphone" in readable("selftest", quiet)
    finally:
        kiosk.stop()
