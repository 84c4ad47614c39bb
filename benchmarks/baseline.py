"""The naive push-to-talk client the common samples amount to: a REFERENCE for benchmarks, not a product.

What it does, on purpose, as openai-python's push_to_talk_app / audio_util do (reference realtime.md §15):
  - opens the output device at 24 kHz directly; if the device refuses (a real USB device answers PortAudio error
    -9997, paInvalidSampleRate; the PulseAudio null sink accepts), it opens the device's default rate and
    resamples each delta on its own with linear interpolation;
  - no prebuffer: each ``response.output_audio.delta`` goes into a plain ``queue.Queue`` that the output callback
    drains, zero-filling whenever the queue is empty;
  - barge-in is only "stop enqueueing": a press sends ``response.cancel`` and drops later deltas, but whatever is
    already queued keeps playing; no truncate.
GA protocol over ``websockets`` with its defaults, so permessage-deflate is offered (``--no-compression``: not; no
Authorization header: meant for the simulator), manual turns
(``turn_detection: null``), the microphone at 24 kHz sent in 20 ms appends while the button is held.

Driven over stdin, one command a line: ``press``, ``release``, ``quit``. Prints ``phase <name>`` lines
(listening, waiting, speaking, idle) on stdout, as ``kioskctl status`` reports kioskd's phase.

    eval "$(scripts/audio-env)" && .venv/bin/python benchmarks/baseline.py --url ws://127.0.0.1:PORT/v1/realtime
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import queue
import sys
import threading
from typing import Any

import numpy as np
import sounddevice as sd  # type: ignore[import-untyped]
from websockets.asyncio.client import ClientConnection, connect

API_RATE_HZ = 24000
BLOCK_SAMPLES = 480  # 20 ms at 24 kHz, as the samples send it


class Baseline:
    def __init__(self, ws: ClientConnection, input_device: str, output_device: str) -> None:
        self.ws = ws
        self.loop = asyncio.get_running_loop()
        self.chunks: queue.Queue[np.ndarray] = queue.Queue()
        self.pending = np.zeros(0, np.int16)  # the part of a chunk the last callback did not use
        self.pressed = False
        self.response_id: str | None = None  # the response whose deltas are enqueued
        self.responding = False
        self.phase = ""
        try:
            self.out = sd.OutputStream(device=output_device, samplerate=API_RATE_HZ, channels=1, dtype="int16",
                                       callback=self.play)
            self.out_rate_hz = API_RATE_HZ
        except sd.PortAudioError as exc:  # -9997 on a real USB device: fall back to naive resampling
            self.out_rate_hz = int(sd.query_devices(output_device, "output")["default_samplerate"])
            print(f"note output at 24000 Hz refused ({exc}); resampling linearly to {self.out_rate_hz} Hz", flush=True)
            self.out = sd.OutputStream(device=output_device, samplerate=self.out_rate_hz, channels=1,
                                       dtype="int16", callback=self.play)
        self.mic = sd.InputStream(device=input_device, samplerate=API_RATE_HZ, channels=1, dtype="int16",
                                  blocksize=BLOCK_SAMPLES, callback=self.record)
        self.out.start()
        self.mic.start()
        print(f"note output opened at {self.out_rate_hz} Hz (the null sink accepts 24000; a real USB device "
              f"would refuse it with -9997), latency {self.out.latency * 1000:.0f} ms", flush=True)

    def set_phase(self, phase: str) -> None:
        if phase != self.phase:
            self.phase = phase
            print(f"phase {phase}", flush=True)

    # ---------------------------------------------------------------- PortAudio threads
    def play(self, outdata: Any, frames: int, t: Any, status: Any) -> None:
        out = outdata[:, 0]
        n = 0
        while n < frames:
            if self.pending.size == 0:
                try:
                    self.pending = self.chunks.get_nowait()
                except queue.Empty:
                    break
            take = min(frames - n, self.pending.size)
            out[n:n + take] = self.pending[:take]
            self.pending = self.pending[take:]
            n += take
        out[n:] = 0  # underrun: silence, nothing else

    def record(self, indata: Any, frames: int, t: Any, status: Any) -> None:
        if self.pressed:
            data = base64.b64encode(indata[:, 0].tobytes()).decode()
            self.loop.call_soon_threadsafe(self.send_soon, {"type": "input_audio_buffer.append", "audio": data})

    # ---------------------------------------------------------------- event loop
    def send_soon(self, event: dict[str, Any]) -> None:
        self.loop.create_task(self.ws.send(json.dumps(event)))

    async def command(self, line: str) -> bool:
        if line == "press":
            self.pressed = True
            if self.responding:
                await self.ws.send(json.dumps({"type": "response.cancel"}))
            self.response_id = None  # stop enqueueing; what is queued plays on
            await self.ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
            self.set_phase("listening")
        elif line == "release":
            self.pressed = False
            await self.ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            await self.ws.send(json.dumps({"type": "response.create"}))
            self.set_phase("waiting")
        return line != "quit"

    async def idle_when_drained(self) -> None:
        while not self.chunks.empty() or self.pending.size:
            await asyncio.sleep(0.005)
        if not self.pressed and not self.responding:
            self.set_phase("idle")

    async def receive(self) -> None:
        async for message in self.ws:
            event = json.loads(message)
            kind = event.get("type")
            if kind == "response.created":
                self.responding = True
                self.response_id = None if self.pressed else event["response"]["id"]
            elif kind == "response.output_audio.delta" and event.get("response_id") == self.response_id:
                pcm = np.frombuffer(base64.b64decode(event["delta"]), "<i2")
                if self.out_rate_hz != API_RATE_HZ:
                    x = np.arange(0, pcm.size, API_RATE_HZ / self.out_rate_hz)
                    pcm = np.interp(x, np.arange(pcm.size), pcm).astype(np.int16)
                self.chunks.put(pcm)
                self.set_phase("speaking")
            elif kind == "response.done":
                self.responding = False
                if not self.pressed:
                    self.loop.create_task(self.idle_when_drained())
            elif kind == "error":
                print(f"note server error {event['error'].get('code')}", flush=True)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--input-device", default="kiosk_microphone")
    parser.add_argument("--output-device", default="kiosk_speaker")
    parser.add_argument("--no-compression", action="store_true",
                        help="offer no permessage-deflate (websockets offers it by default; kioskd never does)")
    args = parser.parse_args()
    lines: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def read_stdin() -> None:
        for raw in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, raw.strip())
        loop.call_soon_threadsafe(lines.put_nowait, "quit")

    async with connect(args.url, compression=None if args.no_compression else "deflate") as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "output_modalities": ["audio"], "audio": {"input": {"turn_detection": None}}}}))
        client = Baseline(ws, args.input_device, args.output_device)
        receiver = asyncio.create_task(client.receive())
        threading.Thread(target=read_stdin, daemon=True).start()
        client.set_phase("idle")
        while await client.command(await lines.get()):
            pass
        receiver.cancel()
        client.mic.close()
        client.out.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
