"""The playout (jitter) buffer between reply audio arriving from asyncio and the PortAudio output callback.

Theory of operation
-------------------
Realtime audio arrives in order and faster than real time, so the buffer only fills; the risks are the gap before
the first delta, stalls mid-reply and barge-in (reference/pi-audio.md §7). The buffer therefore does four things:

* **Jitter estimate.** Each timed push (``now_s`` given) of reply audio is compared with the stream's *schedule*:
  a player that started at the stream's first arrival with no prebuffer would need the chunk's first sample
  ``position / rate`` seconds after that arrival. ``lateness = arrival - that deadline``. The estimate rises at
  once to any larger lateness and falls slowly (1/64 of the way per on-time arrival) towards smaller ones: one
  late delta is enough to be wary, many calm ones are needed to relax (the "rise fast, fall slowly" average of
  baresip's aubuf, and NetEq's peak detector; reference/pi-audio.md §7.3).
* **Prebuffer.** ``target = clamp(max(jitter + margin, floor), min_ms, max_ms)``. ``floor`` is what underruns
  taught: it starts at ``prebuffer_ms``, is set to ``target + GROW_MS`` by each underrun and drops by
  ``SHRINK_MS`` for each stream that completes without one (down to ``min_ms``). A stream starts with the first
  push after the buffer was idle; playback starts ``target`` after the stream's schedule origin when ``fill()`` is
  given the time (and at least one block is queued), or, with no clock, once ``target`` worth of audio is queued.
  Time-based is what a jitter buffer needs: the first delta often carries more audio than the target, and starting
  on it at once would leave the second delta no slack. After an underrun it restarts on depth (``target`` queued).
  ``end_of_stream()`` lets the tail play below the target. Playback (re)starts with a ``fade_ms`` fade-in.
* **Underrun.** When a block cannot be filled before ``end_of_stream()``, what is queued plays, followed by a
  ``fade_ms`` fade-out synthesized from the last samples played (mirrored, so it joins them without a step) and
  silence; one underrun is counted and the stream goes back to prebuffering. The synthesized fade is not reply
  audio and never counts as played. The final drain after ``end_of_stream()`` is not an underrun.
* **Interrupt.** ``interrupt()`` drops the queue; the next ``fill()`` plays a ``fade_ms`` fade-out of what followed,
  then silence. The played position counts every frame handed to ``fill()`` for the item, fade frames included:
  audio handed to the device is heard even if zeros follow (reference/pi-audio.md §8), so no output latency is
  subtracted.

Items: ``push`` records where each item's samples start in the stream; ``fill`` attributes the frames it hands
out to those items. Earcons are pushed with ``item_id=None``, never count for an item and never feed the jitter
estimate (they arrive whole).

Threads: one producer (``push``, ``end_of_stream``, ``interrupt``, ``played_ms``, ``stats`` on the asyncio loop
thread) and one consumer (``fill`` in the PortAudio callback). The class holds no lock: the audio adapter calls
every method under its own ``threading.Lock``. No clock is read: time enters only as the ``now_s`` arguments
(any monotonic clock, the same for ``push`` and ``fill``).
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Final

import numpy as np
import numpy.typing as npt

from kioskd.core.pcm import Pcm, ms_to_samples, samples_to_ms

GROW_MS: Final = 10.0  # per underrun, over the target that failed: the jitter estimate already covers late deltas
SHRINK_MS: Final = 10.0  # per calm stream: rise fast, fall slowly (baresip aubuf)
JITTER_RISE: Final = 1 / 2  # share of the way the estimate rises per later arrival: two late deltas nearly suffice
JITTER_FALL: Final = 1 / 64  # share of the way it falls per calmer arrival: halves in ~4.5 s of 100 ms deltas
MAX_TRACKED_ITEMS: Final = 256  # played counters kept for barge-in; older items are forgotten


class _State(Enum):
    IDLE = "idle"  # no stream: nothing queued since the last drain or interrupt
    PREBUFFER = "prebuffer"  # a stream is waiting for its target (at its start or after an underrun)
    PLAYING = "playing"


class PlayoutBuffer:
    """Single producer (asyncio loop thread, under the adapter's lock) / single consumer (PortAudio callback).

    ``rate_hz`` is the rate of the samples pushed and filled (the output device's rate); every ``*_ms`` figure is
    converted at that rate. ``prebuffer_ms`` is the first target; ``min_ms`` / ``max_ms`` bound every target;
    ``margin_ms`` is added to the jitter estimate.
    """

    def __init__(self, rate_hz: int, channels: int = 1, *, capacity_s: float = 30.0, prebuffer_ms: float = 30.0,
                 min_ms: float = 10.0, max_ms: float = 400.0, fade_ms: float = 5.0, margin_ms: float = 10.0) -> None:
        if rate_hz <= 0 or channels <= 0:
            raise ValueError(f"rate_hz and channels must be positive, got {rate_hz} and {channels}")
        if not 0 < min_ms <= max_ms:
            raise ValueError(f"need 0 < min_ms <= max_ms, got {min_ms} and {max_ms}")
        if margin_ms < 0:
            raise ValueError(f"margin_ms must be 0 or more, got {margin_ms}")
        self.rate_hz: Final = rate_hz
        self.channels: Final = channels
        self._capacity_samples: Final = max(1, ms_to_samples(capacity_s * 1000, rate_hz))
        self._min_samples: Final = ms_to_samples(min_ms, rate_hz)
        self._max_samples: Final = ms_to_samples(max_ms, rate_hz)
        self._grow_samples: Final = ms_to_samples(GROW_MS, rate_hz)
        self._shrink_samples: Final = ms_to_samples(SHRINK_MS, rate_hz)
        self._margin_samples: Final = ms_to_samples(margin_ms, rate_hz)
        self._floor_samples = self._clamp(ms_to_samples(prebuffer_ms, rate_hz))
        self._jitter_samples = 0.0  # the lateness estimate, in samples at rate_hz
        self._fade_samples: Final = max(1, ms_to_samples(fade_ms, rate_hz))

        # everything fill() touches is allocated here, once
        self._ring = np.zeros(self._capacity_samples, dtype=np.int16)
        fade = self._fade_samples
        self._fade_in_gain: Final = (np.arange(1, fade + 1, dtype=np.float32) / (fade + 1)).astype(np.float32)
        self._fade_out_gain: Final = (np.arange(fade, 0, -1, dtype=np.float32) / (fade + 1)).astype(np.float32)
        self._history = np.zeros(fade, dtype=np.int16)  # the last samples handed out, newest last
        self._tail = np.zeros(fade, dtype=np.int16)  # a fade-out still to hand out (interrupt, underrun)
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
        self._stream_pos = 0  # write position where the current stream began
        self._origin_s: float | None = None  # the stream's schedule origin: first timed arrival minus its position
        self._stream_underruns = 0
        self._stream_has_item = False

        self._underruns = 0
        self._overflows = 0
        self._overflow_samples = 0
        self._late_pushes = 0
        self._late_samples = 0
        self._streams = 0
        self._drained = 0
        self._items_started = 0
        self._fill_errors = 0

    # ------------------------------------------------------------------------------------------ producer side

    def push(self, pcm: Pcm, item_id: str | None, now_s: float | None = None) -> None:
        """Queue mono int16 samples at ``rate_hz`` for ``item_id`` (None: an earcon), arrived at ``now_s``
        (None: unknown, no jitter observation). Never blocks.

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
            self._stream_pos = self._write_pos
            self._origin_s = None
            self._fade_in_pos = self._fade_samples
        elif self._state is _State.PREBUFFER and self._stream_underruns:
            self._late_pushes += 1  # audio that arrived after the queue had run dry: past its playout deadline
            self._late_samples += samples.size
        if now_s is not None:
            self._observe(now_s, item_id is not None)
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

    def _observe(self, now_s: float, is_reply: bool) -> None:
        """One arrival at ``now_s`` of the samples about to be written: anchor the schedule or update the estimate."""
        position_s = (self._write_pos - self._stream_pos) / self.rate_hz
        if self._origin_s is None:
            self._origin_s = now_s - position_s
            return
        if not is_reply:
            return
        late = min(max(0.0, (now_s - self._origin_s - position_s) * self.rate_hz), float(self._max_samples))
        share = JITTER_RISE if late > self._jitter_samples else JITTER_FALL
        self._jitter_samples += (late - self._jitter_samples) * share

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
        if self._state is _State.PLAYING and self._tail_pos >= self._tail_len:
            n = min(self._fade_samples, depth)
            if n == self._fade_samples:  # fade out what would have played next: it is heard, so it counts
                tail = self._read(self._read_pos, n).astype(np.float32)
                if self._fade_in_pos < self._fade_samples:  # still fading in: keep that envelope under the fade-out
                    gain_in = np.ones(n, dtype=np.float32)
                    k = min(n, self._fade_samples - self._fade_in_pos)
                    gain_in[:k] = self._fade_in_gain[self._fade_in_pos:self._fade_in_pos + k]
                    tail *= gain_in
                tail *= self._fade_out_gain
                self._tail[:] = tail.astype(np.int16)
                self._tail_len, self._tail_pos = n, 0
                self._account(n)
            else:  # too little queued for a fade: mirror what was last handed out instead (not reply audio)
                self._mirror_tail()
        self._read_pos = self._write_pos
        self._segments.clear()
        self._state = _State.IDLE
        self._eos = False
        return item, self.played_ms(item) if item is not None else 0

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` handed to ``fill()`` so far (0 for an unknown item)."""
        return samples_to_ms(self._played.get(item_id, 0), self.rate_hz)

    @property
    def current_item(self) -> str | None:
        """The item whose samples ``fill()`` hands out now, or handed out last (None: an earcon or nothing)."""
        return self._segment_at(self._read_pos) if self._write_pos > self._read_pos else self._last_item

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing left to hand out (no stream, no fade tail)."""
        return self._state is _State.IDLE and self._tail_pos >= self._tail_len and self._write_pos == self._read_pos

    @property
    def playing(self) -> bool:
        """True while a stream is being handed to the device (not while prebuffering, idle or fading out)."""
        return self._state is _State.PLAYING

    @property
    def drained(self) -> int:
        """Counter: increments each time the buffer empties after ``end_of_stream()``."""
        return self._drained

    @property
    def items_started(self) -> int:
        """Counter: increments each time the first frames of a new item are handed to ``fill()``."""
        return self._items_started

    @property
    def capacity_s(self) -> float:
        """How much audio the ring holds (queued, not yet handed to the device)."""
        return self._capacity_samples / self.rate_hz

    @property
    def overflow_samples(self) -> int:
        """Counter: samples dropped because the ring was full (the newest of each push that did not fit)."""
        return self._overflow_samples

    @property
    def overflows(self) -> int:
        """Counter: pushes that did not fit whole."""
        return self._overflows

    @property
    def target_samples(self) -> int:
        """The prebuffer target now in force: ``clamp(max(jitter + margin, floor), min, max)``."""
        return self._clamp(max(int(self._jitter_samples) + self._margin_samples, self._floor_samples))

    def stats(self) -> dict[str, int | float]:
        """Counters, the current depth and target and the jitter estimate, for status and logs.

        ``underruns``: mid-stream starvations; ``jitter_ms``: the lateness estimate; ``late_pushes`` /
        ``late_ms``: pushes (and audio) that arrived while a stream was starved, i.e. after their playout deadline;
        ``overflows`` / ``overflow_ms``: pushes (and audio) that did not fit; ``streams``: streams started;
        ``drained``: drains after end_of_stream; ``fill_errors``: fill() bugs answered with silence.
        """
        return {
            "underruns": self._underruns,
            "depth_ms": samples_to_ms(self._write_pos - self._read_pos, self.rate_hz),
            "target_ms": samples_to_ms(self.target_samples, self.rate_hz),
            "jitter_ms": round(self._jitter_samples * 1000 / self.rate_hz, 1),
            "late_pushes": self._late_pushes,
            "late_ms": samples_to_ms(self._late_samples, self.rate_hz),
            "overflows": self._overflows,
            "overflow_ms": samples_to_ms(self._overflow_samples, self.rate_hz),
            "streams": self._streams,
            "drained": self._drained,
            "items_started": self._items_started,
            "fill_errors": self._fill_errors,
        }

    # ------------------------------------------------------------------------------------------ consumer side

    def fill(self, out: npt.NDArray[np.int16], now_s: float | None = None) -> None:
        """PortAudio output callback body: write the whole ``(frames, channels)`` int16 block; ``now_s`` is the
        callback's time on the clock ``push`` was given (None: start on depth alone).

        Total: never raises, never blocks, allocates no large arrays; zeros when idle; mono duplicated to every
        channel. Any frame count works.
        """
        try:
            if out.ndim not in (1, 2):
                raise ValueError(f"output block of shape {out.shape}")
            block = out if out.ndim == 2 else out.reshape(-1, 1)
            done = self._fill(block, now_s)
            block[done:] = 0
        except Exception:  # a bug here must not stop the stream: play silence and count it
            self._fill_errors += 1
            try:
                out.fill(0)
            except Exception:
                pass

    def _fill(self, out: npt.NDArray[np.int16], now_s: float | None) -> int:
        """Fill ``out`` from the start; return how many frames were written (the rest is for zeros)."""
        frames = out.shape[0]
        done = 0
        while done < frames:
            if self._tail_pos < self._tail_len:
                n = min(frames - done, self._tail_len - self._tail_pos)
                out[done:done + n] = self._tail[self._tail_pos:self._tail_pos + n, None]
                self._tail_pos += n
                done += n
                continue
            depth = self._write_pos - self._read_pos
            want = frames - done
            if self._state is not _State.PLAYING:
                if self._eos and depth == 0:
                    self._complete_stream()
                    break
                if depth == 0 or not (self._eos or self._ready(depth, want, now_s)):
                    break
                self._state = _State.PLAYING
                self._fade_in_pos = 0
            n = min(want, depth)
            self._play(out[done:done + n])
            done += n
            if n == depth and self._eos:
                self._complete_stream()
                break
            if n < want:
                # ran dry before the end was announced: fade out from what was just played instead of clicking
                # into silence, and wait for the target again
                self._mirror_tail()
                self._underruns += 1
                self._stream_underruns += 1
                self._floor_samples = self._clamp(self.target_samples + self._grow_samples)
                self._state = _State.PREBUFFER
        return done

    def _ready(self, depth: int, want: int, now_s: float | None) -> bool:
        """May a prebuffering stream start playing now?"""
        target = self.target_samples
        if depth >= self._max_samples:
            return True
        if self._stream_underruns or now_s is None or self._origin_s is None:
            return depth >= target
        return depth >= want and (now_s - self._origin_s) * self.rate_hz >= target - 0.5  # half a sample: rounding

    def _play(self, out: npt.NDArray[np.int16]) -> None:
        """Copy ``len(out)`` queued samples into ``out`` (all channels), apply the fade-in, advance and attribute."""
        n = out.shape[0]
        if n == 0:
            return
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
        fade = self._fade_samples
        if n >= fade:
            self._history[:] = out[n - fade:, 0]
        else:
            self._history[:fade - n] = self._history[n:]
            self._history[fade - n:] = out[:, 0]
        self._account(n)

    def _mirror_tail(self) -> None:
        """Queue a fade-out that continues the last samples handed out backwards (history reversed): it starts
        where they ended, so there is no step, and falls to zero over ``fade_ms``. Not reply audio."""
        np.multiply(self._history[::-1], self._fade_out_gain, out=self._tail, casting="unsafe")
        self._tail_len, self._tail_pos = self._fade_samples, 0

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
        """The queue emptied after end_of_stream: count the drain; a calm reply lets the floor shrink."""
        if self._state is not _State.IDLE and self._stream_underruns == 0 and self._stream_has_item:
            self._floor_samples = max(self._min_samples, self._floor_samples - self._shrink_samples)
        self._drained += 1
        self._eos = False
        self._state = _State.IDLE
        self._segments.clear()

    def _clamp(self, samples: int) -> int:
        return min(max(samples, self._min_samples), self._max_samples)

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
