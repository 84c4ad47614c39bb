"""A scripted museum visit against a real kioskd on the embedded default, with a readable timeline.

Run by ./scripts/demo (which installs what is needed and sets up the null-sink audio first). It starts
`kioskd run` as systemd would (a child process logging JSON lines) on the embedded default — the simulator on
loopback and the simulated button — with the example exhibit (config/examples: the Dolphin Mosaic's knowledge
and opening hours), then plays a visitor:
  turn 1: press, ask a question into the microphone, release; the model looks it up in the exhibit's knowledge
          (a tool call, with "Let me check" first), and the visitor hears the answer;
  turn 2: press, ask, release, then press again while the exhibit speaks (barge-in) and ask something else;
  turn 3: the Realtime API is down (a second kioskd whose Realtime URL is a closed port): the visitor is answered
          through the Chat Completions fallback (the held question uploaded as WAV, the answer streamed back).
Each turn's timeline comes from the daemon's own log lines; release → first sound is also measured on the
speaker sink's monitor, i.e. what a visitor would hear.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import socket

from kioskd.sim.chat_server import ChatSimOptions
from kioskd.sim.harness import NULL_SINK_AUDIO, KioskdProcess, Room, SimThread, say

QUESTIONS = ["How old is this mosaic?", "Who found it?", "Sorry, can I touch it?", "When does the museum close?"]
EXAMPLES = Path(__file__).resolve().parent.parent / "config" / "examples"


def first_sound_after(room: Room, t_s: float) -> float | None:
    """Seconds from ``t_s`` (time.time clock) to the first clearly audible sample in the room, if any."""
    times, pcm = room.take()
    loud = np.nonzero((times > t_s) & (np.abs(pcm.astype(np.int32)) > 1000))[0]
    return float(times[loud[0]] - t_s) if loud.size else None


def timeline(lines: list[dict[str, Any]], start: float) -> None:
    for line in lines:
        if line["_t"] <= start:
            continue
        event, t = line.get("event", ""), f"{line['_t'] - start:6.2f} s"
        if event == "turn.phase":
            held = f" (held {line['held_ms']} ms)" if "held_ms" in line else ""
            print(f"  {t}  {line.get('from')} → {line.get('to')}{held}")
        elif event == "turn.done":
            tokens = (line.get("usage") or {}).get("total_tokens")
            tools = f" (tools: {', '.join(line['tools'])})" if line.get("tools") else ""
            print(f"  {t}  turn {line.get('turn')} done, {line.get('outcome')}{tools}: {tokens} tokens "
                  f"(${line.get('cost_usd', 0):.4f} on {line.get('backend')}/{line.get('model')}); "
                  f"{line.get('reply_ms')} ms of reply audio heard of {line.get('reply_received_ms')} ms received; "
                  f"release → first delta "
                  f"{line.get('release_to_first_delta_ms')} ms, → first sound {line.get('release_to_first_sound_ms')} ms; "
                  f"underruns {line.get('underruns')}")
        elif event == "turn.tool_call":
            print(f"  {t}  TOOL CALL: the model asks {line.get('name')} (kioskd answers it locally)")
        elif event == "conversation.reset":
            print(f"  {t}  new visitor: the conversation's {line.get('items')} items deleted")
        elif event == "turn.route":
            print(f"  {t}  ROUTE: this visitor is answered by {line.get('backend')} ({line.get('model')}), "
                  f"because {line.get('why')}" + (f": the Realtime link is {line['realtime']}"
                                                   if line.get("realtime") else ""))
        elif event == "ws.disconnected" and line.get("phase") == "connecting":
            continue  # the closed port of the outage scene: one line per retry, not the story
        elif event == "turn.barge_in":
            print(f"  {t}  BARGE-IN: the visitor pressed while the exhibit was {line.get('phase')}")
        elif event == "turn.truncated":
            print(f"  {t}  truncate: the visitor heard {line.get('audio_end_ms')} ms of the "
                  f"{line.get('received_ms')} ms received")
        elif line.get("level") in ("warning", "error"):
            print(f"  {t}  {line.get('level').upper()} {event}: "
                  f"{json.dumps({k: v for k, v in line.items() if k not in ('_t', 'timestamp', 'event', 'level')})}")


def turn(kiosk: KioskdProcess, room: Room, question: Path, *, barge_in_with: Path | None = None) -> None:
    start = kiosk.lines[-1]["_t"] if kiosk.lines else 0.0
    released = kiosk.ask(question, room)
    if barge_in_with is not None:
        time.sleep(1.5)
        released = kiosk.ask(barge_in_with, room)  # the press interrupts the exhibit mid-sentence
    kiosk.wait_phase("idle", timeout_s=60)
    time.sleep(0.3)
    timeline(kiosk.lines, start)
    heard = first_sound_after(room, released)
    if heard is not None:
        print(f"  measured on the speaker sink: release → first audible sample {heard * 1000:.0f} ms")


def outage(work: Path, question: Path, room: Room, voice: str) -> int:
    """Turn 3: a kioskd whose Realtime API is unreachable answers through the Chat Completions fallback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    chat = SimThread(ChatSimOptions(voice=voice, reply_text="The museum closes at six tonight."))
    (work / "outage").mkdir()
    kiosk = KioskdProcess(work / "outage", f"realtime:\n  url: ws://127.0.0.1:{closed}/v1/realtime?model=gpt-realtime\n"
                                           f"fallback:\n  url: {chat.sim.url}\n{NULL_SINK_AUDIO}log:\n  format: json\n")
    try:
        kiosk.wait_phase("idle", timeout_s=30)
        print(f"\nTurn 3: the Realtime API is down (connection refused); the visitor asks {QUESTIONS[3]!r} and is "
              "answered through Chat Completions")
        turn(kiosk, room, question)
        status = kiosk.ctl("status")
        print("\nkioskctl status:", json.dumps({k: status.get(k) for k in ("phase", "link", "visitor", "fallback")}))
    finally:
        code = kiosk.stop()
        chat.close()
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voice", choices=("speech", "tone"), default="speech", help="the simulator's reply voice")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kioskd-demo-"))
    wavs = [say(text, work / f"q{i}.wav") for i, text in enumerate(QUESTIONS)]
    room = Room()
    print("kioskd demo: starting `kioskd run` on the embedded default (simulator on loopback, simulated button)")
    kiosk = KioskdProcess(work, f"{NULL_SINK_AUDIO}"
                                f"exhibit:\n  name: The Dolphin Mosaic\n"
                                f"  knowledge_file: {EXAMPLES / 'knowledge.yaml'}\n"
                                f"  tools_file: {EXAMPLES / 'tools.yaml'}\n"
                                f"log:\n  format: json\nsimulator:\n  voice: {args.voice}\n"
                                f"  tool_call: lookup_exhibit_knowledge\n  preamble_ms: 700\n")
    try:
        kiosk.wait_ready(timeout_s=30)
        print(f"kioskd is serving, {kiosk.lines[-1]['_t']:.1f} s after start\n")
        print(f"Turn 1: the visitor asks {QUESTIONS[0]!r}; the guide looks it up and they hear the whole answer")
        turn(kiosk, room, wavs[0])
        print(f"\nTurn 2: the visitor asks {QUESTIONS[1]!r}, then interrupts the answer with {QUESTIONS[2]!r}")
        turn(kiosk, room, wavs[1], barge_in_with=wavs[2])
        status = kiosk.ctl("status")
        print("\nkioskctl status:", json.dumps({k: status.get(k) for k in ("phase", "link", "turns", "rejected", "cost")}))
    finally:
        code = kiosk.stop()
    try:
        code = code or outage(work, wavs[3], room, args.voice)
    finally:
        room.close()
    print(f"\nkioskd stopped (exit code {code}); demo files in {work}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
