"""Release → first audible sample, measured where the visitor is: on the speaker sink's monitor.

Runs N push-to-talk turns of a real `kioskd run` against the simulator with a known first-delta delay, records
the speaker null sink's monitor, and prints per turn and as p50 / p95:
  - release → first audible sample (ms),
  - the client-added part: that minus the simulator's first-delta delay,
  - underruns per reply: gaps > 10 ms inside the reply heard in the recording, and the playout buffer's own count.
Figures are printed, nothing is asserted. Run it after ./scripts/setup:

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/turn_latency.py --turns 10

Null sinks deliver bursty audio and render ahead (reference pi-audio.md §8), so the absolute figures carry a few
tens of ms of measurement noise; compare runs made on the same machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from kioskd.core.pcm import tone
from kioskd.sim.harness import KioskdProcess, Room, SimThread, write_wav
from kioskd.sim.realtime_server import SimOptions

LOUD = 1000  # int16: the reply tone peaks near 10000; the idle sink is exact zeros
GAP_MS = 10


def first_sound_s(times: np.ndarray, pcm: np.ndarray, after_s: float) -> float | None:
    loud = np.nonzero((times > after_s) & (np.abs(pcm.astype(np.int32)) > LOUD))[0]
    return float(times[loud[0]]) if loud.size else None


def gaps_in_reply(pcm: np.ndarray, rate_hz: int) -> int:
    """Silent stretches longer than GAP_MS between the first and the last audible sample."""
    loud = np.nonzero(np.abs(pcm.astype(np.int32)) > LOUD)[0]
    if loud.size < 2:
        return 0
    # a tone crosses zero twice a period: judge silence over windows of 2 ms
    window = rate_hz // 500
    body = np.abs(pcm[loud[0]:loud[-1]].astype(np.int32))
    n = body.size // window
    quiet = body[: n * window].reshape(n, window).max(axis=1) < LOUD // 4
    gaps, run = 0, 0
    for q in quiet:
        run = run + 1 if q else 0
        if run * 2 == GAP_MS + 2:  # count each gap once, when it passes GAP_MS
            gaps += 1
    return gaps


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--delay-ms", type=float, default=200.0, help="simulator's first-delta delay")
    parser.add_argument("--jitter-ms", type=float, default=20.0, help="simulator's per-delta jitter")
    parser.add_argument("--reply-ms", type=int, default=1500)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kioskd-bench-"))
    question = write_wav(work / "q.wav", tone(300, 400, 48000, 0.4), 48000)
    sim = SimThread(SimOptions(voice="tone", tone_hz=1000, reply_ms=args.reply_ms,
                               first_delta_delay_ms=args.delay_ms, jitter_ms=args.jitter_ms, speedup=4.0))
    room = Room()
    kiosk = KioskdProcess(work, f"realtime:\n  url: {sim.sim.url}\n"
                                "audio:\n  input_device: kiosk_microphone\n  output_device: kiosk_speaker\n"
                                "  earcons: false\nlog:\n  format: json\n")
    latencies_ms: list[float] = []
    heard_gaps: list[int] = []
    buffer_underruns: list[int] = []
    try:
        kiosk.wait_phase("idle")
        print(f"kioskd turn latency: {args.turns} turns, simulator first-delta delay {args.delay_ms:g} ms, "
              f"jitter {args.jitter_ms:g} ms, reply {args.reply_ms} ms\n")
        print(" turn  release→sound  client-added  gaps>10ms  buffer underruns")
        for i in range(args.turns):
            released_s = kiosk.ask(question, room)
            kiosk.wait_phase("idle")
            time.sleep(0.3)
            times, pcm = room.take()
            sound_s = first_sound_s(times, pcm, released_s)
            done = kiosk.events("turn.done")
            underruns = int(done[-1].get("underruns") or 0) if len(done) == i + 1 else -1
            if sound_s is None:
                print(f" {i + 1:4d}  no sound heard")
                continue
            latency_ms = (sound_s - released_s) * 1000
            gaps = gaps_in_reply(pcm[times > released_s], Room.RATE_HZ)
            latencies_ms.append(latency_ms)
            heard_gaps.append(gaps)
            buffer_underruns.append(underruns)
            print(f" {i + 1:4d}  {latency_ms:10.0f} ms  {latency_ms - args.delay_ms:8.0f} ms  {gaps:9d}  {underruns:16d}")
    finally:
        kiosk.stop()
        room.close()
        sim.close()
    if latencies_ms:
        added = [v - args.delay_ms for v in latencies_ms]
        print(f"\nrelease → first audible sample: p50 {pct(latencies_ms, 50):.0f} ms, p95 {pct(latencies_ms, 95):.0f} ms")
        print(f"client-added (minus the {args.delay_ms:g} ms first-delta delay): p50 {pct(added, 50):.0f} ms, "
              f"p95 {pct(added, 95):.0f} ms")
        print(f"gaps > {GAP_MS} ms heard per reply: mean {statistics.mean(heard_gaps):.2f}; "
              f"playout-buffer underruns per reply: mean {statistics.mean(buffer_underruns):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
