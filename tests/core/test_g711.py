"""G.711 µ-law: the encoder against the standard's reference values, the round trip within its quantisation
step, and the pcmu uplink in the encoder (session.update, 8 kHz µ-law appends, the tail flushed at commit)."""

from __future__ import annotations

import base64
import json
import warnings

import numpy as np
import pytest
import soxr  # type: ignore[import-untyped]

from kioskd.core import events as ev
from kioskd.core.g711 import BIAS, CLIP, ulaw_decode, ulaw_encode
from kioskd.core.pcm import tone
from kioskd.core.realtime import RealtimeEncoder
from tests.realtime_schema import validate_client

#: linear sample → µ-law byte, as the reference C implementation (Sun g711.c linear2ulaw: bias 0x84, clip 32635)
#: gives them: zero and full scale at both signs, segment edges, and a few ordinary values. CPython 3.11's
#: audioop.lin2ulaw agrees on all of them but -1 (it shifts negatives to 14 bits first, rounding them down:
#: 0x7E); see test_audioop_agrees_but_at_negative_step_edges
REFERENCE = {
    0: 0xFF, 1: 0xFF, -1: 0x7F, 2: 0xFF, 7: 0xFE, 8: 0xFE, -8: 0x7E, 100: 0xF2, -100: 0x72, 1000: 0xCE,
    -1000: 0x4E, 4000: 0xAF, 8158: 0x9F, 8159: 0x9F, 16000: 0x90, 32124: 0x80, 32635: 0x80, 32767: 0x80, -32767: 0x00,
    -32768: 0x00, 123: 0xF0, 255: 0xE7, 256: 0xE7, 1024: 0xCD,
}

#: µ-law byte → linear sample (the decoder's table: each step's middle)
DECODED = {0xFF: 0, 0x7F: 0, 0x80: 32124, 0x00: -32124, 0xF0: 120, 0xFE: 8, 0xE0: 372, 0xCE: 988, 0x4E: -988,
           0xA0: 7932, 0x81: 31100, 0x01: -31100}


def test_the_encoder_matches_the_g711_reference_values() -> None:
    pcm = np.array(list(REFERENCE), dtype=np.int16)
    assert [int(b) for b in ulaw_encode(pcm)] == list(REFERENCE.values())


def test_the_decoder_matches_the_g711_table() -> None:
    assert [int(s) for s in ulaw_decode(bytes(DECODED))] == list(DECODED.values())


def test_every_byte_decodes_and_re_encodes_to_itself() -> None:
    """The decoder's 256 values are the encoder's fixed points (0x7F, negative zero, encodes as 0xFF)."""
    every = bytes(range(256))
    again = ulaw_encode(ulaw_decode(every)).tobytes()
    assert [a for a, b in zip(every, again) if a != b] == [0x7F]


def test_the_round_trip_is_within_half_a_quantisation_step() -> None:
    """Every 16-bit sample comes back within half its segment's step (step = 8 << segment), clipping aside."""
    x = np.arange(-32768, 32768, dtype=np.int32)
    back = ulaw_decode(ulaw_encode(x.astype(np.int16))).astype(np.int32)
    magnitude = np.minimum(np.abs(x), CLIP)
    segment = np.floor(np.log2(np.maximum((magnitude + BIAS) >> 7, 1))).astype(np.int32)
    half_step = 4 << segment
    err = np.abs(np.sign(x) * magnitude - back)
    assert (err <= half_step).all()
    assert np.abs(x - back).max() <= 644  # full scale: clipped at 32635, decoded 32124


def pcmu_encoder() -> RealtimeEncoder:
    encoder = RealtimeEncoder(downsampler=lambda: soxr.ResampleStream(24000, 8000, 1, dtype="int16"))
    encoder.encode(ev.ConfigureSession("cfg_1", "marin", "", input_format="pcmu"))
    return encoder


def test_a_pcmu_session_update_declares_audio_pcmu_and_validates() -> None:
    (event,) = RealtimeEncoder().encode(ev.ConfigureSession("cfg_1", "marin", "Hi.", input_format="pcmu"))
    assert event["session"]["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert event["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    validate_client(json.loads(json.dumps(event)))


def test_pcmu_appends_are_8_khz_ulaw_and_commit_flushes_the_tail() -> None:
    """A question in 20 ms chunks goes out as µ-law at 8 kHz, one byte a sample; the resampler's tail is sent
    before the commit, so the server holds exactly a third of the samples; a new question starts afresh."""
    encoder = pcmu_encoder()
    question = tone(300, 1000, amplitude=0.5)
    for _ in range(2):
        events = encoder.encode(ev.StartQuestion())
        for start in range(0, question.size, 480):
            events += encoder.encode(ev.AppendAudio(question[start:start + 480]))
        events += encoder.encode(ev.Commit())
        for e in events:
            validate_client(json.loads(json.dumps(e)))
        assert [e["type"] for e in events][-1] == "input_audio_buffer.commit"
        raw = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "input_audio_buffer.append")
        assert len(raw) == question.size // 3
        heard = soxr.resample(ulaw_decode(raw), 8000, 24000)
        ref = question.astype(np.float64)
        # the same tone comes back: correlation with the original, no clicks at the 20 ms boundaries
        assert np.corrcoef(ref[2400:-2400], heard[2400:-2400].astype(np.float64))[0, 1] > 0.99


def test_pcm16_is_unchanged_and_needs_no_downsampler() -> None:
    encoder = RealtimeEncoder()
    encoder.encode(ev.ConfigureSession("cfg_1", "marin", ""))
    (append,) = encoder.encode(ev.AppendAudio(tone(440, 20)))
    assert len(base64.b64decode(append["audio"])) == 960
    assert [e["type"] for e in encoder.encode(ev.Commit())] == ["input_audio_buffer.commit"]


def test_pcmu_without_a_downsampler_says_so() -> None:
    encoder = RealtimeEncoder()
    encoder.encode(ev.ConfigureSession("cfg_1", "marin", "", input_format="pcmu"))
    with pytest.raises(ValueError, match="downsampler"):
        encoder.encode(ev.AppendAudio(tone(440, 20)))


def test_audioop_agrees_but_at_negative_step_edges() -> None:
    """Where the interpreter still has audioop (removed in 3.13), it is an independent oracle: every positive
    sample encodes alike, all 256 bytes decode alike, and a negative sample differs only at a step's edge (audioop
    floors negatives when it drops to 14 bits), by one code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    x = np.arange(-32768, 32768, dtype=np.int16)
    theirs = np.frombuffer(audioop.lin2ulaw(x.astype("<i2").tobytes(), 2), dtype=np.uint8).astype(np.int32)
    ours = ulaw_encode(x).astype(np.int32)
    differ = theirs != ours
    assert not differ[x >= 0].any()
    assert differ.sum() < 400 and (np.abs(theirs - ours)[differ] == 1).all()
    decoded = np.frombuffer(audioop.ulaw2lin(bytes(range(256)), 2), dtype="<i2")
    assert np.array_equal(decoded, ulaw_decode(bytes(range(256))))
