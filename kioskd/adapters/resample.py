"""Reply audio from the API's 24 kHz mono to the output device's rate, with soxr's streaming resampler."""

from __future__ import annotations

from typing import Final

import numpy as np
import soxr  # type: ignore[import-untyped]

from kioskd.core.pcm import API_RATE_HZ, Pcm

DTYPE: Final = "int16"
_NO_AUDIO: Final = np.zeros(0, dtype=np.int16)


class PlaybackResampler:
    """24 kHz mono int16 → the device rate, streaming, keeping track of which item each output sample belongs to.

    soxr holds back some input (≈ 11 ms mean, 20 ms max at LQ; 21 / 38 ms at MQ, §4.2); when the item changes, the
    previous item's tail is flushed first so no sample is credited to the wrong item.

    LQ by default: its 16-bit filter already puts aliases at −153 dB (§4.2), the same as MQ, and what it holds back
    is audio the jitter buffer cannot play yet, so half the lag is slack won at every delta. Loop thread only.
    """

    def __init__(self, out_rate_hz: int, quality: str = "LQ") -> None:
        self._rs = soxr.ResampleStream(API_RATE_HZ, out_rate_hz, 1, dtype=DTYPE, quality=quality)
        self._item: str | None = None
        self._pending = False  # input went in since the last flush or clear

    def push(self, pcm24: Pcm, item_id: str | None) -> list[tuple[Pcm, str | None]]:
        """Resample one chunk; returns the (device-rate PCM, item) pieces ready to queue, possibly none."""
        out: list[tuple[Pcm, str | None]] = [] if item_id == self._item else self.flush()
        x = np.ascontiguousarray(pcm24, dtype=np.int16).reshape(-1)
        if x.size == 0:
            return out
        self._item, self._pending = item_id, True
        y = self._rs.resample_chunk(x)
        if y.size:
            out.append((y, item_id))
        return out

    def flush(self) -> list[tuple[Pcm, str | None]]:
        """Release the tail held inside soxr (end of a reply or of an item) and reset for a fresh signal."""
        if not self._pending:
            return []
        tail = self._rs.resample_chunk(_NO_AUDIO, last=True)
        self._rs.clear()
        self._pending = False
        return [(tail, self._item)] if tail.size else []

    def clear(self) -> None:
        """Drop what soxr holds (barge-in: it was never heard)."""
        self._rs.clear()
        self._pending = False
