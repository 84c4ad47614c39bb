"""PCM16 helpers: base64, unit conversions, tones, the pre-roll ring."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from kioskd.core.pcm import (
    API_RATE_HZ, Ring, b64_to_pcm, earcon_pcm, ms_to_samples, pcm_to_b64, samples_to_ms, tone, voiced_tone,
)


def test_base64_round_trip() -> None:
    """pcm → base64 → pcm gives back the same samples, extremes included."""
    pcm = np.array([0, 1, -1, 32767, -32768, 1234, -4321], dtype=np.int16)
    back = b64_to_pcm(pcm_to_b64(pcm))
    assert back.dtype == np.int16
    assert np.array_equal(back, pcm)


def test_base64_is_little_endian() -> None:
    """Samples go on the wire as 16-bit little-endian, as the reference's wire example decodes."""
    assert pcm_to_b64(np.array([0, 1, 2], dtype=np.int16)) == "AAABAAIA"
    assert b64_to_pcm("AAABAAIA").tolist() == [0, 1, 2]
    assert base64.b64decode(pcm_to_b64(np.array([0x0102], dtype=np.int16))) == b"\x02\x01"


def test_empty_audio() -> None:
    """An empty string is zero samples both ways."""
    assert pcm_to_b64(np.zeros(0, np.int16)) == ""
    assert b64_to_pcm("").size == 0


@pytest.mark.parametrize("text", ["not base64!", "AAA", "AA=A"])
def test_bad_base64_raises_value_error(text: str) -> None:
    """Malformed base64 → ValueError naming the problem."""
    with pytest.raises(ValueError, match="base64"):
        b64_to_pcm(text)


def test_odd_byte_count_raises_value_error() -> None:
    """Three bytes are not whole 16-bit samples → ValueError."""
    with pytest.raises(ValueError, match="3 bytes"):
        b64_to_pcm(base64.b64encode(b"\x00\x01\x02").decode())


def test_ms_samples_conversions() -> None:
    """24 kHz: 1 ms = 24 samples, 100 ms = 2400; samples_to_ms rounds down."""
    assert ms_to_samples(1) == 24
    assert ms_to_samples(20) == 480
    assert ms_to_samples(100) == 2400
    assert ms_to_samples(10, 48000) == 480
    assert samples_to_ms(2400) == 100
    assert samples_to_ms(2399) == 99
    assert samples_to_ms(441, 44100) == 10
    assert API_RATE_HZ == 24000


@pytest.mark.parametrize("freq_hz", [440.0, 1000.0, 1760.0])
def test_tone_has_its_frequency_and_length(freq_hz: float) -> None:
    """tone(f, 500 ms) is 500 ms long and its spectrum peaks at f; it starts and ends near silence."""
    pcm = tone(freq_hz, 500)
    assert pcm.dtype == np.int16 and pcm.size == ms_to_samples(500)
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * API_RATE_HZ / pcm.size
    assert abs(peak_hz - freq_hz) <= API_RATE_HZ / pcm.size
    assert abs(int(pcm[0])) < 200 and abs(int(pcm[-1])) < 200  # ramps: no click
    assert 0.25 * 32767 < np.max(np.abs(pcm)) <= 0.31 * 32767  # amplitude 0.3


def test_tone_at_another_rate() -> None:
    """tone at 48 kHz has twice the samples and the same pitch."""
    pcm = tone(1000.0, 100, rate_hz=48000)
    assert pcm.size == 4800
    crossings = np.count_nonzero(np.diff(np.signbit(pcm[500:-500].astype(np.int32))))
    assert crossings == pytest.approx(2 * 1000 * (pcm.size - 1000) / 48000, abs=2)


def test_voiced_tone_fundamental() -> None:
    """voiced_tone(f0) is loudest at its fundamental and stays within int16."""
    pcm = voiced_tone(200.0, 1000)
    assert pcm.size == 24000
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    assert abs(np.argmax(spectrum) * API_RATE_HZ / pcm.size - 200.0) < 10


@pytest.mark.parametrize("kind", ["press", "thinking", "offline", "apology"])
def test_earcons_are_short_pcm(kind: str) -> None:
    """Every earcon is non-empty 24 kHz PCM16 under a second."""
    pcm = earcon_pcm(kind)
    assert pcm.dtype == np.int16 and 0 < pcm.size < API_RATE_HZ


def test_ring_keeps_the_newest_samples_across_wrap_around() -> None:
    """A ring of N samples fed more than N, in odd-sized pieces, returns the newest N in order."""
    ring = Ring(1000)
    stream = np.arange(5000, dtype=np.int16)
    fed = 0
    for size in [7, 333, 1, 999, 1000, 1001, 250, 409]:
        ring.push(stream[fed:fed + size])
        fed += size
        assert len(ring) == min(fed, 1000)
    assert np.array_equal(ring.take(), stream[fed - 1000:fed])


def test_ring_partial_fill_and_take_empties() -> None:
    """Fewer samples than the capacity come back whole; take() empties the ring."""
    ring = Ring(100)
    ring.push(np.arange(30, dtype=np.int16))
    ring.push(np.arange(30, 50, dtype=np.int16))
    assert ring.take().tolist() == list(range(50))
    assert len(ring) == 0
    assert ring.take().size == 0


def test_ring_take_after_wrap_without_overflow() -> None:
    """After a take, new samples that wrap past the end of the buffer still come back in order."""
    ring = Ring(10)
    ring.push(np.arange(8, dtype=np.int16))
    ring.take()
    ring.push(np.arange(100, 106, dtype=np.int16))  # written at 8, 9, 0, 1, 2, 3
    assert ring.take().tolist() == list(range(100, 106))


def test_ring_take_returns_a_copy() -> None:
    """The array take() returns is not overwritten by later pushes."""
    ring = Ring(4)
    ring.push(np.array([1, 2, 3, 4], dtype=np.int16))
    got = ring.take()
    ring.push(np.array([9, 9, 9, 9], dtype=np.int16))
    assert got.tolist() == [1, 2, 3, 4]
    ring.push(np.array([5, 6], dtype=np.int16))
    got = ring.take()  # wrapped: built by concatenation
    ring.push(np.array([0, 0, 0, 0], dtype=np.int16))
    assert got.tolist() == [9, 9, 5, 6]


def test_ring_clear_and_zero_capacity() -> None:
    """clear() empties; a zero-capacity ring (pre-roll off) holds nothing."""
    ring = Ring(10)
    ring.push(np.ones(5, np.int16))
    ring.clear()
    assert len(ring) == 0 and ring.take().size == 0
    off = Ring(0)
    off.push(np.ones(5, np.int16))
    assert len(off) == 0 and off.take().size == 0
