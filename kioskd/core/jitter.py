"""The playout (jitter) buffer between reply audio arriving from asyncio and the PortAudio output callback.

Theory of operation
-------------------
Realtime audio arrives in order and faster than real time, so the buffer only fills; the risks are the gap before
the first delta, stalls mid-reply and barge-in (reference/pi-audio.md §7). The buffer therefore does three things:

* **Prebuffer.** A *stream* starts with the first push after the buffer was idle. Nothing is played until
  ``target`` worth of audio is queued, or ``end_of_stream()`` says no more is coming. Playback (re)starts with a
  ``fade_ms`` fade-in.
* **Underrun.** If the queue is about to run dry before ``end_of_stream()`` (less than one block plus one fade
  left), what is left plays with a ``fade_ms`` fade-out, one underrun is counted, the stream goes back to
  prebuffering and the target grows by 40 ms (up to ``max_ms``). A stream that completes without an underrun
  shrinks the target by 10 ms (down to ``min_ms``). The final drain after ``end_of_stream()`` is not an underrun.
* **Interrupt.** ``interrupt()`` drops the queue; the next ``fill()`` plays a fade-out of what followed, then
  silence. The played position counts every frame handed to ``fill()`` for the item, fade frames included: audio
  handed to the device is heard even if zeros follow (reference/pi-audio.md §8), so no output latency is
  subtracted.

Items: ``push`` records where each item's samples start in the stream; ``fill`` attributes the frames it hands
out to those items. Earcons are pushed with ``item_id=None`` and never count for an item.

Threads: one producer (``push``, ``end_of_stream``, ``interrupt``, ``played_ms``, ``stats`` on the asyncio loop
thread) and one consumer (``fill`` in the PortAudio callback). The class holds no lock: the audio adapter calls
every method under its own ``threading.Lock``. Time enters only as sample counts; no clock is read.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Final

import numpy as np
import numpy.typing as npt

from kioskd.core.pcm import Pcm, ms_to_samples, samples_to_ms

GROW_MS: Final = 40.0  # per underrun: one Wi-Fi retransmission stall is >= 200 ms, reach it in a few steps
SHRINK_MS: Final = 10.0  # per calm stream: rise fast, fall slowly (baresip aubuf)
MAX_TRACKED_ITEMS: Final = 256  # played counters kept for barge-in; older items are forgotten


class _State(Enum):
    IDLE = "idle"  # no stream: nothing queued since the last drain or interrupt
    PREBUFFER = "prebuffer"  # a stream is waiting for its target depth (at its start or after an underrun)
    PLAYING = "playing"


class PlayoutBuffer:
    """Single producer (asyncio loop thread, under the adapter's lock) / single consumer (PortAudio callback).

    ``rate_hz`` is the rate of the samples pushed and filled (the output device's rate); every ``*_ms`` figure is
    converted at that rate.
    """

    def __init__(self, rate_hz: int, channels: int = 1, *, capacity_s: float = 30.0, prebuffer_ms: float = 120.0,
                 min_ms: float = 60.0, max_ms: float = 400.0, fade_ms: float = 5.0) -> None:
        if rate_hz <= 0 or channels <= 0:
            raise ValueError(f"rate_hz and channels must be positive, got {rate_hz} and {channels}")
        if not 0 < min_ms <= max_ms:
            raise ValueError(f"need 0 < min_ms <= max_ms, got {min_ms} and {max_ms}")
        self.rate_hz: Final = rate_hz
        self.channels: Final = channels
        self._capacity_samples: Final = max(1, ms_to_samples(capacity_s * 1000, rate_hz))
        self._min_samples: Final = ms_to_samples(min_ms, rate_hz)
        self._max_samples: Final = ms_to_samples(max_ms, rate_hz)
        self._grow_samples: Final = ms_to_samples(GROW_MS, rate_hz)
        self._shrink_samples: Final = ms_to_samples(SHRINK_MS, rate_hz)
        self._target_samples = min(max(ms_to_samples(prebuffer_ms, rate_hz), self._min_samples), self._max_samples)
        self._fade_samples: Final = max(1, ms_to_samples(fade_ms, rate_hz))

        # everything fill() touches is allocated here, once
        self._ring = np.zeros(self._capacity_samples, dtype=np.int16)
        fade = self._fade_samples
        self._fade_in_gain: Final = (np.arange(1, fade + 1, dtype=np.float32) / (fade + 1)).astype(np.float32)
        self._countdown: Final = np.arange(fade, 0, -1, dtype=np.float32)  # fade, ..., 1
        self._gain = np.zeros(fade, dtype=np.float32)  # scratch for a fade-out of any length <= fade
        self._tail = np.zeros(fade, dtype=np.int16)  # the fade-out that interrupt() leaves for fill()
        self._tail_len = 0
        self._tail_pos = 0

        # stream positions are absolute sample counts; the ring index is position % capacity
        self._write_pos = 0
        self._read_pos = 0
        self._segments: deque[tuple[int, str | None]] = deque()  # (start position, item id), oldest first
        self._played: dict[str, int] = {}  # item id -> samples handed to fill() (fade frames included)
        self._last_item: str | None = None
        self._state = _State.IDLE
        self._eos = False
        self._fade_in_pos = fade  # position inside the current fade-in; == fade when none is running
        self._stream_underruns = 0
        self._stream_has_item = False

        self._underruns = 0
        self._overflows = 0
        self._overflow_samples = 0
        self._late_pushes = 0
        self._streams = 0
        self._drained = 0
        self._items_started = 0
        self._fill_errors = 0

    # ------------------------------------------------------------------------------------------ producer side

    def push(self, pcm: Pcm, item_id: str | None) -> None:
        """Queue mono int16 samples at ``rate_hz`` for ``item_id`` (None: an earcon). Never blocks.

        A push after the buffer drained or was interrupted starts a new stream (prebuffered again); a push while
        the tail drains clears end-of-stream. What does not fit in the ring is dropped (the newest samples) and
        counted as an overflow.
        """
        samples = np.asarray(pcm, dtype=np.int16).reshape(-1)
        if samples.size == 0:
            return
        if self._state is _State.IDLE:
            self._state = _State.PREBUFFER
            self._streams += 1
            self._stream_underruns = 0
            self._stream_has_item = False
            self._fade_in_pos = self._fade_samples
        elif self._state is _State.PREBUFFER and self._stream_underruns:
            self._late_pushes += 1  # audio that arrived after the queue had run dry
        self._eos = False
        free = self._capacity_samples - (self._write_pos - self._read_pos)
        if samples.size > free:
            self._overflows += 1
            self._overflow_samples += samples.size - free
            samples = samples[:free]
            if samples.size == 0:
                return
        if not self._segments or self._segments[-1][1] != item_id:
            self._segments.append((self._write_pos, item_id))
        if item_id is not None:
            self._stream_has_item = True
            if item_id not in self._played:
                self._played[item_id] = 0
                while len(self._played) > MAX_TRACKED_ITEMS:
                    del self._played[next(iter(self._played))]
        start = self._write_pos % self._capacity_samples
        first = min(samples.size, self._capacity_samples - start)
        self._ring[start:start + first] = samples[:first]
        self._ring[:samples.size - first] = samples[first:]
        self._write_pos += samples.size

    def end_of_stream(self) -> None:
        """No more audio for now: play the tail even below the target. When it has played, ``drained`` ticks
        (also when nothing at all is queued, so a waiter always hears back)."""
        self._eos = True

    def interrupt(self) -> tuple[str | None, int]:
        """Stop at once and drop the queue; the next ``fill()`` plays a ``fade_ms`` fade-out, then silence.

        Returns the item that was playing (or last played; None for an earcon) and its played milliseconds:
        frames handed to ``fill()`` for it including the fade frames, floor ms at ``rate_hz``.
        """
        depth = self._write_pos - self._read_pos
        item = self._segment_at(self._read_pos) if depth else self._last_item
        if self._state is _State.PLAYING and depth and self._tail_pos >= self._tail_len:
            n = min(self._fade_samples, depth)
            tail = self._read(self._read_pos, n).astype(np.float32)
            if self._fade_in_pos < self._fade_samples:  # still fading in: keep that envelope under the fade-out
                gain_in = np.ones(n, dtype=np.float32)
                k = min(n, self._fade_samples - self._fade_in_pos)
                gain_in[:k] = self._fade_in_gain[self._fade_in_pos:self._fade_in_pos + k]
                tail *= gain_in
            tail *= self._countdown[self._fade_samples - n:] / (n + 1)
            self._tail[:n] = tail.astype(np.int16)
            self._tail_len, self._tail_pos = n, 0
            self._account(n)  # handed to the device by the next fill(): counts as heard
        self._read_pos = self._write_pos
        self._segments.clear()
        self._state = _State.IDLE
        self._eos = False
        return item, self.played_ms(item) if item is not None else 0

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` handed to ``fill()`` so far (0 for an unknown item)."""
        return samples_to_ms(self._played.get(item_id, 0), self.rate_hz)

    @property
    def drained(self) -> int:
        """Counter: increments each time the buffer empties after ``end_of_stream()``."""
        return self._drained

    @property
    def items_started(self) -> int:
        """Counter: increments each time the first frames of a new item are handed to ``fill()``."""
        return self._items_started

    def stats(self) -> dict[str, int | float]:
        """Counters and the current depth and target, for status and logs.

        ``underruns``: mid-stream starvations; ``overflows`` / ``overflow_ms``: pushes (and audio) that did not fit;
        ``late_pushes``: pushes that arrived while a stream was starved; ``streams``: streams started;
        ``drained``: drains after end_of_stream; ``fill_errors``: fill() bugs answered with silence.
        """
        return {
            "underruns": self._underruns,
            "depth_ms": samples_to_ms(self._write_pos - self._read_pos, self.rate_hz),
            "target_ms": samples_to_ms(self._target_samples, self.rate_hz),
            "overflows": self._overflows,
            "overflow_ms": samples_to_ms(self._overflow_samples, self.rate_hz),
            "late_pushes": self._late_pushes,
            "streams": self._streams,
            "drained": self._drained,
            "items_started": self._items_started,
            "fill_errors": self._fill_errors,
        }

    # ------------------------------------------------------------------------------------------ consumer side

    def fill(self, out: npt.NDArray[np.int16]) -> None:
        """PortAudio output callback body: write the whole ``(frames, channels)`` int16 block.

        Total: never raises, never blocks, allocates no large arrays; zeros when idle; mono duplicated to every
        channel. Any frame count works.
        """
        try:
            if out.ndim not in (1, 2):
                raise ValueError(f"output block of shape {out.shape}")
            block = out if out.ndim == 2 else out.reshape(-1, 1)
            done = self._fill(block)
            block[done:] = 0
        except Exception:  # a bug here must not stop the stream: play silence and count it
            self._fill_errors += 1
            try:
                out.fill(0)
            except Exception:
                pass

    def _fill(self, out: npt.NDArray[np.int16]) -> int:
        """Fill ``out`` from the start; return how many frames were written (the rest is for zeros)."""
        frames = out.shape[0]
        done = 0
        if self._tail_pos < self._tail_len:
            n = min(frames, self._tail_len - self._tail_pos)
            out[:n] = self._tail[self._tail_pos:self._tail_pos + n, None]
            self._tail_pos += n
            done = n
        while done < frames:
            depth = self._write_pos - self._read_pos
            if self._state is not _State.PLAYING:
                if self._eos and depth == 0:
                    self._complete_stream()
                    break
                if depth == 0 or (not self._eos and depth < self._target_samples):
                    break
                self._state = _State.PLAYING
                self._fade_in_pos = 0
            want = frames - done
            if self._eos or depth >= want + self._fade_samples:
                n = min(want, depth)
                self._play(out[done:done + n], fade_out=0)
                done += n
                if self._eos and n == depth:
                    self._complete_stream()
                    break
            else:
                # fewer than one block plus a fade left and more is due: fade out over what is left rather than
                # click into silence, and wait for the target again
                n = min(want, depth)
                self._play(out[done:done + n], fade_out=min(n, self._fade_samples))
                done += n
                self._underruns += 1
                self._stream_underruns += 1
                self._target_samples = min(self._max_samples, self._target_samples + self._grow_samples)
                self._state = _State.PREBUFFER
        return done

    def _play(self, out: npt.NDArray[np.int16], fade_out: int) -> None:
        """Copy ``len(out)`` queued samples into ``out`` (all channels), apply fades, advance and attribute."""
        n = out.shape[0]
        start = self._read_pos % self._capacity_samples
        first = min(n, self._capacity_samples - start)
        out[:first] = self._ring[start:start + first, None]
        if first < n:
            out[first:] = self._ring[:n - first, None]
        if self._fade_in_pos < self._fade_samples:
            k = min(n, self._fade_samples - self._fade_in_pos)
            gain = self._fade_in_gain[self._fade_in_pos:self._fade_in_pos + k, None]
            np.multiply(out[:k], gain, out=out[:k], casting="unsafe")
            self._fade_in_pos += k
        if fade_out:
            gain_out = self._gain[:fade_out]
            np.divide(self._countdown[self._fade_samples - fade_out:], fade_out + 1, out=gain_out)
            np.multiply(out[n - fade_out:], gain_out[:, None], out=out[n - fade_out:], casting="unsafe")
        self._account(n)

    def _account(self, n: int) -> None:
        """Advance the read position by ``n`` handed-out samples and credit them to their items."""
        pos = self._read_pos
        end = pos + n
        segments = self._segments
        while pos < end and segments:
            item = segments[0][1]
            seg_end = segments[1][0] if len(segments) > 1 else self._write_pos
            take = min(end, seg_end) - pos
            if item is not None and take > 0:
                before = self._played.get(item, 0)
                if before == 0:
                    self._items_started += 1
                self._played[item] = before + take
            if take > 0:
                self._last_item = item
            pos += max(take, 0)
            if pos >= seg_end and len(segments) > 1:
                segments.popleft()
            elif take <= 0:
                break
        self._read_pos = end

    def _complete_stream(self) -> None:
        """The queue emptied after end_of_stream: count the drain; a calm reply lets the target shrink."""
        if self._state is not _State.IDLE and self._stream_underruns == 0 and self._stream_has_item:
            self._target_samples = max(self._min_samples, self._target_samples - self._shrink_samples)
        self._drained += 1
        self._eos = False
        self._state = _State.IDLE
        self._segments.clear()

    def _segment_at(self, pos: int) -> str | None:
        """The item whose samples include stream position ``pos`` (which must be queued)."""
        item: str | None = None
        for start, seg_item in self._segments:
            if start > pos:
                break
            item = seg_item
        return item

    def _read(self, pos: int, n: int) -> Pcm:
        """A copy of ``n`` queued samples from stream position ``pos`` (loop thread only: it allocates)."""
        start = pos % self._capacity_samples
        first = min(n, self._capacity_samples - start)
        if first == n:
            return self._ring[start:start + n].copy()
        return np.concatenate((self._ring[start:], self._ring[:n - first]))
