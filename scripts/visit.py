"""A scripted museum visit against a real kioskd on the embedded default, with a readable timeline.

Run by ./scripts/demo (which sets up the venv and the null-sink audio first). It starts `kioskd run` as systemd
would (a child process logging JSON lines), waits until it is serving, then plays a visitor:
  turn 1: press, ask a question into the microphone, release, hear the whole reply;
  turn 2: press, ask, release, and press again while the exhibit speaks (barge-in) with a new question.
It prints each turn's timeline from the daemon's own log lines, then stops the daemon with SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from kioskd.adapters.control import request

QUESTIONS = [
    "What is this painting about?",
    "Who made this sculpture?",
    "Sorry, how old is it?",
]


def say(text: str, wav: Path) -> None:
    """Synthesize the visitor's question (espeak-ng if present, else a voiced tone via sox)."""
    if shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "165", "-w", str(wav), text], check=True)
    else:
        subprocess.run(["sox", "-n", "-r", "48000", "-c", "1", str(wav), "synth", "1.5", "sine", "220"], check=True)


def speak_into_mic(wav: Path) -> None:
    """Play the question into the microphone's null sink: what a visitor's voice is to the USB mic."""
    subprocess.run(["paplay", "--device=kiosk_mic", str(wav)], check=True)


class Daemon:
    def __init__(self, config_path: Path, socket: str) -> None:
        self.socket = socket
        self.lines: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kioskd", "run", "--config", str(config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "stderr", "text": raw.rstrip()}
            line["_t"] = time.monotonic() - self.t0
            self.lines.append(line)

    def ctl(self, cmd: str) -> dict[str, Any]:
        return request(self.socket, cmd)

    def wait_phase(self, *phases: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"kioskd exited with {self.proc.returncode}; last lines:\n" + self.tail())
            try:
                phase = str(self.ctl("status")["phase"])
                if phase in phases:
                    return phase
            except Exception:
                pass
            time.sleep(0.05)
        raise SystemExit(f"kioskd did not reach {'/'.join(phases)} in {timeout_s:g} s; last lines:\n" + self.tail())

    def tail(self, n: int = 15) -> str:
        return "\n".join(json.dumps({k: v for k, v in line.items() if k != "_t"}) for line in self.lines[-n:])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


def timeline(lines: list[dict[str, Any]], start: float) -> None:
    """Print the turn-level log lines after ``start`` as a readable timeline."""
    for line in lines:
        if line["_t"] < start:
            continue
        event = line.get("event", "")
        t = f"{line['_t'] - start:7.3f} s"
        if event == "turn.phase":
            extra = f" (held {line['held_ms']} ms)" if "held_ms" in line else ""
            print(f"  {t}  {line.get('from')} → {line.get('to')}{extra}")
        elif event == "turn.done":
            print(f"  {t}  reply heard in full: release→first delta {line.get('release_to_first_delta_ms')} ms, "
                  f"release→first sound {line.get('release_to_first_sound_ms')} ms, reply {line.get('reply_ms')} ms, "
                  f"underruns {line.get('underruns')}")
        elif event == "turn.barge_in":
            print(f"  {t}  BARGE-IN: the visitor pressed while the exhibit was {line.get('phase')}")
        elif event == "turn.truncated":
            print(f"  {t}  truncate: heard {line.get('audio_end_ms')} ms of {line.get('received_ms')} ms received")
        elif event in ("turn.too_short", "turn.rejected", "turn.timeout", "ws.server_error", "ws.disconnected"):
            print(f"  {t}  {event} {json.dumps({k: v for k, v in line.items() if k not in ('_t', 'timestamp')})}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--voice", choices=("speech", "tone"), default="speech")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kioskd-demo-"))
    socket = str(work / "control.sock")
    config = work / "kioskd.yaml"
    config.write_text(
        "# the embedded default, pointed at the demo's null sinks\n"
        "audio:\n  input_device: kiosk_microphone\n  output_device: kiosk_speaker\n"
        f"control:\n  socket: {socket}\n"
        "log:\n  format: json\n"
        f"simulator:\n  voice: {args.voice}\n  first_delta_delay_ms: 300\n  jitter_ms: 20\n"
    )
    wavs = []
    for i, text in enumerate(QUESTIONS):
        wav = work / f"q{i}.wav"
        say(text, wav)
        wavs.append(wav)

    print("kioskd demo: starting the daemon on the embedded default (simulator + simulated button)")
    daemon = Daemon(config, socket)
    try:
        daemon.wait_phase("idle")
        print(f"kioskd is serving ({time.monotonic() - daemon.t0:.1f} s after start)\n")

        print(f"Turn 1: the visitor asks {QUESTIONS[0]!r} and listens to the whole answer")
        start = daemon.lines[-1]["_t"] if daemon.lines else 0.0
        daemon.ctl("press")
        speak_into_mic(wavs[0])
        daemon.ctl("release")
        daemon.wait_phase("speaking", "idle")
        daemon.wait_phase("idle")
        time.sleep(0.2)
        timeline(daemon.lines, start)

        print(f"\nTurn 2: the visitor asks {QUESTIONS[1]!r}, then interrupts with {QUESTIONS[2]!r}")
        start = daemon.lines[-1]["_t"]
        daemon.ctl("press")
        speak_into_mic(wavs[1])
        daemon.ctl("release")
        daemon.wait_phase("speaking")
        time.sleep(1.0)
        daemon.ctl("press")
        speak_into_mic(wavs[2])
        daemon.ctl("release")
        daemon.wait_phase("speaking", "idle")
        daemon.wait_phase("idle")
        time.sleep(0.2)
        timeline(daemon.lines, start)

        status = daemon.ctl("status")
        print("\nkioskctl status:", json.dumps({k: status[k] for k in ("phase", "counters") if k in status}))
    finally:
        code = daemon.stop()
        print(f"\nkioskd stopped with exit code {code}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
