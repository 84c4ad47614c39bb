"""The measuring rig's own floor: what PortAudio → ALSA `pulse` → null sink costs before kioskd does anything.

Two figures, for the block size and latency kioskd uses (`--block-ms`, `--latency-s`):

* **latency** (default mode): plays short tone bursts into the speaker PCM, stamps the callback that hands each
  burst's first frame to PortAudio, finds the burst in the Room recording of the sink's monitor and prints
  handed → heard, p50/p95: the device queue, which a real speaker has too.
* **CPU** (`--cpu-s N`): opens the speaker and the microphone PCMs as kioskd does (the microphone in 20 ms blocks)
  with callbacks that do nothing, and prints the process's CPU % of one core over N seconds (after 2 s of
  warm-up) and per thread. This is what any client pays for two open streams through the `pulse` plugin on this
  machine; turn_latency.py subtracts it to show kioskd's own share.

Nothing is asserted. Run it after ./scripts/setup:

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/rig_floor.py [--cpu-s 5]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any, Final

import numpy as np

from kioskd.adapters.audio import MIC_BLOCK_MS
from kioskd.config import AudioConfig
from kioskd.sim.harness import Room

RATE_HZ: Final = 48000
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def stat_ticks(path: str) -> int:
    """utime + stime, in clock ticks, from a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file."""
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def thread_ticks() -> dict[str, int]:
    """utime + stime in clock ticks of each of this process's threads, keyed "tid name"."""
    out: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        out[f"{tid} {name}"] = stat_ticks(f"/proc/self/task/{tid}/stat")
    return out


def cpu_floor(block_ms: int, latency_s: float, seconds: float) -> int:
    import sounddevice as sd  # type: ignore[import-untyped]

    def silent(out: np.ndarray, frames: int, t: Any, status: Any) -> None:
        out.fill(0)

    def ignore(indata: np.ndarray, frames: int, t: Any, status: Any) -> None:
        pass

    speaker = sd.OutputStream(device="kiosk_speaker", channels=1, samplerate=RATE_HZ, dtype="int16",
                              blocksize=RATE_HZ * block_ms // 1000, latency=latency_s, callback=silent)
    mic = sd.InputStream(device="kiosk_microphone", channels=1, samplerate=RATE_HZ, dtype="int16",
                         blocksize=RATE_HZ * MIC_BLOCK_MS // 1000, latency=latency_s, callback=ignore)
    with speaker, mic:
        time.sleep(2.0)
        before, started = thread_ticks(), time.monotonic()
        time.sleep(seconds)
        after, wall_s = thread_ticks(), time.monotonic() - started
    total = sum(after.values()) - sum(before.values())
    busy = {name: ticks - before.get(name, 0) for name, ticks in after.items() if ticks - before.get(name, 0)}
    print(f"two open streams with empty callbacks, speaker block {block_ms} ms, latency {latency_s} s:")
    print(f"cpu_pct {100 * total / CLK_TCK / wall_s:.2f}")
    print("  per thread (ticks of 1/%d s): %s" % (CLK_TCK, ", ".join(f"{k}: {v}" for k, v in busy.items())))
    return 0


def latency_floor(block_ms: int, latency_s: float, bursts: int) -> int:
    import sounddevice as sd

    burst = (0.3 * 32767 * np.sin(2 * np.pi * 1000 * np.arange(RATE_HZ // 10) / RATE_HZ)).astype(np.int16)
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
    stream = sd.OutputStream(device="kiosk_speaker", channels=1, samplerate=RATE_HZ, dtype="int16",
                             blocksize=RATE_HZ * block_ms // 1000, latency=latency_s, callback=callback)
    stream.start()
    floors_ms: list[float] = []
    try:
        time.sleep(1.0)  # the monitor recording settles (an idle null sink renders ahead: reference §8)
        for _ in range(bursts):
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
    print(f"rig floor (handed to PortAudio → heard on the monitor), block {block_ms} ms, "
          f"latency {latency_s} s (obtained {stream.latency:.3f} s), {len(floors_ms)} bursts:")
    if floors_ms:
        print(f"  p50 {np.percentile(floors_ms, 50):.0f} ms, p95 {np.percentile(floors_ms, 95):.0f} ms, "
              f"min {min(floors_ms):.0f} ms, max {max(floors_ms):.0f} ms")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bursts", type=int, default=20)
    parser.add_argument("--block-ms", type=int, default=AudioConfig().block_ms, help="as audio.block_ms")
    parser.add_argument("--latency-s", type=float, default=AudioConfig().latency_s, help="as audio.latency_s")
    parser.add_argument("--cpu-s", type=float, default=0.0, help="measure CPU with open streams for this long")
    args = parser.parse_args()
    if args.cpu_s > 0:
        return cpu_floor(args.block_ms, args.latency_s, args.cpu_s)
    return latency_floor(args.block_ms, args.latency_s, args.bursts)


if __name__ == "__main__":
    raise SystemExit(main())
