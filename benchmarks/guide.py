"""The museum guide's figures (issue 11): the tool round trip, a tool turn's latency next to a plain turn's, and
the input tokens per turn over five visitors, each beside its naive baseline run in the same process.

What runs: a real `kioskd run` (child process, null-sink audio, the example exhibit's knowledge file) against the
simulator on loopback, whose model calls the knowledge lookup for every new question; visitors ask through the
control socket and the microphone sink.

- **Tool round trip**: from the simulator sending the calling response's ``response.done`` (the first moment
  the protocol lets a client answer) to it receiving the ``response.create`` that follows the output, measured
  on the simulator's clock (kioskd's local lookup, the output and the request). Goal ≤ 20 ms for local tools.
- **Release → first sound**, kioskd's own ``turn.done`` figure: a plain turn (no tools declared), a tool turn
  whose model says nothing before the call (the visitor waits for the lookup and the second response), and one
  with a 700 ms preamble ("Let me check": the first sound comes as fast as a plain turn's).
- **Cost** (issue 12): a museum turn (3 s question, 8 s answer) priced by kioskd on gpt-realtime and
  gpt-realtime-mini: turn 1, turn 5 of one visitor (the conversation re-billed), a five-turn visit, and five
  visitors of one turn each (a fresh conversation each). The simulator's usage is an estimate (1 token per 100 ms
  in, per 50 ms out, per 4 characters); no cached prefix is modelled.
- **Input tokens per turn** over five visitors a quiet apart: kioskd (the conversation emptied between visitors)
  beside the naive arm, the same run with the reset off (one conversation for every visitor, as before). The
  simulator bills the conversation as it stands at each ``response.create``.

Run it after ./scripts/setup (about three minutes):

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/guide.py [--turns 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kioskd.core.pcm import tone  # noqa: E402
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, SimThread, wait_for, write_wav  # noqa: E402
from kioskd.sim.realtime_server import SimOptions  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "examples"
SIM = {"voice": "tone", "reply_ms": 800, "first_delta_delay_ms": 200, "speedup": 4.0}


def run(tmp: Path, options: SimOptions, exhibit: str, turns: int, quiet_s: float | None,
        question_ms: int = 400) -> tuple[list[dict[str, Any]], SimThread]:
    """``turns`` questions (``quiet_s`` apart; None: back to back) on a fresh kioskd; their turn.done lines."""
    thread = SimThread(options)
    conversation = f"conversation:\n  new_visitor_after_s: {quiet_s if quiet_s else 3600}\n"
    # earcons off: the press tick is not taken for the first sound of a reply
    kiosk = KioskdProcess(tmp, f"realtime:\n  url: {thread.sim.url}\n{NULL_SINK_AUDIO}  earcons: false\n"
                               f"{exhibit}{conversation}log:\n  format: json\n")
    question = write_wav(tmp / "q.wav", tone(300, question_ms, 48000, 0.4), 48000)
    try:
        kiosk.wait_phase("idle", timeout_s=30)
        for n in range(turns):
            kiosk.ask(question)
            wait_for(lambda: len(kiosk.events("turn.done")) > n, "the turn's line", 30)
            kiosk.wait_phase("idle", timeout_s=30)
            if quiet_s:
                wait_for(lambda: len(kiosk.events("conversation.reset")) > n, "the reset", quiet_s + 10)
    finally:
        kiosk.stop()
        thread.close()
    return kiosk.events("turn.done"), thread


def round_trips_ms(thread: SimThread) -> list[float]:
    """Per tool turn: calling response.done sent → the next response.create received (ms)."""
    sim = thread.sim
    done_times = [t for e, t in zip(sim.server_events, sim.server_times) if e["type"] == "response.done"
                  and any(i.get("type") == "function_call" for i in e["response"]["output"])]
    creates = [t for e, t in zip(sim.client_events, sim.client_times) if e.get("type") == "response.create"]
    out = []
    for t_done in done_times:
        after = [t for t in creates if t > t_done]
        if after:
            out.append((after[0] - t_done) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def p50_p95(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} / {pct(values, 0.95):.1f} ms" if values else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=8, help="turns per latency arm (default 8)")
    args = parser.parse_args()
    knowledge = f"exhibit:\n  knowledge_file: {EXAMPLES / 'knowledge.yaml'}\n"
    tool = {"tool_call": "lookup_exhibit_knowledge", "tool_arguments": '{"query": "How old is the mosaic?"}'}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        arms: dict[str, list[dict[str, Any]]] = {}
        trips: list[float] = []
        for arm, (name, options, exhibit) in enumerate([
            ("plain turn (no tools)", SimOptions(**SIM), ""),
            ("tool turn, no preamble", SimOptions(**SIM, **tool), knowledge),
            ("tool turn, 700 ms preamble", SimOptions(**SIM, **tool, preamble_ms=700), knowledge),
        ]):
            (tmp / f"arm{arm}").mkdir()
            lines, thread = run(tmp / f"arm{arm}", options, exhibit, args.turns, None)
            arms[name] = lines
            trips += round_trips_ms(thread)
        visitors: dict[str, list[int]] = {}
        for arm, (name, quiet) in enumerate([("kioskd (a fresh conversation per visitor)", 1.0),
                                             ("naive (one conversation for everyone)", None)]):
            (tmp / f"visitors{arm}").mkdir()
            lines, _ = run(tmp / f"visitors{arm}", SimOptions(**SIM, **tool), knowledge, 5, quiet)
            visitors[name] = [int((line.get("usage") or {}).get("input_tokens", 0)) for line in lines]
        costs: dict[str, dict[str, list[float]]] = {}
        museum_turn = {**SIM, "reply_ms": 8000, "speedup": 8.0}
        for model in ("gpt-realtime", "gpt-realtime-mini"):
            costs[model] = {}
            for arm, quiet in (("family", None), ("strangers", 1.0)):
                (tmp / f"cost-{model}-{arm}").mkdir()
                lines, _ = run(tmp / f"cost-{model}-{arm}", SimOptions(**museum_turn), f"cost:\n  model: {model}\n",
                               5, quiet, question_ms=3000)
                costs[model][arm] = [float(line["cost_usd"]) for line in lines]
    print_guide(args.turns, trips, arms, visitors)
    print_cost(costs)
    return 0


def print_guide(turns: int, trips: list[float], arms: dict[str, list[dict[str, Any]]],
                visitors: dict[str, list[int]]) -> None:
    print(f"kioskd guide figures: {turns} turns per latency arm; simulator first delta 200 ms, 800 ms replies;"
          f" {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"\ntool round trip (calling response.done → response.create), {len(trips)} calls: {p50_p95(trips)}"
          "   goal ≤ 20 ms")
    print("\nrelease → first sound (turn.done), p50 / p95")
    for name, lines in arms.items():
        values = [float(x["release_to_first_sound_ms"]) for x in lines if x.get("release_to_first_sound_ms")]
        print(f"  {name:<32} {p50_p95(values)}")
    print("\ninput tokens per turn, five visitors a quiet apart")
    for name, tokens in visitors.items():
        print(f"  {name:<44} {' '.join(f'{t:>5}' for t in tokens)}")


def print_cost(costs: dict[str, dict[str, list[float]]]) -> None:
    print("\ncost (issue 12): a 3 s question, an 8 s answer; kioskd's turn.done cost_usd at the reference's prices")
    print(f"  {'model':<20} {'turn 1':>9} {'turn 5 (same visitor)':>22} {'5-turn visit':>13} "
          f"{'5 visitors, 1 turn each':>24}")
    for model, arms in costs.items():
        family, strangers = arms["family"], arms["strangers"]
        print(f"  {model:<20} ${family[0]:>8.4f} ${family[-1]:>21.4f} ${sum(family):>12.4f} "
              f"${sum(strangers):>23.4f}")


if __name__ == "__main__":
    raise SystemExit(main())
