"""A look-ahead peak limiter for what the speaker plays: unity gain below the ceiling, never a sample above it,
and no step in the gain.

Theory of operation
-------------------
Each sample ``x[n]`` needs at most the gain ``need[n] = min(1, ceiling / |x[n]|)``. Applying that directly would
clip; the limiter instead applies a gain envelope that is never above ``need`` and moves smoothly:

* **Attack, with look-ahead.** ``hold[m]`` is the smallest ``need`` over the ``W`` samples from ``m`` on
  (``W`` = ``lookahead_ms``), and the attack envelope ``e[n]`` is the mean of ``hold`` over the ``W`` samples up to
  ``n``. Every one of those windows contains ``n``, so ``e[n] <= need[n]``: the ceiling holds. And ``e`` is a moving
  average of a step function, so the gain ramps down over ``W`` samples, starting ``W`` samples before the peak,
  instead of stepping. Seeing ``W - 1`` samples ahead delays the audio by that much (2 ms).
* **Release.** The gain rises back by at most ``1 / release`` per second, linearly:
  ``g[n] = min(e[n], g[n - 1] + r)``. That recurrence is ``g[n] = r·n + min(g[-1] + r, min over j <= n of
  (e[j] - r·j))``: one ``numpy.minimum.accumulate``, no Python loop per sample.
* **Unity below the ceiling.** A block in which no sample exceeds the ceiling, with the gain back at 1, comes out
  exactly as it went in (only delayed): normal speech is never touched.

Everything is vectorised per block (O(n): the window minimum is van Herk / Gil-Werman's); ``benchmarks/limiter.py``
measures it. Streaming: ``process`` keeps the last ``W - 1`` samples back for the look-ahead, ``flush`` releases
them (the end of an item), ``reset`` drops them (a barge-in: never heard). Pure: no I/O, no clock.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from kioskd.core.pcm import Pcm, ms_to_samples

CEILING_DBFS: Final = -1.0
LOOKAHEAD_MS: Final = 2.0
RELEASE_MS: Final = 250.0  # from gain 0 back to 1; a 6 dB reduction (gain 0.5) is undone in half of it
_EMPTY: Final = np.zeros(0, dtype=np.int16)


def window_min(x: npt.NDArray[np.float64], w: int) -> npt.NDArray[np.float64]:
    """``out[i] = min(x[i:i + w])`` for every full window (``x.size - w + 1`` values), in O(n)."""
    n = x.size
    if w <= 1:
        return x.copy()
    pad = (-n) % w
    blocks = np.concatenate((x, np.full(pad, np.inf))).reshape(-1, w)
    from_start = np.minimum.accumulate(blocks, axis=1).ravel()  # min from the block's start to i
    to_end = np.minimum.accumulate(blocks[:, ::-1], axis=1)[:, ::-1].ravel()  # min from i to the block's end
    return np.minimum(to_end[:n - w + 1], from_start[w - 1:n])


class PeakLimiter:
    """Mono int16 in, mono int16 out at the same rate, ``delay_samples`` later. Single-threaded (the loop)."""

    def __init__(self, rate_hz: int, *, ceiling_dbfs: float = CEILING_DBFS, lookahead_ms: float = LOOKAHEAD_MS,
                 release_ms: float = RELEASE_MS) -> None:
        if ceiling_dbfs > 0 or lookahead_ms < 0 or release_ms <= 0:
            raise ValueError(f"need ceiling_dbfs <= 0, lookahead_ms >= 0, release_ms > 0; got {ceiling_dbfs}, "
                             f"{lookahead_ms}, {release_ms}")
        self.ceiling: Final = int(32767 * 10 ** (ceiling_dbfs / 20))  # -1 dBFS: 29 203
        self._w: Final = max(1, ms_to_samples(lookahead_ms, rate_hz))
        self._rise: Final = 1.0 / max(1, ms_to_samples(release_ms, rate_hz))  # gain regained per sample
        self._pending: Pcm = _EMPTY  # input not output yet: the look-ahead
        self._need_before = np.ones(self._w - 1)  # ``need`` of the W - 1 samples output last
        self._gain = 1.0  # the gain applied to the last sample output
        self._calm = True  # _need_before is all ones

    @property
    def delay_samples(self) -> int:
        return self._w - 1

    @property
    def gain(self) -> float:
        """The gain applied to the last sample output (1.0: not limiting)."""
        return self._gain

    def process(self, pcm: Pcm) -> Pcm:
        """Limit the next samples; returns as many as came in, ``delay_samples`` behind (fewer at the start)."""
        x = np.asarray(pcm, dtype=np.int16).reshape(-1)
        xs = np.concatenate((self._pending, x)) if self._pending.size else x
        n_out = xs.size - self._w + 1
        if n_out <= 0:
            self._pending = xs.copy()
            return _EMPTY
        peak = int(np.max(np.abs(xs.astype(np.int32)))) if xs.size else 0
        if peak <= self.ceiling and self._calm and self._gain >= 1.0:  # unity throughout: pass it through
            out = xs[:n_out].copy()
            self._pending = xs[n_out:].copy()
            return out
        w = self._w
        need = np.concatenate((self._need_before, np.minimum(1.0, self.ceiling / np.maximum(
            np.abs(xs.astype(np.float64)), 1.0))))  # need[i] is xs[i - (w - 1)]'s: the look-behind comes first
        hold = window_min(need, w)  # hold[i]: the smallest need in the w samples ending at xs[i]
        sums = np.concatenate(([0.0], np.cumsum(hold)))
        attack = (sums[w:w + n_out] - sums[:n_out]) / w  # mean of hold over the w windows holding each sample
        ramp = self._rise * np.arange(n_out)
        gain = ramp + np.minimum(np.minimum.accumulate(attack - ramp), self._gain + self._rise)
        out = np.clip(np.rint(xs[:n_out] * gain), -self.ceiling, self.ceiling).astype(np.int16)
        self._gain = min(1.0, float(gain[-1]))
        self._need_before = need[n_out:n_out + w - 1].copy()
        self._calm = bool(np.all(self._need_before >= 1.0))
        self._pending = xs[n_out:].copy()
        return out

    def flush(self) -> Pcm:
        """Release what the look-ahead holds, as if silence followed (the end of an item); the gain carries on."""
        if not self._pending.size:
            return _EMPTY
        out = self.process(np.zeros(self._w - 1, dtype=np.int16))
        self._pending = _EMPTY
        self._need_before = np.ones(self._w - 1)
        self._calm = True
        return out

    def reset(self) -> None:
        """Drop what the look-ahead holds (never heard) and start again at unity gain."""
        self._pending = _EMPTY
        self._need_before = np.ones(self._w - 1)
        self._gain = 1.0
        self._calm = True
