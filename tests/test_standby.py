"""A missing audio device never ends the kiosk: kioskd waits for it, fed watchdog and all, and comes back by
itself (``kioskd/standby.py``).

Without USB, a device is "unplugged" and "plugged in" by changing which PCM names the ALSA configuration defines:
the kiosk gets a private ``ALSA_CONFIG_PATH`` that includes the shared null-sink PCMs plus a file this test
writes while kioskd runs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from kioskd.sim.harness import KioskdProcess, wait_for
from kioskd.standby import POLL_CAP_S, attempt, poll_period_s
from tests.conftest import UNIT_S

SPARE_MIC = "pcm.kiosk_spare_mic { type pulse; device kiosk_mic.monitor }\n"


def private_alsa(tmp_path: Path) -> tuple[Path, Path]:
    """An ALSA configuration of the shared PCMs plus ``extra.asoundrc`` (empty for now): (config, extra)."""
    extra = tmp_path / "extra.asoundrc"
    extra.write_text("")
    conf = tmp_path / "alsa.conf"
    conf.write_text(Path(os.environ["ALSA_CONFIG_PATH"]).read_text() + f"<{extra}>\n")
    return conf, extra


def test_a_missing_microphone_is_waited_for_and_the_kiosk_comes_back_by_itself(tmp_path: Path) -> None:
    """The configured microphone does not exist: kioskd stays up (never exits), says audio.device_missing once,
    shows the error LED, answers `kioskctl status` naming the device, tells systemd READY and keeps feeding the
    watchdog. When the device appears, the same process (same PID, no exit for systemd to count) starts afresh
    and serves."""
    conf, extra = private_alsa(tmp_path)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10 * UNIT_S)
    kiosk = KioskdProcess(tmp_path, "audio:\n  input_device: kiosk_spare_mic\n  output_device: kiosk_speaker\n"
                                    "  device_poll_s: 0.3\nlog:\n  format: json\n",
                          env={"ALSA_CONFIG_PATH": str(conf), "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                               "WATCHDOG_USEC": "400000"})
    try:
        wait_for(lambda: bool(kiosk.events("audio.device_missing")), "audio.device_missing", 20 * UNIT_S)
        messages: list[str] = []
        while sum("WATCHDOG=1" in m for m in messages) < 3:
            messages.append(notify.recv(4096).decode())
        assert any("READY=1" in m and "STATUS=device missing: input device 'kiosk_spare_mic'" in m
                   for m in messages)
        wait_for(lambda: kiosk.ctl("status")["looks"] >= 2, "two looks for the device", 20 * UNIT_S)
        status = kiosk.ctl("status")
        assert status["phase"] == "device_missing" and status["led"] == "error"
        assert status["missing"]["direction"] == "input" and status["missing"]["device"] == "kiosk_spare_mic"
        assert "no input device matches" in status["missing"]["cause"]
        kiosk.ctl("press")  # a visitor presses meanwhile: nothing breaks
        kiosk.ctl("release")
        assert kiosk.proc.poll() is None

        extra.write_text(SPARE_MIC)  # plugged in
        kiosk.wait_phase("idle", timeout_s=30 * UNIT_S)
        assert kiosk.proc.poll() is None  # never exited: the same PID serves
    finally:
        code = kiosk.stop()
        notify.close()
    assert code == 0, kiosk.tail()
    [missing] = kiosk.events("audio.device_missing")
    assert missing["level"] == "error" and missing["device"] == "kiosk_spare_mic"
    assert len(kiosk.events("audio.device_found")) == 1 and len(kiosk.events("audio.device_back")) == 1
    opened = [e for e in kiosk.events("audio.device_opened") if e["direction"] == "input"]
    assert [e["name"] for e in opened] == ["kiosk_spare_mic"]


def test_a_reload_in_standby_starts_afresh_with_the_new_device_names(tmp_path: Path) -> None:
    """A technician fixes the device name and reloads: kioskd does not wait for the next look."""
    import signal

    kiosk = KioskdProcess(tmp_path, "audio:\n  input_device: no such microphone\n  output_device: kiosk_speaker\n"
                                    "  device_poll_s: 600\nlog:\n  format: json\n")
    try:
        wait_for(lambda: bool(kiosk.events("audio.device_missing")), "audio.device_missing", 20 * UNIT_S)
        config = tmp_path / "kioskd.yaml"
        config.write_text(config.read_text().replace("no such microphone", "kiosk_microphone"))
        kiosk.proc.send_signal(signal.SIGHUP)
        kiosk.wait_phase("idle", timeout_s=30 * UNIT_S)
    finally:
        code = kiosk.stop()
    assert code == 0, kiosk.tail()
    assert kiosk.events("audio.device_recheck")


@pytest.mark.parametrize(("attempt_no", "period_s"), [(0, 5.0), (1, 10.0), (2, 20.0), (3, 40.0), (4, POLL_CAP_S),
                                                      (60, POLL_CAP_S)])
def test_looks_slow_down_within_one_outage(attempt_no: int, period_s: float) -> None:
    """A device listed but never openable cannot become a restart loop: each fresh start of one outage looks
    half as often, down to one look a minute."""
    assert poll_period_s(5.0, attempt_no) == period_s
    assert attempt({"KIOSKD_DEVICE_WAIT": str(attempt_no)}) == attempt_no
    assert attempt({"KIOSKD_DEVICE_WAIT": "junk"}) == 0 and attempt({}) == 0
