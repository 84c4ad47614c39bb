"""The lighter uplink (issue 14, item 3): what a question costs on the wire and on the CPU, pcm16 at 24 kHz beside
G.711 µ-law (``audio/pcmu``) at 8 kHz, in the same process, through kioskd's own ``RealtimeEncoder`` (the
adapter's soxr stream factory, 20 ms ``AppendAudio`` chunks, the commit's flushed tail included).

For 1 s of speech-like audio (espeak-ng when installed, else a voiced tone with harmonics): the frames' bytes on
the wire (the JSON text frames as ``RealtimeLink`` sends them: base64 audio plus the event's type and id; TLS and
WebSocket framing add a few bytes a frame, alike for both), the raw audio bytes inside them, and the encoder's
CPU µs per 20 ms chunk (encode alone, and with ``json.dumps`` as the link does). Also, as a sanity figure for what
µ-law itself adds, the signal-to-noise ratio of the round trip (decoded, resampled back to 24 kHz) against the
same audio band-limited to 4 kHz without µ-law: what the companding costs, not what the model understands.

    .venv/bin/python benchmarks/uplink.py [--chunks 5000]

Figures, never assertions. Pure: no network, no audio devices.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from typing import Final

import numpy as np
import soxr  # type: ignore[import-untyped]

from kioskd.adapters.resample import uplink_downsampler
from kioskd.core import events as ev
from kioskd.core.g711 import ulaw_decode
from kioskd.core.pcm import API_RATE_HZ, Pcm, ms_to_samples, voiced_tone
from kioskd.core.realtime import RealtimeEncoder
from kioskd.core.settings import InputFormat
from kioskd.sim.voice import espeak

CHUNK: Final = ms_to_samples(20)


def speech_like() -> tuple[str, Pcm]:
    spoken = espeak("Where was this vase found, and how old is it? Tell me about the painter.")
    if spoken is not None and spoken.size >= API_RATE_HZ:
        start = int(np.argmax(np.abs(spoken) > 300))
        return "espeak-ng", spoken[start:start + API_RATE_HZ]
    return "voiced tone 140 Hz", voiced_tone(140, 1000, API_RATE_HZ, amplitude=0.5)


def question_frames(fmt: InputFormat, pcm: Pcm) -> list[dict[str, object]]:
    encoder = RealtimeEncoder(downsampler=uplink_downsampler)
    encoder.encode(ev.ConfigureSession("cfg_1", "marin", "", input_format=fmt))
    frames = encoder.encode(ev.StartQuestion())
    for start in range(0, pcm.size, CHUNK):
        frames += encoder.encode(ev.AppendAudio(pcm[start:start + CHUNK]))
    return frames + encoder.encode(ev.Commit())


def per_chunk_us(fmt: InputFormat, pcm: Pcm, chunks: int, dumps: bool) -> float:
    encoder = RealtimeEncoder(downsampler=uplink_downsampler)
    encoder.encode(ev.ConfigureSession("cfg_1", "marin", "", input_format=fmt))
    blocks = [pcm[start:start + CHUNK] for start in range(0, pcm.size - CHUNK + 1, CHUNK)]
    encoder.encode(ev.StartQuestion())
    for block in blocks[:10]:  # warm up
        encoder.encode(ev.AppendAudio(block))
    started = time.process_time()
    for i in range(chunks):
        if i % len(blocks) == 0:
            encoder.encode(ev.StartQuestion())  # a fresh question every second, as at the kiosk
        for event in encoder.encode(ev.AppendAudio(blocks[i % len(blocks)])):
            if dumps:
                json.dumps(event)
    return (time.process_time() - started) / chunks * 1e6


def snr_db(reference: Pcm, heard: Pcm) -> float:
    n = min(reference.size, heard.size)
    ref, out = reference[:n].astype(np.float64), heard[:n].astype(np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - out) ** 2), 1e-9)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", type=int, default=5000)
    args = p.parse_args()
    source, pcm = speech_like()
    print(f"1 s of speech-like audio ({source}), sent as 20 ms AppendAudio chunks plus the commit")
    print(f"{'format':<22} {'wire B/s':>10} {'audio B/s':>10} {'frames':>7} {'µs/chunk':>9} {'+json':>7} "
          f"{'CPU % at real time':>19}")
    wire: dict[str, int] = {}
    formats: tuple[tuple[InputFormat, str], ...] = (("pcm16", "pcm16 24 kHz"), ("pcmu", "pcmu 8 kHz (G.711 µ)"))
    for fmt, label in formats:
        frames = question_frames(fmt, pcm)
        wire[fmt] = sum(len(json.dumps(f)) for f in frames)
        audio = sum(len(base64.b64decode(str(f["audio"]))) for f in frames if "audio" in f)
        us = per_chunk_us(fmt, pcm, args.chunks, dumps=False)
        us_json = per_chunk_us(fmt, pcm, args.chunks, dumps=True)
        print(f"{label:<22} {wire[fmt]:>10,} {audio:>10,} {len(frames):>7} {us:>9.1f} {us_json:>7.1f} "
              f"{us_json / 200:>18.2f}%")
    print(f"pcmu / pcm16 on the wire: {wire['pcmu'] / wire['pcm16']:.3f} (saves {wire['pcm16'] - wire['pcmu']:,} B/s)")

    frames = question_frames("pcmu", pcm)
    raw = b"".join(base64.b64decode(str(f["audio"])) for f in frames if "audio" in f)
    heard = soxr.resample(ulaw_decode(raw), 8000, API_RATE_HZ)
    band = soxr.resample(soxr.resample(pcm, API_RATE_HZ, 8000), 8000, API_RATE_HZ)
    print(f"µ-law round trip vs the same audio band-limited to 4 kHz: SNR {snr_db(band, heard):.1f} dB; "
          f"band-limiting itself vs the 24 kHz original: SNR {snr_db(pcm, band):.1f} dB")


if __name__ == "__main__":
    main()
