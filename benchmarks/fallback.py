"""The fallback's figure (issue 12): release → first sound through Chat Completions, minus the endpoint's own time
to first audio (kioskd's share: committing the question as WAV, the upload, reading the stream, the prebuffer and
the speaker), beside a naive client run in the same process. Goal: kioskd's share ≤ 150 ms.

What runs: a real `kioskd run` (child process, null-sink audio) whose Realtime URL is a closed port (the link stays
down) and whose `fallback.url` is the Chat Completions simulator on loopback; visitors ask through the control
socket and the microphone sink (a 1.5 s question).

- **kioskd**: `turn.done`'s `release_to_first_sound_ms` (from the release to the first reply sample the speaker
  plays, its device queue included), and the same minus the simulator's `first_audio_s` for that request (from
  the request arriving to the first audio chunk written: the endpoint's own time, which the real service sets).
- **naive baseline**, in this process: the same question as WAV posted without streaming (`stream: false`, the
  request/response way the museum's old guide worked): from sending it to having the answer's audio, minus the
  same endpoint time to first audio (as configured: the simulator generates a non-streamed answer at the same
  pace). It waits for the whole answer to be generated before the first sample, and it has not played it yet.

Run it after ./scripts/setup (about a minute):

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/fallback.py [--turns 10] [--first-audio-ms 600]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from kioskd.core.chat import wav  # noqa: E402
from kioskd.core.pcm import tone  # noqa: E402
from kioskd.sim.chat_server import ChatSimOptions  # noqa: E402
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, SimThread, wait_for, write_wav  # noqa: E402


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kioskd_turns(tmp: Path, sim: SimThread, turns: int, question_ms: int = 1500, quiet_s: float = 3600,
                 model: str = "gpt-audio-1.5") -> list[tuple[dict[str, Any], float | None]]:
    """``turns`` questions answered by the fallback (``quiet_s`` apart makes each a new visitor): each turn's
    ``turn.done`` fields and the endpoint's first audio for it (ms)."""
    kiosk = KioskdProcess(tmp, f"realtime:\n  url: ws://127.0.0.1:{closed_port()}/v1/realtime?model=gpt-realtime\n"
                               f"fallback:\n  url: {sim.sim.url}\n  model: {model}\n"
                               f"conversation:\n  new_visitor_after_s: {min(quiet_s, 3600)}\n"
                               f"{NULL_SINK_AUDIO}  earcons: false\nlog:\n  format: json\n")
    question = write_wav(tmp / "q.wav", tone(300, question_ms, 48000, 0.4), 48000)
    out: list[tuple[dict[str, Any], float | None]] = []
    try:
        kiosk.wait_phase("idle", timeout_s=30)
        for n in range(turns):
            kiosk.ask(question)
            wait_for(lambda: len(kiosk.events("turn.done")) > n, "the turn's line", 60)
            kiosk.wait_phase("idle", timeout_s=30)
            first_audio_s = sim.call(lambda: sim.sim.streams[-1].first_audio_s)
            out.append((kiosk.events("turn.done")[n], first_audio_s * 1000 if first_audio_s else None))
            time.sleep(quiet_s + 0.5 if quiet_s < 3600 else 0.3)
    finally:
        kiosk.stop()
    return out


def latencies(turns: list[tuple[dict[str, Any], float | None]]) -> list[tuple[float, float]]:
    return [(float(line["release_to_first_sound_ms"]), first) for line, first in turns
            if line["outcome"] == "answered" and line["release_to_first_sound_ms"] and first]


async def naive_turns(url: str, turns: int, first_audio_ms: float) -> list[tuple[float, float]]:
    """The same question posted without streaming: (send → the answer's audio in hand ms, the endpoint's time to
    its first audio, which a non-streamed answer waits past until the whole answer is generated)."""
    body: dict[str, Any] = {
        "model": "gpt-audio-1.5", "modalities": ["text", "audio"], "audio": {"voice": "marin", "format": "pcm16"},
        "messages": [{"role": "system", "content": "You are the museum guide."},
                     {"role": "user", "content": [{"type": "input_audio", "input_audio": {
                         "data": base64.b64encode(wav(tone(300, 1500))).decode(), "format": "wav"}}]}]}
    out: list[tuple[float, float]] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(turns):
            t0 = time.monotonic()
            response = await client.post(url + "/chat/completions", json=body)
            audio = base64.b64decode(response.json()["choices"][0]["message"]["audio"]["data"])
            got_ms = (time.monotonic() - t0) * 1000
            assert audio
            out.append((got_ms, first_audio_ms))
    return out


def p50_p95(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))]
    return f"{statistics.median(ordered):7.0f} / {p95:7.0f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--first-audio-ms", type=float, default=600.0,
                        help="the simulated endpoint's time to first audio (default 600)")
    args = parser.parse_args()
    options = ChatSimOptions(voice="tone", reply_ms=3000, first_audio_delay_ms=args.first_audio_ms, speedup=1.0)
    museum = ChatSimOptions(voice="tone", reply_ms=8000, first_audio_delay_ms=200, speedup=8.0)
    sim, museum_sim = SimThread(options), SimThread(museum)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "latency").mkdir()
            ours = latencies(kioskd_turns(Path(tmp) / "latency", sim, args.turns))
            costs: dict[str, dict[str, list[float]]] = {}
            for model in ("gpt-audio-1.5", "gpt-audio-mini"):  # gpt-audio is priced as gpt-audio-1.5
                costs[model] = {}
                for arm, quiet in (("family", 3600.0), ("strangers", 1.0)):
                    (Path(tmp) / f"{model}-{arm}").mkdir()
                    costs[model][arm] = [float(line["cost_usd"]) for line, _ in kioskd_turns(
                        Path(tmp) / f"{model}-{arm}", museum_sim, 5, question_ms=3000, quiet_s=quiet, model=model)]
        naive = asyncio.run(naive_turns(sim.sim.url, args.turns, args.first_audio_ms))
    finally:
        sim.close()
        museum_sim.close()
    print(f"kioskd fallback figures: {len(ours)} answered turns, a 1.5 s question, a 3 s answer paced at real time,"
          f" endpoint first audio {args.first_audio_ms:g} ms; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"{'':<46}{'p50 / p95':>20}")
    print(f"  {'kioskd: release → first sound':<44}{p50_p95([a for a, _ in ours])}")
    print(f"  {'kioskd: minus the endpoint first audio':<44}{p50_p95([a - b for a, b in ours])}   goal ≤ 150 ms")
    print(f"  {'naive (stream: false): send → audio in hand':<44}{p50_p95([a for a, _ in naive])}")
    print(f"  {'naive: minus the endpoint first audio':<44}{p50_p95([a - b for a, b in naive])}")
    print("\ncost (a 3 s question, an 8 s answer; kioskd's turn.done cost_usd from the simulator's usage)")
    print(f"  {'model':<16} {'turn 1':>9} {'turn 5 (same visitor)':>22} {'5-turn visit':>13} "
          f"{'5 visitors, 1 turn each':>24}")
    for model, arms in costs.items():
        family, strangers = arms["family"], arms["strangers"]
        print(f"  {model:<16} ${family[0]:>8.4f} ${family[-1]:>21.4f} ${sum(family):>12.4f} ${sum(strangers):>23.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
