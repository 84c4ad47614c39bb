"""What the speaker's peak limiter (kioskd/core/limiter.py) costs on the event loop.

Times ``PeakLimiter.process`` on 100 ms blocks at 48 kHz (what one reply delta becomes after resampling) for
speech below the ceiling (the pass-through path: nothing to limit) and for full-scale noise (every block
limited), beside two baselines run in the same process on the same blocks: a naive per-sample Python loop doing
the same job (instant attack, linear release: no look-ahead) and a bare ``numpy.clip`` hard clipper (the floor
of any per-block numpy work, and what a limiter must beat in sound, not speed). Prints microseconds per block and
the share of one core at real time (one block per 100 ms).

    .venv/bin/python benchmarks/limiter.py [--blocks 500]

Figures, never assertions.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Final

import numpy as np

from kioskd.core.limiter import PeakLimiter
from kioskd.core.pcm import Pcm, ms_to_samples, voiced_tone

RATE_HZ: Final = 48000
BLOCK_MS: Final = 100


def naive_limiter(ceiling: int, release_samples: int) -> Callable[[Pcm], Pcm]:
    """A per-sample loop: gain drops at once to what the sample needs, then rises linearly (no look-ahead)."""
    gain = [1.0]
    rise = 1.0 / release_samples

    def process(x: Pcm) -> Pcm:
        out = np.empty_like(x)
        g = gain[0]
        for i, v in enumerate(x.tolist()):
            g = min(1.0, g + rise)
            if abs(v) * g > ceiling:
                g = ceiling / abs(v)
            out[i] = round(v * g)
        gain[0] = g
        return out

    return process


def per_block_us(process: Callable[[Pcm], object], blocks: list[Pcm]) -> float:
    process(blocks[0])  # warm up
    started = time.perf_counter()
    for block in blocks:
        process(block)
    return (time.perf_counter() - started) / len(blocks) * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=500)
    args = p.parse_args()
    n = ms_to_samples(BLOCK_MS, RATE_HZ)
    speech = np.resize(voiced_tone(140, 3000, RATE_HZ, amplitude=0.5), n * args.blocks)
    noise = np.random.default_rng(7).integers(-32768, 32768, n * args.blocks).astype(np.int16)
    signals = {"speech at -6 dBFS (nothing to limit)": [speech[i * n:(i + 1) * n] for i in range(args.blocks)],
               "full-scale noise (all limited)": [noise[i * n:(i + 1) * n] for i in range(args.blocks)]}
    ceiling = PeakLimiter(RATE_HZ).ceiling
    print(f"{args.blocks} blocks of {BLOCK_MS} ms at {RATE_HZ} Hz; µs per block (share of one core at real time)")
    print(f"{'signal':<38} {'kioskd PeakLimiter':>20} {'naive per-sample loop':>23} {'np.clip (floor)':>18}")
    for name, blocks in signals.items():
        naive_blocks = blocks[:max(1, len(blocks) // 20)]  # the loop is slow: a twentieth of the blocks
        figures = [per_block_us(PeakLimiter(RATE_HZ).process, blocks),
                   per_block_us(naive_limiter(ceiling, ms_to_samples(250, RATE_HZ)), naive_blocks),
                   per_block_us(lambda b: np.clip(b, -ceiling, ceiling), blocks)]
        cells = [f"{us:>8.0f} ({us / (BLOCK_MS * 10):.2f} %)" for us in figures]
        print(f"{name:<38} {cells[0]:>20} {cells[1]:>23} {cells[2]:>18}")


if __name__ == "__main__":
    main()
