"""Everything the speaker plays, from the API's 24 kHz mono to the output device's rate (soxr's streaming
resampler), then through the peak limiter (``core/limiter.py``): after resampling, because resampling can put
peaks between the samples it was given, and the ceiling is about what reaches the device."""

from __future__ import annotations

from typing import Final

import numpy as np
import soxr  # type: ignore[import-untyped]

from kioskd.core.g711 import ULAW_RATE_HZ
from kioskd.core.limiter import PeakLimiter
from kioskd.core.pcm import API_RATE_HZ, Pcm

DTYPE: Final = "int16"
_NO_AUDIO: Final = np.zeros(0, dtype=np.int16)


class PlaybackResampler:
    """24 kHz mono int16 → the device rate, limited, streaming, keeping track of which item each output sample
    belongs to.

    soxr holds back some input (≈ 11 ms mean, 20 ms max at LQ; 21 / 38 ms at MQ, §4.2), the limiter 2 ms more (its
    look-ahead); when the item changes, the previous item's tail is flushed first so no sample is credited to the
    wrong item.

    The limiter sees earcons too: they peak at 0.3 of full scale, far below its ceiling, so they pass unchanged,
    and one path for everything the speaker plays is simpler than a second one that must be known never to need
    it. Its gain carries on across items within a reply and starts again at unity after ``flush`` (the end of a
    reply or an earcon) and ``clear`` (a barge-in).

    LQ by default: its 16-bit filter already puts aliases at −153 dB (§4.2), the same as MQ, and what it holds back
    is audio the jitter buffer cannot play yet, so half the lag is slack won at every delta. Loop thread only.
    """

    def __init__(self, out_rate_hz: int, quality: str = "LQ") -> None:
        self._rs = soxr.ResampleStream(API_RATE_HZ, out_rate_hz, 1, dtype=DTYPE, quality=quality)
        self._limiter = PeakLimiter(out_rate_hz)
        self._item: str | None = None
        self._pending = False  # input went in since the last flush or clear

    def push(self, pcm24: Pcm, item_id: str | None) -> list[tuple[Pcm, str | None]]:
        """Resample one chunk; returns the (device-rate PCM, item) pieces ready to queue, possibly none."""
        out: list[tuple[Pcm, str | None]] = [] if item_id == self._item else self._release()
        x = np.ascontiguousarray(pcm24, dtype=np.int16).reshape(-1)
        if x.size == 0:
            return out
        self._item, self._pending = item_id, True
        y = self._limiter.process(self._rs.resample_chunk(x))
        if y.size:
            out.append((y, item_id))
        return out

    def flush(self) -> list[tuple[Pcm, str | None]]:
        """Release the tail held inside soxr and the limiter (the end of a reply) and reset for a fresh signal."""
        out = self._release()
        self._limiter.reset()
        return out

    def _release(self) -> list[tuple[Pcm, str | None]]:
        """The current item's tail: what soxr holds, then what the limiter's look-ahead holds."""
        if not self._pending:
            return []
        tail = self._limiter.process(self._rs.resample_chunk(_NO_AUDIO, last=True))
        self._rs.clear()
        self._pending = False
        tail = np.concatenate((tail, self._limiter.flush()))
        return [(tail, self._item)] if tail.size else []

    def clear(self) -> None:
        """Drop what soxr and the limiter hold (barge-in: it was never heard)."""
        self._rs.clear()
        self._limiter.reset()
        self._pending = False


def uplink_downsampler() -> soxr.ResampleStream:
    """A fresh 24 kHz → 8 kHz stream for one question sent as G.711 µ-law (``audio.input_format: pcmu``): the
    encoder keeps it across the question's chunks, so their boundaries do not click, and flushes it at commit."""
    return soxr.ResampleStream(API_RATE_HZ, ULAW_RATE_HZ, 1, dtype=DTYPE)
