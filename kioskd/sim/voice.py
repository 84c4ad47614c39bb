"""The simulator's reply voice: the PCM16 24 kHz audio the simulated model "speaks".

- ``tone``: a pure sine of ``tone_hz`` for ``reply_ms``, so a test can recognise the reply in a recording.
- ``speech``: the reply text spoken by espeak-ng when it is on PATH; otherwise a voiced tone whose length follows
  the text, so the demo still sounds like a voice rather than a beep.

Blocking (espeak-ng runs as a child process): call ``reply_audio`` off the event loop (``asyncio.to_thread``).
Results are cached per input, so a simulator pays for synthesis once.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
import wave
from typing import Final, Literal

import numpy as np
import soxr  # type: ignore[import-untyped]

from kioskd.core.pcm import API_RATE_HZ, Pcm, float_to_pcm, tone, voiced_tone

Voice = Literal["speech", "tone"]

#: fundamental of the fallback voice (a low speaking voice)
FALLBACK_F0_HZ: Final = 140.0
#: how long the fallback voice takes per character of text: about 15 characters a second, a calm speaker
FALLBACK_MS_PER_CHAR: Final = 65
ESPEAK_TIMEOUT_S: Final = 20.0


def reply_audio(voice: Voice, text: str, tone_hz: float, reply_ms: int) -> Pcm:
    """The whole reply as int16 mono at 24 kHz (read-only: it is cached and shared)."""
    return _tone(tone_hz, reply_ms) if voice == "tone" else _speech(text)


@functools.lru_cache(maxsize=8)
def _tone(tone_hz: float, reply_ms: int) -> Pcm:
    pcm = tone(tone_hz, reply_ms)
    pcm.flags.writeable = False
    return pcm


@functools.lru_cache(maxsize=8)
def _speech(text: str) -> Pcm:
    pcm = espeak(text)
    if pcm is None:
        pcm = voiced_tone(FALLBACK_F0_HZ, max(len(text), 1) * FALLBACK_MS_PER_CHAR)
    pcm.flags.writeable = False
    return pcm


def espeak(text: str) -> Pcm | None:
    """``text`` spoken by espeak-ng, resampled to 24 kHz; None when espeak-ng is missing or fails."""
    exe = shutil.which("espeak-ng")
    if exe is None or not text.strip():
        return None
    try:
        # "--" keeps a reply text that starts with "-" from being read as an option
        done = subprocess.run([exe, "--stdout", "-v", "en", "--", text], capture_output=True, check=True,
                              timeout=ESPEAK_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return _wav_to_api_pcm(done.stdout)


def _wav_to_api_pcm(data: bytes) -> Pcm | None:
    """Decode espeak-ng's WAV (mono PCM16; its header sizes are placeholders when it writes to a pipe)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getsampwidth() != 2:
                return None
            rate_hz, channels = w.getframerate(), w.getnchannels()
            # the header claims ~2**30 frames; reading "that many" simply reads to the end of the data
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError):
        return None
    pcm = np.frombuffer(raw[: len(raw) - len(raw) % (2 * channels)], dtype="<i2").reshape(-1, channels)[:, 0]
    if pcm.size == 0:
        return None
    if rate_hz == API_RATE_HZ:
        return pcm.astype(np.int16)
    out = soxr.resample(pcm.astype(np.float32) / 32768.0, rate_hz, API_RATE_HZ)
    return float_to_pcm(out)
