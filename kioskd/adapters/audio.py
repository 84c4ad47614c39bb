"""The audio adapter: one input and one output PortAudio stream, open for the life of the daemon (the speaker's
is reopened only when repeated gaps ask for a longer device queue, between visits: ``reopen_output``).

Devices run at a probed native rate; soxr converts to and from the API's 24 kHz mono in the app, one
``ResampleStream`` per direction (reference/pi-audio.md §1, §4). The output plays silence when idle.

The microphone has a gate (``set_mic``): LIVE posts every block to the loop, PREROLL keeps only the newest
``preroll_ms`` in a ring inside the adapter and posts nothing, OFF drops blocks. The daemon keeps the gate LIVE
only while the button is held, so an idle kiosk wakes its event loop for no microphone block at all; opening the
gate from PREROLL hands the ring over first, as one block, so the pre-roll still reaches the turn machine before
the press does. The ring never holds what the speaker played: while the speaker sounds, and for as long as its
sound may still be reaching the microphone (the two device latencies and a microphone block), it is emptied.

Threads: PortAudio calls ``_on_input`` and ``_on_output`` on its own threads. The input callback copies the block,
records a heartbeat and, under ``_mic_lock``, posts the copy to the loop or keeps it in the pre-roll ring; the
output callback only runs ``PlayoutBuffer.fill()`` under ``_lock`` and posts counter changes. Every other method
runs on the asyncio loop thread.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import soxr  # type: ignore[import-untyped]

from kioskd.adapters import alsa
from kioskd.adapters.devices import DeviceChoice, Kind, choose
from kioskd.adapters.resample import DTYPE, PlaybackResampler
from kioskd.config import AudioConfig
from kioskd.core.jitter import PlayoutBuffer
from kioskd.core.events import Mic
from kioskd.core.pcm import API_RATE_HZ, Pcm, Ring, samples_to_ms
from kioskd.core.settings import TurnSettings
from kioskd.errors import DeviceError

MIC_BLOCK_MS: Final = 20
#: the playout ring holds the longest reply kioskd lets play plus this: earcons queued ahead of it, the prebuffer
#: and what the playback resampler holds back
PLAYOUT_SLACK_S: Final = 2.0
_DEFAULTS: Final = AudioConfig()


class AudioIO:
    """Microphone in (→ ``on_mic`` with 24 kHz mono int16) and speaker out (``play`` → ``PlayoutBuffer``).

    ``on_mic``, ``on_drained(dropped_ms)`` and ``on_started(at_s)`` are called on the loop thread. ``dropped_ms`` is
    the audio the playout buffer had no room for since the previous drain or interrupt (0 unless it overflowed;
    each overflow is one ``audio.overflow`` warning). ``at_s`` is the monotonic (loop clock) time at which the
    first frame of a new reply item becomes audible, estimated from PortAudio's output timing. ``chooser`` picks a
    device's name, rate and channels (default: by probing).

    ``reply_cap_s`` is the longest reply kioskd lets play (``turn.reply_cap_s``): the playout ring is sized for it
    once, at start (``PLAYOUT_SLACK_S`` more), so a reply delivered far faster than real time is queued whole —
    90 s at 48 kHz mono int16 is 8.8 MB. Reading the socket slower instead would leave keepalive pongs unread.
    """

    def __init__(self, *, input_device: str | None, output_device: str | None, on_mic: Callable[[Pcm], None],
                 on_drained: Callable[[int], None], on_started: Callable[[float], None] | None = None,
                 block_ms: int = _DEFAULTS.block_ms, latency_s: float | str = _DEFAULTS.latency_s,
                 prebuffer_ms: float = _DEFAULTS.prebuffer_ms, prebuffer_min_ms: float = _DEFAULTS.prebuffer_min_ms,
                 prebuffer_max_ms: float = _DEFAULTS.prebuffer_max_ms, preroll_ms: int = _DEFAULTS.preroll_ms,
                 reply_cap_s: float = TurnSettings().reply_cap_s, log: Any = None,
                 chooser: Callable[[str | None, Kind], DeviceChoice] = choose) -> None:
        if log is None:
            import structlog

            log = structlog.get_logger("kioskd.audio")
        self._log = log
        self._queries: Final = {"input": input_device, "output": output_device}
        self._on_mic = on_mic
        self._on_drained = on_drained
        self._on_started = on_started
        self._block_ms = block_ms
        self._latency_s = latency_s
        self._prebuffer_ms = prebuffer_ms
        self._prebuffer_bounds_ms = (prebuffer_min_ms, prebuffer_max_ms)
        self._preroll_ms = preroll_ms
        self.reply_cap_s: Final = reply_cap_s
        self._chooser = chooser

        self._lock = threading.Lock()  # guards _buffer between the loop thread and the output callback
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer: PlayoutBuffer | None = None
        self._mic_rs: Any = None
        self._mic_lock = threading.Lock()  # guards _mic and _mic_ring between the loop thread and the input callback
        self._mic = Mic.LIVE
        self._mic_ring = Ring(0)
        self._play_rs: PlaybackResampler | None = None
        self._streams: dict[str, Any] = {}
        self._choices: dict[str, DeviceChoice] = {}
        self._closed = False

        # written by the callbacks (single writer each), read by the loop thread
        self._last_in_s = 0.0
        self._last_out_s = 0.0
        self._in_callbacks = 0
        self._out_callbacks = 0
        self._input_overflows = 0
        self._output_underflows = 0
        self._callback_errors = 0
        self._posts_dropped = 0
        self._finished: dict[str, bool] = {"input": False, "output": False}
        self._generation: dict[str, int] = {"input": 0, "output": 0}  # a closed stream's late finish is not a loss
        self._heard_underflows = 0  # output underflows while a stream was playing: the visitor heard a gap
        self._was_playing = False
        self._echo_until_s = 0.0  # monotonic: until then the microphone may still pick up what the speaker played
        self._meter: list[int] | None = None  # [sum of squares, samples, clipped, non-zero, peak] while metering
        self._seen_drained = 0
        self._seen_started = 0
        self._reported_overflow = (0, 0)  # the buffer's (overflow samples, overflowing pushes) last reported
        self._out_latency_s = 0.0
        self._in_latency_s = 0.0
        self._out_ahead_s = 0.0  # the last callback's outputBufferDacTime - currentTime (the reported latency if none)

    # ------------------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Choose both devices, open and start both streams, and log one ``audio.device_opened`` line each.

        Raises DeviceError when a device is missing, busy or refuses every rate.
        """
        self._loop = asyncio.get_running_loop()
        with alsa.probing():  # PortAudio opens every PCM and probes rates: ALSA's complaints are expected
            inp = await asyncio.to_thread(self._chooser, self._queries["input"], "input")
            out = await asyncio.to_thread(self._chooser, self._queries["output"], "output")
        self._choices = {"input": inp, "output": out}
        for direction, choice in self._choices.items():
            if choice.others:  # e.g. a second identical USB adapter plugged in: the first is used, every time
                self._log.warning("audio.device_ambiguous", direction=direction, query=self._queries[direction],
                                  chosen=choice.name, others=list(choice.others))
        low_ms, high_ms = self._prebuffer_bounds_ms
        self._buffer = PlayoutBuffer(out.rate_hz, out.channels, capacity_s=self.reply_cap_s + PLAYOUT_SLACK_S,
                                     prebuffer_ms=self._prebuffer_ms, min_ms=low_ms, max_ms=high_ms)
        self._mic_rs = soxr.ResampleStream(inp.rate_hz, API_RATE_HZ, 1, dtype=DTYPE, quality="LQ")
        self._mic_ring = Ring(inp.rate_hz * self._preroll_ms // 1000)
        self._play_rs = PlaybackResampler(out.rate_hz)
        try:
            await asyncio.to_thread(self._open, "output", out)
            await asyncio.to_thread(self._open, "input", inp)
        except BaseException:
            await self.close()
            raise
        now = time.monotonic()
        self._last_in_s = self._last_out_s = now  # a grace period before the first callbacks

    def _open(self, direction: Kind, choice: DeviceChoice) -> None:
        with alsa.probing():  # a refusal is raised as a DeviceError, naming PortAudio's reason
            self._open_stream(direction, choice)

    def _open_stream(self, direction: Kind, choice: DeviceChoice) -> None:
        import sounddevice as sd  # type: ignore[import-untyped]

        # the speaker's block sets how soon a reply or a barge-in fade reaches the device; the microphone's only
        # feeds appends of 20-40 ms, so it keeps 20 ms blocks and half the callbacks
        block_ms = self._block_ms if direction == "output" else max(self._block_ms, MIC_BLOCK_MS)
        blocksize = max(1, choice.rate_hz * block_ms // 1000)
        cls = sd.InputStream if direction == "input" else sd.OutputStream
        callback = self._on_input if direction == "input" else self._on_output
        try:
            stream = cls(device=choice.index, samplerate=choice.rate_hz, channels=choice.channels, dtype=DTYPE,
                         blocksize=blocksize, latency=self._latency_s, callback=callback,
                         finished_callback=lambda gen=self._generation[direction]: self._stream_finished(
                             direction, gen))
            if self._closed:  # close() ran while this opened (a reopen at shutdown): do not leak a running stream
                stream.close(ignore_errors=True)
                raise DeviceError(choice.name, direction, "the audio adapter is closed")
            self._streams[direction] = stream
            if direction == "output":
                self._out_latency_s = self._out_ahead_s = float(stream.latency)
            else:
                self._in_latency_s = float(stream.latency)
            stream.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(choice.name, direction, f"cannot open at {choice.rate_hz} Hz, "
                              f"{choice.channels} ch: {exc}") from exc
        self._log.info("audio.device_opened", direction=direction, name=choice.name, rate_hz=choice.rate_hz,
                       channels=choice.channels, blocksize=blocksize, latency_s=round(float(stream.latency), 4))

    async def close(self) -> None:
        """Stop and close both streams (the output first plays what it was handed). Safe to call twice."""
        self._closed = True
        streams, self._streams = self._streams, {}
        if streams:
            await asyncio.to_thread(self._close_streams, streams)

    async def reopen_output(self, latency_s: float) -> float:
        """Close the speaker stream and open it again on the same device at ``latency_s`` (the queue was too short
        for this machine); the playout buffer and everything queued in it stay. Returns the latency obtained.
        Raises DeviceError if the device refuses; the caller treats that as a lost device."""
        old = self._streams.pop("output", None)
        self._generation["output"] += 1
        if old is not None:
            await asyncio.to_thread(self._close_streams, {"output": old})
        self._latency_s = latency_s
        self._was_playing = False  # the new stream's start-up underflow, if any, is no gap in a reply
        await asyncio.to_thread(self._open, "output", self._choices["output"])
        self._last_out_s = time.monotonic()
        return self._out_latency_s

    @property
    def silent(self) -> bool:
        """Nothing queued or sounding on the speaker (so reopening it now cuts nothing)."""
        if self._buffer is None:
            return True
        with self._lock:
            return self._buffer.idle and time.monotonic() >= self._echo_until_s

    @property
    def heard_underflows(self) -> int:
        """Output underflows while reply audio or an earcon was playing (each is a gap the visitor heard)."""
        return self._heard_underflows

    @staticmethod
    def _close_streams(streams: dict[str, Any]) -> None:
        for stream in streams.values():
            try:
                stream.stop()  # the output plays what it was handed (a fade) before it stops
            except Exception:  # a lost device may refuse; closing still releases it
                pass
            stream.close(ignore_errors=True)

    # ------------------------------------------------------------------------------------------ loop thread

    def play(self, pcm24: Pcm, item_id: str | None) -> None:
        """Queue 24 kHz mono int16 for ``item_id`` (None: an earcon), resampled to the device rate. Never blocks."""
        if self._play_rs is None or self._buffer is None:
            raise RuntimeError("AudioIO.play() before start()")
        self._queue(self._play_rs.push(pcm24, item_id))

    def end_of_reply(self) -> None:
        """No more audio for now: flush the resampler's tail and let the buffer play out below its target."""
        if self._play_rs is None or self._buffer is None:
            return
        self._queue(self._play_rs.flush())
        with self._lock:
            self._buffer.end_of_stream()

    def interrupt(self) -> tuple[str | None, int]:
        """Fade out now and drop the queue; returns (item playing or last played, its played ms incl. the fade).

        What is still inside the resampler was never heard and is dropped too.
        """
        if self._play_rs is None or self._buffer is None:
            return None, 0
        with self._lock:
            result = self._buffer.interrupt()
        self._play_rs.clear()
        self._report_overflow("interrupted")
        return result

    def _drained(self) -> None:
        """The buffer played out (posted by the output callback): say what it dropped, then tell the daemon."""
        self._on_drained(self._report_overflow("drained"))

    def _report_overflow(self, end: str) -> int:
        """Milliseconds of audio the buffer dropped since the last report (a drain or an interrupt, so once per
        reply); a warning when any was. Loop thread."""
        buffer = self._buffer
        if buffer is None:
            return 0
        with self._lock:
            now = (buffer.overflow_samples, buffer.overflows)
        (samples, pushes), self._reported_overflow = self._reported_overflow, now
        dropped = now[0] - samples
        if dropped <= 0:
            return 0
        dropped_ms = samples_to_ms(dropped, buffer.rate_hz)
        self._log.warning("audio.overflow", dropped_ms=dropped_ms, pushes=now[1] - pushes, end=end,
                          capacity_s=round(buffer.capacity_s, 1), reply_cap_s=self.reply_cap_s,
                          cause="more audio was queued than the playout buffer holds: it was dropped, never heard")
        return dropped_ms

    def _queue(self, pieces: list[tuple[Pcm, str | None]]) -> None:
        assert self._buffer is not None
        now_s = time.monotonic()  # arrival time, for the jitter estimate (the output callback uses this clock too)
        for pcm, item_id in pieces:
            with self._lock:  # held for one memcpy: the output callback waits on it
                self._buffer.push(pcm, item_id, now_s)

    def set_mic(self, mode: Mic) -> None:
        """Set the microphone gate. PREROLL starts from an empty ring; LIVE from PREROLL first hands the ring to
        ``on_mic`` (synchronously, as one block), then every block follows in order."""
        with self._mic_lock:
            if mode is self._mic:
                return
            held = self._mic_ring.take() if self._mic is Mic.PREROLL else None
            self._mic = mode
        if self._mic_rs is not None:
            self._mic_rs.clear()  # what follows does not continue what the resampler last saw
        if mode is Mic.LIVE and held is not None and held.size:
            self._mic_block(held)

    def _mic_block(self, block: Pcm) -> None:
        if self._closed or self._mic_rs is None:
            return
        pcm24: Pcm = self._mic_rs.resample_chunk(block)
        if pcm24.size:
            self._on_mic(pcm24)

    def stats(self) -> dict[str, Any]:
        """Buffer stats plus rates, callback counts and the PortAudio flags seen."""
        out: dict[str, Any] = {}
        if self._buffer is not None:
            with self._lock:
                out.update(self._buffer.stats())
                item = self._buffer.current_item
                handed_ms = self._buffer.played_ms(item) if item is not None else 0
            # the position *while playing*: handed to the device minus what still waits in its queue. Status only;
            # the truncate figure is the handed count itself (everything handed is heard, pi-audio.md §8)
            queued_ms = round(self._out_ahead_s * 1000) if out["depth_ms"] else 0  # after the drain it all played
            out["playing_item"] = item
            out["heard_ms"] = max(0, handed_ms - queued_ms)
            out["capacity_s"] = round(self._buffer.capacity_s, 1)
        for direction, choice in self._choices.items():
            out[f"{direction}_device"] = choice.name
            out[f"{direction}_rate_hz"] = choice.rate_hz
            out[f"{direction}_channels"] = choice.channels
        out.update(mic=self._mic.value, input_callbacks=self._in_callbacks, output_callbacks=self._out_callbacks,
                   input_overflows=self._input_overflows, output_underflows=self._output_underflows,
                   heard_underflows=self._heard_underflows,
                   callback_errors=self._callback_errors, posts_dropped=self._posts_dropped,
                   input_finished=self._finished["input"], output_finished=self._finished["output"],
                   output_latency_s=round(self.output_latency_s, 4))
        return out

    async def measure_input(self, seconds: float) -> dict[str, float | int]:
        """The microphone's raw level over ``seconds`` (at the device's rate, before resampling): RMS and peak in
        dBFS, the share of clipped samples and of non-zero ones, the samples seen. For ``kioskctl selftest``."""
        self._meter = meter = [0, 0, 0, 0, 0]
        try:
            await asyncio.sleep(seconds)
        finally:
            self._meter = None
        squares, n, clipped, nonzero, peak = meter
        rms = (squares / n) ** 0.5 if n else 0.0
        return {"samples": n, "rms_dbfs": round(20 * math.log10(max(rms, 1e-9) / 32768), 1),
                "peak_dbfs": round(20 * math.log10(max(peak, 1e-9) / 32768), 1),
                "clipped_share": round(clipped / n, 4) if n else 0.0,
                "nonzero_share": round(nonzero / n, 4) if n else 0.0}

    def fault(self, now_s: float, stale_s: float = 2.0) -> str | None:
        """Why the audio path is broken, or None: a stream ended by itself (device lost, PortAudio error), or a
        stream's callbacks stopped for ``stale_s`` (a callback thread hung inside PortAudio). Loop thread."""
        if self._closed:
            return None
        for direction, finished in self._finished.items():
            if finished:
                return f"{direction} stream stopped by itself (device unplugged or failed)"
        for direction, last_s in (("input", self._last_in_s), ("output", self._last_out_s)):
            if self._streams and now_s - last_s > stale_s:
                return f"no {direction} callback for {now_s - last_s:.1f} s"
        return None

    def device_name(self, direction: str) -> str:
        choice = self._choices.get(direction)
        return choice.name if choice is not None else "?"

    @property
    def last_callback_s(self) -> float:
        """Monotonic time of the freshest callback (the start time until the first one)."""
        return max(self._last_in_s, self._last_out_s)

    @property
    def output_latency_s(self) -> float:
        """The output latency PortAudio reported when the stream opened (0.0 before start)."""
        return self._out_latency_s

    # ------------------------------------------------------------------------------------------ PortAudio threads

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the daemon is going away
            self._posts_dropped += 1

    def _stream_finished(self, direction: str, generation: int) -> None:
        """finished_callback (PortAudio thread): the stream went inactive, by close() or by device loss (a stream
        replaced by ``reopen_output`` finishes too, and is no loss)."""
        if generation == self._generation[direction]:
            self._finished[direction] = True

    def _on_input(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """Input callback: copy (mixing stereo down), heartbeat, then post or keep as the gate says. Never blocks
        (the lock is held for a copy at most) or raises."""
        try:
            self._last_in_s = time.monotonic()
            self._in_callbacks += 1
            if status.input_overflow:
                self._input_overflows += 1
            if indata.shape[1] == 1:
                block = indata[:, 0].copy()  # PortAudio reuses indata
            else:
                block = (indata.sum(axis=1, dtype=np.int32) // indata.shape[1]).astype(np.int16)
            meter = self._meter
            if meter is not None:  # a self-test is measuring the microphone (a second at most)
                x = block.astype(np.int64)  # squares of int16 overflow int32
                meter[0] += int(np.dot(x, x))
                meter[1] += x.size
                meter[2] += int(np.count_nonzero(np.abs(x) >= 32767))
                meter[3] += int(np.count_nonzero(x))
                meter[4] = max(meter[4], int(np.abs(x).max(initial=0)))
            with self._mic_lock:
                if self._mic is Mic.LIVE:
                    self._post(self._mic_block, block)
                elif self._mic is Mic.PREROLL:
                    if self._last_in_s < self._echo_until_s:
                        self._mic_ring.clear()  # the speaker's sound may be in it: it is not the visitor's
                    else:
                        self._mic_ring.push(block)
        except Exception:
            self._callback_errors += 1

    def _on_output(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        """Output callback: fill under the lock, then post the counters that changed. Never blocks or raises."""
        try:
            self._last_out_s = now = time.monotonic()
            self._out_callbacks += 1
            if status.output_underflow:
                self._output_underflows += 1
                if self._was_playing:
                    self._heard_underflows += 1
            buffer = self._buffer
            if buffer is None:
                outdata.fill(0)
                return
            with self._lock:
                buffer.fill(outdata, now)
                drained, started, self._was_playing = buffer.drained, buffer.items_started, buffer.playing
            if outdata.any():  # heard for the device queue, then picked up for the input's queue and one block
                self._echo_until_s = now + self._out_latency_s + self._in_latency_s + MIC_BLOCK_MS / 1000
            ahead_s = time_info.outputBufferDacTime - time_info.currentTime
            if 0.0 <= ahead_s < 1.0:  # some host APIs report no timing: keep the stream's reported latency
                self._out_ahead_s = ahead_s
            if drained != self._seen_drained:
                self._seen_drained = drained
                self._post(self._drained)
            if started != self._seen_started:
                self._seen_started = started
                if self._on_started is not None:
                    self._post(self._on_started, now + self._out_ahead_s)
        except Exception:
            self._callback_errors += 1
            outdata.fill(0)
