"""The measuring rig's own floor: PortAudio output → PulseAudio null sink → monitor recording.

turn_latency.py measures release → first audible sample on the speaker sink's monitor. Part of that is the rig,
not the client: the output device queue, the null sink and the monitor's capture path. This plays short tone
bursts into the speaker PCM the way kioskd does (same block size and latency), stamps the callback that hands
each burst's first frame to PortAudio, finds the burst in the Room recording and prints handed → heard, p50/p95.
Nothing is asserted. Run it after ./scripts/setup:

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/rig_floor.py
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import numpy as np

from kioskd.sim.harness import Room


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--block-ms", type=int, default=10, help="as audio.block_ms")
    parser.add_argument("--latency-s", type=float, default=0.03, help="as audio.latency_s")
    args = parser.parse_args()
    import sounddevice as sd

    rate = 48000
    burst = (0.3 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(rate // 10) / rate)).astype(np.int16)
    lock = threading.Lock()
    state: dict[str, Any] = {"pos": None, "handed_s": None}

    def callback(out: np.ndarray, frames: int, t: Any, status: Any) -> None:
        out.fill(0)
        with lock:
            pos = state["pos"]
            if pos is None:
                return
            if pos == 0:
                state["handed_s"] = time.time()
            chunk = burst[pos:pos + frames]
            out[: chunk.size, 0] = chunk
            state["pos"] = pos + frames if pos + frames < burst.size else None

    room = Room()
    stream = sd.OutputStream(device="kiosk_speaker", channels=1, samplerate=rate, dtype="int16",
                             blocksize=rate * args.block_ms // 1000, latency=args.latency_s, callback=callback)
    stream.start()
    floors_ms: list[float] = []
    try:
        for _ in range(args.bursts):
            room.take()
            with lock:
                state["pos"], state["handed_s"] = 0, None
            time.sleep(0.5)
            times, pcm = room.take()
            handed_s = state["handed_s"]
            loud = np.nonzero(np.abs(pcm.astype(np.int32)) > 1000)[0]
            if handed_s is not None and loud.size:
                floors_ms.append((times[loud[0]] - handed_s) * 1000)
    finally:
        stream.stop()
        stream.close()
        room.close()
    print(f"rig floor (handed to PortAudio → heard on the monitor), block {args.block_ms} ms, "
          f"latency {args.latency_s} s (obtained {stream.latency:.3f} s), {len(floors_ms)} bursts:")
    if floors_ms:
        print(f"  p50 {np.percentile(floors_ms, 50):.0f} ms, p95 {np.percentile(floors_ms, 95):.0f} ms, "
              f"min {min(floors_ms):.0f} ms, max {max(floors_ms):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
