"""Spoken prompts from real WAV files: the packaged recordings, a museum's own in any common format, and the ones
that cannot be used (the tone stays, said once)."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from kioskd.adapters.prompts import MAX_SECONDS, PEAK, Unusable, load, read_wav
from kioskd.config import PromptsConfig
from kioskd.core import events as ev
from kioskd.core.pcm import API_RATE_HZ
from tests.conftest import LogRecorder



def write(path: Path, samples: np.ndarray, rate: int, width: int, channels: int = 1) -> Path:
    """``samples`` (floats in -1..1, frames × channels) as a PCM WAV of ``width`` bytes per sample."""
    scaled = samples * (2 ** (8 * width - 1) - 1)
    if width == 1:
        data = (scaled + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = scaled.astype(np.int32).reshape(-1)
        data = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        data = scaled.astype({2: np.int16, 4: np.int32}[width]).tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)
    return path


def sine(rate: int, seconds: float, channels: int = 1, amplitude: float = 0.9) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave_ = amplitude * np.sin(2 * np.pi * 440 * t)
    return np.repeat(wave_[:, None], channels, axis=1)


def test_the_packaged_prompts_are_spoken_and_longer_than_the_tones() -> None:
    lines = LogRecorder()
    prompts = load(PromptsConfig(), lines)  # type: ignore[arg-type]
    assert set(prompts) == {ev.Earcon.OFFLINE, ev.Earcon.APOLOGY, ev.Earcon.CLOSED} and not lines.lines
    for pcm in prompts.values():
        assert pcm.dtype == np.int16 and 1.0 < pcm.size / API_RATE_HZ < 5.0
        assert 0 < int(np.max(np.abs(pcm))) <= PEAK
    assert load(PromptsConfig(offline=None, apology=None, closed=None)) == {}  # null: the tones


@pytest.mark.parametrize(("rate", "width", "channels"), [(44100, 2, 2), (48000, 3, 1), (16000, 1, 1),
                                                        (22050, 4, 2)])
def test_a_museums_recording_in_any_common_format_becomes_24_khz_mono(tmp_path: Path, rate: int, width: int,
                                                                      channels: int) -> None:
    path = write(tmp_path / "p.wav", sine(rate, 1.0, channels), rate, width, channels)
    pcm = read_wav(path)
    assert abs(pcm.size - API_RATE_HZ) <= 50  # one second at 24 kHz
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    assert abs(np.argmax(spectrum) * API_RATE_HZ / pcm.size - 440) < 5  # the same pitch
    assert int(np.max(np.abs(pcm))) == pytest.approx(PEAK, abs=400)  # a full-scale recording is not a shout


@pytest.mark.parametrize(("kind", "cause"), [("missing", "No such file"), ("not a wav", "file does not start"),
                                             ("silent", "silent"), ("too long", f"the limit is {MAX_SECONDS:g} s")])
def test_a_prompt_that_cannot_be_used_keeps_its_tone_and_is_said_once(tmp_path: Path, kind: str,
                                                                       cause: str) -> None:
    path = tmp_path / "offline.wav"
    if kind == "not a wav":
        path.write_text("this is not audio")
    elif kind == "silent":
        write(path, np.zeros((8000, 1)), 8000, 2)
    elif kind == "too long":
        write(path, sine(8000, MAX_SECONDS + 1), 8000, 2)
    with pytest.raises(Unusable, match=cause):
        read_wav(path)
    lines = LogRecorder()
    prompts = load(PromptsConfig(offline=str(path)), lines)  # type: ignore[arg-type]
    assert ev.Earcon.OFFLINE not in prompts and ev.Earcon.APOLOGY in prompts  # the others still load
    [(event, fields)] = lines.lines
    assert event == "prompts.unusable" and fields["prompt"] == "offline" and cause in fields["cause"]


def test_a_recording_cut_short_by_a_byte_still_plays(tmp_path: Path) -> None:
    path = write(tmp_path / "p.wav", sine(16000, 1.0), 16000, 2)
    path.write_bytes(path.read_bytes()[:-1])  # a copy that stopped one byte early
    pcm = read_wav(path)
    assert abs(pcm.size - API_RATE_HZ) <= 50
