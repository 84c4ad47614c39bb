"""Device selection on the real PortAudio device list of the null-sink environment (scripts/audio-env)."""

from __future__ import annotations

from typing import Any

import pytest

from kioskd.adapters.devices import (
    CANDIDATE_RATES_HZ,
    DeviceChoice,
    choose,
    find_device,
    first_supported_rate,
    list_devices,
    match_devices,
    probe_rate,
)
from kioskd.errors import DeviceError

NAMES = ["USB PnP Sound Device: Audio (hw:2,0)", "usb pnp sound device", "bcm2835 Headphones: - (hw:0,0)"]


def sd() -> Any:
    import sounddevice  # type: ignore[import-untyped]

    return sounddevice


def names_of(kind: str) -> list[str]:
    key = f"max_{kind}_channels"
    return [d["name"] for d in sd().query_devices() if d[key] > 0]


# --------------------------------------------------------------------------------------- pure rules


def test_match_exact_name_wins_over_substrings() -> None:
    """An exact name is chosen even when it is a substring of other names."""
    assert match_devices("usb pnp sound device", NAMES) == ["usb pnp sound device"]
    assert match_devices("USB PNP SOUND DEVICE", NAMES) == ["usb pnp sound device"]


def test_match_substring_is_case_insensitive_and_may_be_ambiguous() -> None:
    assert match_devices("headphones", NAMES) == ["bcm2835 Headphones: - (hw:0,0)"]
    assert match_devices("pnp", NAMES) == NAMES[:2]
    assert match_devices("hdmi", NAMES) == []


def test_first_supported_rate_tries_the_documented_order() -> None:
    """48000, 44100, 32000, 16000, then 24000; the first accepted wins; none → None."""
    tried: list[int] = []

    def only(*accepted: int) -> Any:
        def supported(rate_hz: int) -> bool:
            tried.append(rate_hz)
            return rate_hz in accepted
        return supported

    assert first_supported_rate(only(44100, 16000)) == 44100
    assert tried == [48000, 44100]
    tried.clear()
    assert first_supported_rate(only(24000)) == 24000
    assert tried == [48000, 44100, 32000, 16000, 24000]
    assert first_supported_rate(only()) is None
    assert first_supported_rate(only(48000, 44100)) == 48000


# --------------------------------------------------------------------------------------- PortAudio


def test_find_by_exact_name_and_by_substring() -> None:
    devices = sd().query_devices()
    assert devices[find_device("kiosk_speaker", "output")[0]]["name"] == "kiosk_speaker"
    assert devices[find_device("MICROPHONE", "input")[0]]["name"] == "kiosk_microphone"
    assert devices[find_device("question", "output")[0]]["name"] == "kiosk_question"
    assert devices[find_device("speaker44_mon", "input")[0]]["name"] == "kiosk_speaker44_monitor"


def test_none_means_system_default() -> None:
    default_out = sd().query_devices(kind="output")["index"]
    assert find_device(None, "output")[0] == default_out
    assert choose(None, "output").index == default_out


def test_unknown_name_lists_the_devices_present() -> None:
    with pytest.raises(DeviceError) as info:
        find_device("USB PnP", "input")[0]
    err = info.value
    assert (err.device, err.direction) == ("USB PnP", "input")
    for name in names_of("input"):
        assert repr(name) in str(err)


def test_an_ambiguous_name_chooses_the_first_match_and_names_the_others() -> None:
    """A name matching several devices (a second identical USB adapter) is no error: the first in PortAudio's
    order is chosen, every time, and the others are named for the log."""
    in_order = [n for n in names_of("output") if "speaker44" in n]
    assert len(in_order) >= 2
    index, others = find_device("speaker44", "output")
    assert sd().query_devices(index)["name"] == in_order[0] and others == tuple(in_order[1:])
    assert choose("speaker44", "output").others == tuple(in_order[1:])
    assert find_device("kiosk_speaker44", "output")[1] == ()  # an exact name is never ambiguous


def test_the_probe_runs_in_a_fresh_process_and_says_what_is_missing() -> None:
    """``python -m kioskd.adapters.devices probe`` (what a kiosk waiting for a device runs): None for a device
    it finds, the reason for one it does not."""
    import json
    import subprocess
    import sys

    queries = {"input": "kiosk_microphone", "output": "USB PnP"}
    out = subprocess.run([sys.executable, "-m", "kioskd.adapters.devices", "probe", json.dumps(queries)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    result = json.loads(out)
    assert result["input"] is None
    assert "no output device matches" in result["output"] and "'kiosk_speaker'" in result["output"]


def test_probe_picks_a_supported_rate() -> None:
    """Pulse PCMs take most rates: the first candidate wins; the choice is int16 mono where possible."""
    index = find_device("kiosk_speaker44", "output")[0]
    rate_hz = probe_rate(index, "output", 1)
    assert rate_hz == CANDIDATE_RATES_HZ[0]
    sd().check_output_settings(device=index, channels=1, dtype="int16", samplerate=rate_hz)
    assert choose("kiosk_speaker44", "output") == DeviceChoice(index, "kiosk_speaker44", rate_hz, 1)
    assert choose("kiosk_microphone", "input").channels == 1


def test_probe_fails_naming_the_device() -> None:
    """No rate works for an impossible channel count: the error names the device and the rates tried."""
    index = find_device("kiosk_speaker", "output")[0]
    with pytest.raises(DeviceError) as info:
        probe_rate(index, "output", 4096)
    assert info.value.device == "kiosk_speaker"
    assert "48000" in str(info.value) and "24000" in str(info.value)


def test_list_devices_shows_both_directions() -> None:
    text = list_devices()
    assert "input devices" in text and "output devices" in text
    for name in names_of("input") + names_of("output"):
        assert name in text
    default_name = sd().query_devices(kind="output")["name"]
    assert any(line.strip().startswith(f"* {default_name}") for line in text.splitlines())
