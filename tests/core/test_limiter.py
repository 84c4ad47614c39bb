"""The peak limiter on numpy arrays: the ceiling holds, speech passes untouched, the gain moves smoothly."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from kioskd.core.limiter import PeakLimiter, window_min
from kioskd.core.pcm import Pcm, ms_to_samples, voiced_tone

RATE_HZ = 48000


def limited(x: Pcm, chunks: int = 1, limiter: PeakLimiter | None = None) -> Pcm:
    """``x`` through a limiter in ``chunks`` pieces, then its flush: as long as ``x``, ``delay_samples`` late."""
    lim = limiter or PeakLimiter(RATE_HZ)
    out = [lim.process(piece) for piece in np.array_split(x, chunks)]
    return np.concatenate([*out, lim.flush()])


def test_full_scale_noise_never_exceeds_the_ceiling() -> None:
    """Uniform noise over the whole int16 range (peaks at 32 767 and -32 768) comes out at most at -1 dBFS."""
    noise = np.random.default_rng(7).integers(-32768, 32768, 2 * RATE_HZ).astype(np.int16)
    lim = PeakLimiter(RATE_HZ)
    out = limited(noise, chunks=37, limiter=lim)
    assert out.size == noise.size
    assert lim.ceiling == 29203  # -1 dBFS
    assert int(np.max(np.abs(out.astype(np.int32)))) <= lim.ceiling
    assert int(np.max(np.abs(out.astype(np.int32)))) >= lim.ceiling - 1  # limited, not muted


def test_speech_below_the_ceiling_passes_bit_identical() -> None:
    """A voiced signal peaking at -6 dBFS is not touched: the output is the input, delayed by the look-ahead,
    whatever the chunking; and after loud audio has been limited, the gain comes back to exactly 1."""
    speech = voiced_tone(140, 3000, RATE_HZ, amplitude=0.5)
    for chunks in (1, 7, 301):
        assert np.array_equal(limited(speech, chunks), speech)
    lim = PeakLimiter(RATE_HZ)
    loud = np.full(ms_to_samples(100, RATE_HZ), 32767, dtype=np.int16)
    out = limited(np.concatenate((loud, speech)), 11, lim)
    after_release = ms_to_samples(100 + 300, RATE_HZ)  # the 250 ms release is over
    assert np.array_equal(out[after_release:], speech[after_release - loud.size:])
    assert lim.gain == 1.0


def test_the_gain_ramps_without_steps_and_starts_before_the_peak() -> None:
    """A DC level stepping from -6 dBFS to full scale and back: the gain (output / input) falls to the ceiling's
    over the 2 ms look-ahead, starting before the loud samples (so none exceeds the ceiling), then recovers
    linearly over the release; no sample-to-sample change is larger than the look-ahead ramp."""
    quiet, loud = 16384, 32767
    n = ms_to_samples(100, RATE_HZ)
    x = np.concatenate((np.full(n, quiet), np.full(n, loud), np.full(6 * n, quiet))).astype(np.int16)
    lim = PeakLimiter(RATE_HZ)
    gain = limited(x, 13, lim).astype(np.float64) / x
    w = lim.delay_samples + 1
    floor = lim.ceiling / loud
    assert gain[n:2 * n].max() <= floor + 1e-9 and gain[n + w:2 * n - w].min() >= floor - 1e-4
    assert np.all(gain[:n - w] == 1.0) and gain[n - 1] < 1.0  # the ramp starts inside the look-ahead, before the peak
    steps = np.abs(np.diff(gain))
    assert steps.max() <= (1 - floor) / w + 1e-4  # one look-ahead ramp per sample at most: no step
    back = int(np.flatnonzero(gain < 1.0)[-1]) + 1
    assert 2 * n + ms_to_samples(20, RATE_HZ) < back < 2 * n + ms_to_samples(40, RATE_HZ)  # 0.11 of gain at 1/250 ms
    assert np.all(gain[back:] == 1.0)


def test_a_reset_drops_what_the_look_ahead_holds_and_starts_at_unity() -> None:
    """Barge-in: the held samples are never played, and the next reply starts at gain 1."""
    lim = PeakLimiter(RATE_HZ)
    out = lim.process(np.full(1000, 32767, dtype=np.int16))
    assert out.size == 1000 - lim.delay_samples and lim.gain < 1.0
    lim.reset()
    assert lim.gain == 1.0 and lim.flush().size == 0
    speech = voiced_tone(140, 500, RATE_HZ, amplitude=0.5)
    assert np.array_equal(limited(speech, 3, lim), speech)


@pytest.mark.parametrize("w", [1, 2, 5, 96])
def test_window_min_matches_the_obvious_definition(w: int) -> None:
    x: npt.NDArray[np.float64] = np.random.default_rng(w).random(1000)
    expected = np.array([x[i:i + w].min() for i in range(x.size - w + 1)])
    assert np.array_equal(window_min(x, w), expected)
