"""alsa-lib's error messages go to the structured log, not raw to stderr, and nothing else on stderr changes.

Each check runs in a child process (the handler is process-wide and alsa-lib is loaded once): real libasound,
real PortAudio on the null sinks' ALSA configuration (scripts/audio-env), plus one PCM that is listed but cannot
be opened (a pulse PCM naming a sink that does not exist: alsa-lib's pulse plugin complains on every open).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from kioskd.adapters.alsa import EXTRA_ARGS, arguments_needed
from kioskd.sim.harness import KioskdProcess, wait_for
from tests.conftest import REPO, UNIT_S

#: a PCM PortAudio lists (it opens without a server round trip) that fails when a stream is prepared
BROKEN_PCM = "kiosk_gone"


def alsa_config(tmp_path: Path) -> dict[str, str]:
    """The environment of a child whose ALSA configuration is the null sinks' plus ``BROKEN_PCM``."""
    conf = tmp_path / "alsa.conf"
    conf.write_text(f"<{os.environ['ALSA_CONFIG_PATH']}>\n"
                    f"pcm.{BROKEN_PCM} {{ type pulse; device kiosk_no_such_sink }}\n")
    return dict(os.environ, ALSA_CONFIG_PATH=str(conf), PYTHONUNBUFFERED="1")


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_which_formats_are_formatted() -> None:
    """Only integer, character, string and pointer conversions are handed to snprintf; anything else (floating
    point, %n, %m, positional arguments) is logged as the format string."""
    assert arguments_needed("Unknown PCM %s") == 1
    assert arguments_needed("%s occurred") == 1
    assert arguments_needed("no conversion at all, 100%% sure") == 0
    assert arguments_needed("%-8s card %d, device %i: %lu frames at %#x (%p) %c") == 7
    assert arguments_needed("%*d and %.*s") == 4
    assert arguments_needed("%zu bytes, %hhu") == 2
    for unsafe in ("%f", "rate %.2f Hz", "%n", "%m", "%1$s", "%Lf", "%e", "%a", "%C", "%S"):
        assert arguments_needed(unsafe) is None, unsafe
    assert arguments_needed("%s" * (EXTRA_ARGS + 1)) == EXTRA_ARGS + 1  # more than are read: not formatted


SCRIPT = textwrap.dedent(f"""
    import ctypes, sys, time
    from kioskd import log
    from kioskd.adapters import alsa

    log.configure("debug", "json")  # to stderr, as kioskd does
    assert alsa.install(log.get_logger("kioskd.audio"))
    alsa.RATE_WINDOW_S = 0.2
    asound = ctypes.CDLL("libasound.so.2")
    pcm = ctypes.c_void_p()
    for _ in range(3):  # one line, the other two folded into the next one
        assert asound.snd_pcm_open(ctypes.byref(pcm), b"kiosk_no_such_pcm", 0, 0) < 0
    time.sleep(0.3)
    asound.snd_pcm_open(ctypes.byref(pcm), b"kiosk_no_such_pcm", 0, 0)
    with alsa.probing():  # expected while devices are looked for: debug
        assert asound.snd_ctl_open(ctypes.byref(pcm), b"kiosk_no_such_ctl", 0) < 0

    import sounddevice as sd
    try:  # PortAudio's own error reporting is untouched: the exception, and its diagnostics on stderr
        sd.OutputStream(device="{BROKEN_PCM}", samplerate=48000, channels=1, dtype="int16").start()
    except sd.PortAudioError as exc:
        print("PortAudioError:", exc, flush=True)
    raise RuntimeError("a Python traceback still reaches stderr")
""")


def test_alsa_messages_become_log_lines_and_stderr_keeps_everything_else(tmp_path: Path) -> None:
    """In a child process set up as kioskd sets itself up: ALSA errors provoked through libasound and through
    PortAudio (a stream on a PCM whose sink is gone) reach stderr only as ``audio.alsa`` JSON lines — formatted
    with their arguments, rate limited per site, warning or debug — and no raw ``ALSA lib`` line is left; PortAudio's
    exception and its own diagnostics and a Python traceback are still there."""
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=alsa_config(tmp_path), capture_output=True,
                          text=True, timeout=60 * UNIT_S)
    assert done.returncode == 1, done.stderr
    assert not [line for line in done.stderr.splitlines() if "ALSA lib" in line], done.stderr
    alsa_lines = [line for line in json_lines(done.stderr) if line["event"] == "audio.alsa"]
    unknown = [line for line in alsa_lines if line["function"] == "snd_pcm_open_noupdate"]
    assert [(u["level"], u["message"], u.get("repeats")) for u in unknown] == [
        ("warning", "Unknown PCM kiosk_no_such_pcm", None), ("warning", "Unknown PCM kiosk_no_such_pcm", 2)]
    assert unknown[0]["source"].startswith("pcm.c:") and unknown[0]["logger"] == "kioskd.audio"
    (ctl,) = [line for line in alsa_lines if line["function"] == "snd_ctl_open_noupdate"]
    assert (ctl["level"], ctl["message"]) == ("debug", "Invalid CTL kiosk_no_such_ctl")
    (pulse,) = [line for line in alsa_lines if line["source"].startswith("pcm_pulse.c")]
    assert pulse["level"] == "warning" and "Unable to create stream" in pulse["message"]
    assert "PortAudioError: Error opening OutputStream" in done.stdout
    assert "failed in 'src/hostapi/alsa/pa_linux_alsa.c'" in done.stderr  # PortAudio's diagnostics, as before
    assert "Traceback (most recent call last)" in done.stderr
    assert "RuntimeError: a Python traceback still reaches stderr" in done.stderr


@pytest.mark.parametrize("level", ["debug", "info"])
def test_kioskd_run_on_a_broken_device_logs_alsa_structured_and_once(tmp_path: Path, level: str) -> None:
    """``kioskd run`` told to play through a PCM whose sink is gone (a careless technician): alsa-lib complains
    at every rate PortAudio probes. Its output has no raw ``ALSA lib`` line; at debug the complaint is one
    ``audio.alsa`` line (the rest folded into it), at info none; the device is reported missing as before."""
    kiosk = KioskdProcess(tmp_path, f"audio:\n  input_device: kiosk_microphone\n  output_device: {BROKEN_PCM}\n"
                                    f"log:\n  format: json\n  level: {level}\n", env=alsa_config(tmp_path))
    try:
        wait_for(lambda: bool(kiosk.events("audio.device_missing")), "audio.device_missing", 20 * UNIT_S)
    finally:
        assert kiosk.stop() == 0, kiosk.tail()
    raw = [line["text"] for line in kiosk.events("raw")]
    assert not [text for text in raw if "ALSA lib" in text], raw
    alsa_lines = kiosk.events("audio.alsa")
    if level == "debug":
        (pulse,) = [line for line in alsa_lines if line["source"].startswith("pcm_pulse.c")]
        assert pulse["level"] == "debug" and "Unable to create stream" in pulse["message"]  # while probing
    else:
        assert alsa_lines == []
    assert kiosk.events("audio.device_missing")[0]["device"] == BROKEN_PCM
