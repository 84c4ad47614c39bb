"""PCM16 arithmetic shared by the core, the adapters and the simulator.

The Realtime API carries audio as base64 of 16-bit little-endian mono PCM at 24 kHz. Everything here is pure
numpy: no I/O, no clocks.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

API_RATE_HZ: Final = 24000
BYTES_PER_SAMPLE: Final = 2


def b64_to_pcm(text: str) -> Pcm:
    """Decode a base64 PCM16 LE string. Raises ValueError on bad base64 or an odd byte count."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64 audio: {exc}") from None
    if len(raw) % BYTES_PER_SAMPLE:
        raise ValueError(f"audio of {len(raw)} bytes is not whole 16-bit samples")
    return np.frombuffer(raw, dtype="<i2").astype(np.int16, copy=False)


def pcm_to_b64(pcm: Pcm) -> str:
    """Encode PCM16 samples as base64 of little-endian bytes."""
    return base64.b64encode(np.asarray(pcm, dtype="<i2").tobytes()).decode("ascii")


def ms_to_samples(ms: float, rate_hz: int = API_RATE_HZ) -> int:
    return int(round(ms * rate_hz / 1000))


def samples_to_ms(samples: int, rate_hz: int = API_RATE_HZ) -> int:
    """Whole milliseconds covered by ``samples`` (rounded down: never claims audio that is not there)."""
    return samples * 1000 // rate_hz


def float_to_pcm(x: npt.NDArray[np.floating]) -> Pcm:
    """Float samples in [-1, 1] to PCM16, clipped."""
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def tone(freq_hz: float, duration_ms: float, rate_hz: int = API_RATE_HZ, amplitude: float = 0.3) -> Pcm:
    """A plain sine tone with 5 ms ramps at both ends (no clicks)."""
    n = ms_to_samples(duration_ms, rate_hz)
    t = np.arange(n) / rate_hz
    x = amplitude * np.sin(2 * np.pi * freq_hz * t)
    ramp = min(n // 2, ms_to_samples(5, rate_hz))
    if ramp:
        env = np.linspace(0.0, 1.0, ramp)
        x[:ramp] *= env
        x[n - ramp:] *= env[::-1]
    return float_to_pcm(x)


def voiced_tone(f0_hz: float, duration_ms: float, rate_hz: int = API_RATE_HZ, amplitude: float = 0.3) -> Pcm:
    """A vowel-like sound: a fundamental with decaying harmonics, slow vibrato and syllable-rate amplitude."""
    n = ms_to_samples(duration_ms, rate_hz)
    t = np.arange(n) / rate_hz
    f = f0_hz * (1 + 0.02 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f) / rate_hz
    x = sum((0.6**k) * np.sin(k * phase) for k in range(1, 6))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t) ** 2
    x = x / np.max(np.abs(x) + 1e-9) * syllables
    ramp = min(n // 2, ms_to_samples(10, rate_hz))
    if ramp:
        env = np.linspace(0.0, 1.0, ramp)
        x[:ramp] *= env
        x[n - ramp:] *= env[::-1]
    return float_to_pcm(amplitude * x)


class Ring:
    """A fixed-size ring of the most recent PCM16 samples (the pre-roll before a press)."""

    def __init__(self, capacity_samples: int):
        self._buf = np.zeros(max(capacity_samples, 0), dtype=np.int16)
        self._len = 0
        self._end = 0

    def push(self, pcm: Pcm) -> None:
        cap = self._buf.size
        if cap == 0 or pcm.size == 0:
            return
        pcm = pcm[-cap:]
        n = pcm.size
        first = min(n, cap - self._end)
        self._buf[self._end:self._end + first] = pcm[:first]
        self._buf[: n - first] = pcm[first:]
        self._end = (self._end + n) % cap
        self._len = min(cap, self._len + n)

    def take(self) -> Pcm:
        """Return the samples held, oldest first, and empty the ring."""
        cap = self._buf.size
        if self._len == 0:
            return np.zeros(0, dtype=np.int16)
        start = (self._end - self._len) % cap
        if start + self._len <= cap:
            out = self._buf[start:start + self._len].copy()
        else:
            out = np.concatenate((self._buf[start:], self._buf[: self._end]))
        self._len = 0
        return out

    def clear(self) -> None:
        self._len = 0

    def __len__(self) -> int:
        return self._len


def earcon_pcm(kind: str) -> Pcm:
    """The short local sounds, 24 kHz: press (a 40 ms tick), thinking (a soft rising pair), offline (two
    falling tones), apology (three falling tones), closed (three slow falling tones); spoken prompts
    (``adapters/prompts.py``) replace the last three. Kept short: the mic is open while they play."""
    gap = np.zeros(ms_to_samples(40), dtype=np.int16)
    parts: dict[str, list[Pcm]] = {
        "press": [tone(1760, 40, amplitude=0.15)],
        "thinking": [tone(660, 70, amplitude=0.1), gap, tone(880, 70, amplitude=0.1)],
        "offline": [tone(660, 160), gap, tone(440, 240)],
        "apology": [tone(784, 120), gap, tone(659, 120), gap, tone(523, 220)],
        "closed": [tone(523, 200), gap, tone(392, 200), gap, tone(262, 300)],
    }
    return np.concatenate(parts[kind])


class Batch:
    """Blocks of PCM gathered until there are enough to send as one message."""

    def __init__(self) -> None:
        self._blocks: list[Pcm] = []
        self.samples = 0

    def add(self, pcm: Pcm) -> None:
        self._blocks.append(pcm)
        self.samples += pcm.size

    def take(self) -> Pcm | None:
        """Everything gathered, in order, and empty the batch; None when it is empty."""
        blocks, self._blocks, self.samples = self._blocks, [], 0
        if not blocks:
            return None
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
