"""What Prometheus metrics cost the audio path (issue 13): pure, in-process, no audio device, seconds.

1. **The sink on the event loop**: µs per ``note()`` for ``turn.done`` (every metric of a turn: the counter by
   outcome, the histogram, underruns, cost, five token kinds) and for ``turn.phase``, for ``PrometheusSink`` beside
   a no-op sink (the floor: the call itself) and ``StatusSink`` (the status counters kioskd already keeps).
2. **A scrape while the kiosk runs**: 100 scrapes of a registry filled as on a kiosk with four arms, one every
   20 ms (a Prometheus scrapes every 15 s or so: this is some 25 minutes of scrapes in two seconds). Meanwhile an
   asyncio ticker wakes every 5 ms on the loop (the loop the WebSocket reader and the executor need) and a plain
   thread wakes every 5 ms (standing in for PortAudio's callback thread, which must get the GIL to run the 5 ms
   output callback); the figures are how late they woke, p50 / p99 / worst, each the median over five runs.
   Three rows: no scrape (the floor); kioskd (the scrapes come from a child process over HTTP, curl where there
   is one, as a Prometheus would, and are rendered in the listener's thread); and the naive design, the same
   rendering done on the event loop (as a listener written on the loop would). ``sys.setswitchinterval`` is
   kioskd's 1 ms.
3. **The same, ten times the rendering work**: the registry padded to about what rendering the real one costs on
   a Pi's slower cores (roughly ten times this machine's). The naive design holds the loop for each whole render;
   the listener's thread holds the GIL a switch interval at a time.

Nothing is asserted. Run after ./scripts/setup:

    .venv/bin/python benchmarks/metrics_overhead.py
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

from kioskd.core.events import Note  # noqa: E402
from kioskd.core.settings import ModelArm, TurnSettings  # noqa: E402
from kioskd.daemon import GIL_SWITCH_S  # noqa: E402
from kioskd.metrics import StatusSink  # noqa: E402
from kioskd.prom import MetricsServer, PrometheusSink  # noqa: E402

TICK_S = 0.005
SCRAPES = 100
SCRAPE_EVERY_S = 0.02
NOTES = 20_000
RUNS = 5

TURN_DONE = Note("turn.done", "info", {
    "turn": 7, "outcome": "answered", "held_ms": 2100, "release_to_first_delta_ms": 290,
    "release_to_first_sound_ms": 335, "reply_ms": 5200, "reply_received_ms": 5200, "underruns": 1,
    "playout": {"target_ms": 30, "depth_ms": 28, "jitter_ms": 6}, "responses": 1,
    "usage": {"total_tokens": 1500, "input_tokens": 1200, "output_tokens": 300,
              "input_token_details": {"text_tokens": 1000, "audio_tokens": 200, "cached_tokens": 900,
                                      "cached_tokens_details": {"text_tokens": 800, "audio_tokens": 100}},
              "output_token_details": {"text_tokens": 60, "audio_tokens": 240}},
    "cost_usd": 0.0123, "backend": "realtime", "model": "gpt-realtime", "route": "main",
})
TURN_PHASE = Note("turn.phase", "info", {"from": "waiting", "to": "speaking"})


class NoopSink:
    def note(self, note: Note) -> None:
        pass


def us_per_note(sink: object, note: Note) -> float:
    """The best of five runs of ``NOTES`` calls, in µs per call."""
    call = sink.note  # type: ignore[attr-defined]
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(NOTES):
            call(note)
        best = min(best, (time.perf_counter_ns() - start) / NOTES / 1000)
    return best


def filled_sink() -> PrometheusSink:
    """A registry as on a kiosk with the main model, its degrade, the fallback and an A/B arm, all in use."""
    sink = PrometheusSink()
    sink.expect_arms(TurnSettings(fallback=ModelArm("chat", "gpt-audio-1.5", None),
                                  degrade=ModelArm("realtime", "gpt-realtime-mini", None),
                                  ab_arm=ModelArm("realtime", "gpt-realtime-1.5", None)))
    for backend, model in (("realtime", "gpt-realtime"), ("realtime", "gpt-realtime-mini"),
                           ("chat", "gpt-audio-1.5"), ("realtime", "gpt-realtime-1.5")):
        for ms in (250, 400, 900, 2500):
            sink.note(Note("turn.done", "info", {**TURN_DONE.fields, "backend": backend, "model": model,
                                                 "release_to_first_sound_ms": ms}))
    for error_type in ("AuthError", "ServerRejected", "HandshakeError"):
        sink.note(Note("ws.fault", "error", {"error_type": error_type}))
    return sink


class Padding(Collector):
    """``n`` extra gauge series: ten times the rendering work without a slower machine."""

    def __init__(self, n: int) -> None:
        self._n = n

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("bench_padding", "rendering work", labels=["n"])
        for i in range(self._n):
            family.add_metric([str(i)], float(i))
        yield family


class Lateness:
    """How late a 5 ms ticker on the loop and a 5 ms sleeper thread wake, while ``work`` runs."""

    def __init__(self) -> None:
        self.loop_s: list[float] = []
        self.thread_s: list[float] = []

    async def during(self, work: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        done = threading.Event()

        def sleeper() -> None:
            while not done.is_set():
                due = time.perf_counter() + TICK_S
                time.sleep(TICK_S)
                self.thread_s.append(time.perf_counter() - due)

        async def ticker() -> None:
            while not done.is_set():
                due = loop.time() + TICK_S
                await asyncio.sleep(TICK_S)
                self.loop_s.append(loop.time() - due)

        thread = threading.Thread(target=sleeper, daemon=True)
        thread.start()
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.1)
        self.loop_s.clear()
        self.thread_s.clear()
        await work()
        done.set()
        await task
        thread.join()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


SCRAPER = """
import json, sys, time, httpx
url, n, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
times, size = [], 0
with httpx.Client() as client:
    for _ in range(n):
        t = time.perf_counter()
        r = client.get(url)
        times.append(time.perf_counter() - t)
        size = len(r.content)
        time.sleep(every)
print(json.dumps({"times": times, "bytes": size}))
"""


async def no_scrapes() -> None:
    await asyncio.sleep(SCRAPES * SCRAPE_EVERY_S)


def main() -> None:
    sys.setswitchinterval(GIL_SWITCH_S)  # as `kioskd run` sets it: a busy thread yields the GIL within 1 ms

    print(f"1. note() on the event loop, µs per call (best of 5 x {NOTES:,})")
    print(f"{'sink':>16}  {'turn.done':>10}  {'turn.phase':>10}")
    for name, sink in (("no-op (floor)", NoopSink()), ("StatusSink", StatusSink()),
                       ("PrometheusSink", PrometheusSink())):
        print(f"{name:>16}  {us_per_note(sink, TURN_DONE):>10.2f}  {us_per_note(sink, TURN_PHASE):>10.2f}")

    sink = filled_sink()
    scrapes(sink.registry, "2.", "")
    sink.registry.register(Padding(1500))
    scrapes(sink.registry, "3.", ", padded to ten times the rendering work (a Pi Zero 2 W's share)")


def scrapes(registry: CollectorRegistry, number: str, what: str) -> None:
    renders = []
    for _ in range(50):
        start = time.perf_counter()
        body = generate_latest(registry)
        renders.append(time.perf_counter() - start)
    lines = body.count(b"\n")
    print(f"\n{number} {SCRAPES} scrapes, one every {SCRAPE_EVERY_S * 1000:.0f} ms, of a filled registry{what} "
          f"({len(body):,} bytes, {lines:,} lines; rendering it takes "
          f"{statistics.median(renders) * 1000:.2f} ms, median)")
    server = MetricsServer("127.0.0.1", 0, registry)
    scraped: dict[str, object] = {}

    async def kioskd() -> None:
        url = f"http://127.0.0.1:{server.port}/metrics"
        if shutil.which("curl"):  # a scraper in C: its own CPU hardly competes with kioskd's for the 2 cores
            proc = await asyncio.create_subprocess_exec(
                "curl", "-s", "--rate", f"{round(1 / SCRAPE_EVERY_S)}/s", "-w", "%{time_total} %{size_download}\n",
                *(["-o", "/dev/null", url] * SCRAPES), stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            rows = [line.split() for line in out.decode().splitlines()]
            scraped.update({"times": [float(t) for t, _ in rows], "bytes": int(rows[-1][1]), "by": "curl"})
            return
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SCRAPER, url, str(SCRAPES), str(SCRAPE_EVERY_S), stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        scraped.update(json.loads(out), by="httpx")

    async def naive() -> None:  # the same rendering on the loop, as a listener written on the loop would
        for _ in range(SCRAPES):
            generate_latest(registry)
            await asyncio.sleep(SCRAPE_EVERY_S)

    print(f"{'':>30}  {'event loop late (ms)':>22}  {'5 ms thread late (ms)':>22}")
    print(f"{'':>30}  {'p50':>6} {'p99':>7} {'worst':>7}  {'p50':>6} {'p99':>7} {'worst':>7}")
    try:
        for name, work in (("no scrapes (floor)", no_scrapes), ("kioskd (listener's thread)", kioskd),
                           ("naive (rendered on the loop)", naive)):
            runs = []
            for _ in range(RUNS):
                late = Lateness()
                asyncio.run(late.during(work))
                runs.append(late)
            # each figure is the median over the runs: this machine is shared, and one run can catch another
            # process's burst
            figures = [statistics.median(f(r) for r in runs) for f in (
                lambda r: pct(r.loop_s, 0.5), lambda r: pct(r.loop_s, 0.99), lambda r: max(r.loop_s) * 1000,
                lambda r: pct(r.thread_s, 0.5), lambda r: pct(r.thread_s, 0.99), lambda r: max(r.thread_s) * 1000)]
            print(f"{name:>30}  {figures[0]:>6.2f} {figures[1]:>7.2f} {figures[2]:>7.2f}  {figures[3]:>6.2f} "
                  f"{figures[4]:>7.2f} {figures[5]:>7.2f}")
    finally:
        server.close()
    times = scraped.get("times")
    if isinstance(times, list) and times:
        print(f"\nscrape round trip over HTTP ({scraped.get('by')}'s view, last run): p50 {pct(times, 0.5):.2f} ms, "
              f"p99 {pct(times, 0.99):.2f} ms; {scraped.get('bytes')} bytes; refused: {server.refused}")


if __name__ == "__main__":
    main()
