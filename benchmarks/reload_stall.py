"""How long `systemctl reload` holds the event loop: kioskd's reload (read and parse in a thread) beside the naive
one (the same read and parse on the loop, as kioskd did before issue 10), for configs of growing size up to the
limit kioskd accepts (``config.CONFIG_MAX_BYTES``).

While each reload runs, a ticker on the loop wakes every 5 ms (as the 5 ms speaker callbacks and the WebSocket
reader need the loop to); the figure is the largest lateness of a tick, i.e. the longest the loop stood still.
The kioskd row drives the daemon's own ``Daemon._reload`` (signal → thread → apply); the naive row parses the file on the loop with no size check. A file over the limit is refused by its size before a byte is parsed.

Nothing is asserted. Run it after ./scripts/setup (a few seconds):

    .venv/bin/python benchmarks/reload_stall.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kioskd import checks  # noqa: E402
from kioskd import config as config_mod  # noqa: E402
from kioskd import log as log_mod  # noqa: E402
from kioskd.daemon import GIL_SWITCH_S, Daemon  # noqa: E402

TICK_S = 0.005


def config_text(size_bytes: int) -> str:
    """A valid config of about ``size_bytes``: long instructions, then notes in comments and keys in a mapping of
    the simulator section, as a museum's annotated file might grow."""
    instructions = ("The exhibit is a Roman mosaic from the apse of a villa. " * 600)[:28_000]
    parts = ["realtime:", f'  instructions: "{instructions}"', "turn:", "  reply_cap_s: 90"]
    size, i = sum(len(p) + 1 for p in parts), 0
    while size < size_bytes:
        line = f"# note {i}: the floor was relaid in the 1920s after the spring flood; see the archive, box {i % 97}"
        parts.append(line)
        size, i = size + len(line) + 1, i + 1
    return "\n".join(parts) + "\n"


async def worst_lateness(work: Callable[[], Awaitable[None]]) -> float:
    loop = asyncio.get_running_loop()
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            due = loop.time() + TICK_S
            await asyncio.sleep(TICK_S)
            worst = max(worst, loop.time() - due)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    await work()
    await asyncio.sleep(0.02)
    done = True
    await task
    return worst


async def measure(path: Path) -> tuple[float, float]:
    daemon = Daemon(checks.load(None), config_path=str(path))

    async def kioskd() -> None:
        await daemon._reload()

    async def naive() -> None:  # no size check: parse whatever the file holds
        config_mod.parse(path.read_text(), str(path))

    return await worst_lateness(kioskd), await worst_lateness(naive)


def main() -> None:
    log_mod.configure("error", "console")
    sys.setswitchinterval(GIL_SWITCH_S)  # as `kioskd run` sets it: a busy thread yields the GIL within 1 ms
    sizes = [16 * 1024, 64 * 1024, config_mod.CONFIG_MAX_BYTES - 4096, 5 * 1024 * 1024]
    print(f"event loop stood still during a reload (largest lateness of a {TICK_S * 1000:.0f} ms tick)")
    print(f"{'config size':>14}  {'kioskd (thread)':>16}  {'naive (on loop)':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            path = Path(tmp) / "kioskd.yaml"
            path.write_text(config_text(size))
            runs = [asyncio.run(measure(path)) for _ in range(3)]
            ours, naive = min(r[0] for r in runs), min(r[1] for r in runs)
            note = "  (over the limit: kioskd refuses it unread)" if size > config_mod.CONFIG_MAX_BYTES else ""
            print(f"{path.stat().st_size:>12,} B  {ours * 1000:>13.1f} ms  {naive * 1000:>13.1f} ms{note}")


if __name__ == "__main__":
    main()
