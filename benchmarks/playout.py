"""The playout buffer alone, on a fake clock: how much delay it adds and how often it underruns.

Pure and deterministic (seeded): no devices, no sockets, no sleeps. Each reply is delivered the way the simulator
delivers it (kioskd/sim/realtime_server.py): delta k is due ``k * delta_ms / speedup`` after the first one's ideal
time, plus its own delay (uniform in [0, jitter_ms], plus spike_ms on every spike_every-th delta, plus an optional
one-off stall), and never before the previous delta. A consumer calls ``fill()`` every ``block_ms`` at a random
phase, as a PortAudio callback would. Per profile it prints, over all replies:

  - added delay: first sample handed to the device minus the first delta's *ideal* arrival (so the first delta's
    own jitter is in it, as in benchmarks/turn_latency.py's client-added figure, minus the device and network);
  - underruns per reply, and the jitter estimate and target at the end.

    .venv/bin/python benchmarks/playout.py
    .venv/bin/python benchmarks/playout.py --block-ms 10 --replies 200   # other settings: see --help

"Fixed 120 ms, depth" is the previous design for comparison: a 120 ms target counted in queued audio, no clock.
Figures, never assertions.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from typing import Final

import numpy as np

from kioskd.config import AudioConfig
from kioskd.core.jitter import PlayoutBuffer
from kioskd.core.pcm import ms_to_samples

RATE_HZ: Final = 48000
DEFAULTS: Final = AudioConfig()


@dataclass(frozen=True)
class Profile:
    jitter_ms: float = 0.0
    spike_ms: float = 0.0
    spike_every: int = 0
    stall_ms: float = 0.0  # one stall before the 5th delta of every 4th reply
    speedup: float = 1.0


PROFILES: Final = {
    "jitter0": Profile(),
    "jitter20": Profile(jitter_ms=20),
    "spikes100": Profile(spike_ms=100, spike_every=5),
    "stall300": Profile(jitter_ms=10, stall_ms=300),
    "fast4x+jitter20": Profile(jitter_ms=20, speedup=4),
}


def arrivals(p: Profile, rng: random.Random, deltas: int, delta_ms: float, stalled: bool) -> list[float]:
    """Arrival times (s) of each delta, relative to the first delta's ideal time."""
    out, due = [], 0.0
    for k in range(deltas):
        extra = rng.uniform(0, p.jitter_ms) if p.jitter_ms else 0.0
        if p.spike_every and (k + 1) % p.spike_every == 0:
            extra += p.spike_ms
        if stalled and k == 4:
            extra += p.stall_ms
        due = max(due, (k * delta_ms / p.speedup + extra) / 1000)
        out.append(due)
    return out


def run(p: Profile, *, replies: int, block_ms: float, delta_ms: float, reply_ms: float, seed: int,
        clocked: bool, prebuffer_ms: float, min_ms: float, max_ms: float,
        ) -> tuple[list[float], list[int], dict[str, int | float]]:
    rng = random.Random(seed)
    buf = PlayoutBuffer(RATE_HZ, prebuffer_ms=prebuffer_ms, min_ms=min_ms, max_ms=max_ms)
    block = ms_to_samples(block_ms, RATE_HZ)
    delta = np.full(ms_to_samples(delta_ms, RATE_HZ), 3000, dtype=np.int16)
    out = np.zeros((block, 1), dtype=np.int16)
    deltas = int(reply_ms // delta_ms)
    added_ms: list[float] = []
    underruns: list[int] = []
    t0 = 0.0
    for n in range(replies):
        times = [t0 + a for a in arrivals(p, rng, deltas, delta_ms, p.stall_ms > 0 and n % 4 == 3)]
        before = int(buf.stats()["underruns"])
        tick = t0 + rng.uniform(0, block_ms / 1000)  # the callback's phase against the deltas
        k = 0
        first_s: float | None = None
        while True:
            while k < deltas and times[k] <= tick:
                buf.push(delta, f"item{n}", times[k] if clocked else None)
                k += 1
                if k == deltas:
                    buf.end_of_stream()
            drained = buf.drained
            buf.fill(out, tick if clocked else None)
            if first_s is None and out.any():
                first_s = tick
            if buf.drained > drained:
                break
            tick += block_ms / 1000
        added_ms.append(((first_s or tick) - t0) * 1000)
        underruns.append(int(buf.stats()["underruns"]) - before)
        t0 = tick + 2.0  # the visitor asks again
    return added_ms, underruns, buf.stats()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=100)
    parser.add_argument("--block-ms", type=float, default=float(DEFAULTS.block_ms), help="callback period (audio.block_ms)")
    parser.add_argument("--delta-ms", type=float, default=100.0)
    parser.add_argument("--reply-ms", type=float, default=1500.0)
    parser.add_argument("--prebuffer-ms", type=float, default=DEFAULTS.prebuffer_ms, help="audio.prebuffer_ms")
    parser.add_argument("--min-ms", type=float, default=DEFAULTS.prebuffer_min_ms, help="audio.prebuffer_min_ms")
    parser.add_argument("--max-ms", type=float, default=DEFAULTS.prebuffer_max_ms, help="audio.prebuffer_max_ms")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"playout buffer on a fake clock: {args.replies} replies of {args.reply_ms:g} ms in {args.delta_ms:g} ms "
          f"deltas, {args.block_ms:g} ms callbacks at {RATE_HZ} Hz; added delay = first sample handed out minus the "
          f"first delta's ideal arrival")
    print(f"  {'profile':18s}{'buffer':22s}{'added p50 / p95':>18s}{'underruns/reply':>17s}"
          f"{'max':>5s}{'jitter':>9s}{'target':>9s}")
    for name, profile in PROFILES.items():
        variants = {
            f"adaptive {args.prebuffer_ms:g} ms": dict(clocked=True, prebuffer_ms=args.prebuffer_ms,
                                                       min_ms=args.min_ms, max_ms=args.max_ms),
            "fixed 120 ms, depth": dict(clocked=False, prebuffer_ms=120.0, min_ms=120.0, max_ms=120.0),
        }
        for label, kw in variants.items():
            added, underruns, stats = run(profile, replies=args.replies, block_ms=args.block_ms,
                                          delta_ms=args.delta_ms, reply_ms=args.reply_ms, seed=args.seed, **kw)
            print(f"  {name:18s}{label:22s}"
                  f"{np.percentile(added, 50):>9.0f} / {np.percentile(added, 95):3.0f} ms"
                  f"{np.mean(underruns):>17.2f}{max(underruns):>5d}"
                  f"{stats['jitter_ms']:>6.1f} ms{stats['target_ms']:>6d} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
