"""Spoken prompts: WAV recordings in the exhibit's language that replace the offline, apology and closed tones.

``prompts.offline`` / ``.apology`` / ``.closed`` name a WAV file (PCM 8, 16, 24 or 32 bit, any rate, mono or
stereo, at most ``MAX_SECONDS``), ``default`` the English recording that ships in ``kioskd/prompts/``, ``null``
the tone. A file is read once at start and resampled to the API rate (soxr, as the reply audio is); one that is
missing, unreadable, not a PCM WAV, silent or too long keeps the tone and is said once
(``prompts.unusable``, with the cause). Blocking file reads: call ``load`` before the loop serves visitors.
"""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Final

import numpy as np
import soxr

from kioskd import log as log_mod
from kioskd.config import PromptsConfig
from kioskd.core import events as ev
from kioskd.core.pcm import API_RATE_HZ, Pcm

PACKAGED: Final = Path(__file__).resolve().parent.parent / "prompts"
MAX_SECONDS: Final = 15.0
#: the loudest sample a prompt is scaled to at most (-6 dBFS: a recording at full scale is not a shout)
PEAK: Final = 16384
KINDS: Final = {"offline": ev.Earcon.OFFLINE, "apology": ev.Earcon.APOLOGY, "closed": ev.Earcon.CLOSED}


class Unusable(Exception):
    pass


def load(cfg: PromptsConfig, log: log_mod.Logger | None = None) -> dict[ev.Earcon, Pcm]:
    """The prompts to play instead of tones, by earcon; a prompt that cannot be used is left out (its tone
    plays) and logged once."""
    log = log or log_mod.get_logger("kioskd.audio")
    out: dict[ev.Earcon, Pcm] = {}
    for name, earcon in KINDS.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        path = PACKAGED / f"{name}.wav" if value == "default" else Path(value)
        try:
            out[earcon] = read_wav(path)
        except Unusable as exc:
            log.warning("prompts.unusable", prompt=name, file=str(path), cause=str(exc))
    return out


def read_wav(path: Path) -> Pcm:
    """A WAV file as mono int16 at the API rate; Unusable says why not."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            if not 8000 <= rate <= 192000:
                raise Unusable(f"a sample rate of {rate} Hz")
            if frames > MAX_SECONDS * rate:
                raise Unusable(f"{frames / rate:.1f} s long; the limit is {MAX_SECONDS:g} s")
            data = w.readframes(frames)
    except (OSError, EOFError, wave.Error, ValueError) as exc:
        raise Unusable(str(exc) or type(exc).__name__) from None
    data = data[: len(data) - len(data) % (width * channels)] if width and channels else b""  # whole frames
    if width == 1:
        samples = (np.frombuffer(data, dtype=np.uint8).astype(np.float64) - 128) / 128
    elif width == 3:  # little-endian 24-bit: widen each sample to the top of an int32
        raw = np.frombuffer(data[: len(data) - len(data) % 3], dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        samples = ((raw[:, 0] << 8 | raw[:, 1] << 16 | raw[:, 2] << 24).astype(np.float64)) / 2.0**31
    elif width in (2, 4):
        samples = np.frombuffer(data, dtype=np.int16 if width == 2 else np.int32).astype(np.float64)
        samples /= float(2 ** (8 * width - 1))
    else:
        raise Unusable(f"{8 * width}-bit samples (use 8, 16, 24 or 32-bit PCM)")
    if channels > 1:
        samples = samples[: samples.size - samples.size % channels].reshape(-1, channels).mean(axis=1)
    audio = soxr.resample(samples, rate, API_RATE_HZ) if rate != API_RATE_HZ and samples.size else samples
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0  # after resampling: it can overshoot
    if peak < 1e-3:
        raise Unusable("silent")
    scale = min(1.0, PEAK / 32768 / peak) * 32767
    out: Pcm = np.clip(np.round(audio * scale), -32768, 32767).astype(np.int16)
    return out
