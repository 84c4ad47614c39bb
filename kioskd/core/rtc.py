"""The WebRTC transport's codec: intentions → data-channel events, and the remote track's audio → the inputs the
turn knows (reference webrtc.md §1.4-§1.6).

Over WebRTC the same GA events travel on the ``oai-events`` data channel, but the audio does not: the question
goes up as an Opus track (the adapter's), and the reply comes down as a track the server paces in real time, with
no ``response_id`` or ``item_id`` on it. So this module does two things the WebSocket codec does not:

- ``RtcEncoder``: ``AppendAudio`` is no event (the adapter puts it on the track), ``ClearOutput`` is
  ``output_audio_buffer.clear`` (the server owns the output buffer), the session names no audio format (SDP
  negotiated it), and ``Commit`` has no µ-law tail.
- ``RtcDownlink``: the remote track's audio belongs to the audio part the data channel last opened
  (``response.content_part.added``); the events that end that audio (``response.output_audio.done``,
  ``response.done``) come before the server has played it out (it generates faster than real time), so they are
  held until ``output_audio_buffer.stopped`` / ``cleared`` plus ``RTP_TAIL_S`` for the packets still on their
  way, or until the track has been quiet for ``QUIET_S`` (a server that never says so). The turn then sees what
  it sees over a WebSocket: deltas, then the audio's end, then the response's.

Pure: time comes in as ``now`` (seconds, any monotonic origin).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from kioskd.core import events as ev
from kioskd.core.pcm import Pcm
from kioskd.core.realtime import RealtimeEncoder

#: after the server says its output buffer drained, the RTP packets of its last 20 ms frames may still be on the
#: way (and a few in the receiver's jitter buffer, 40 ms): their audio still belongs to the reply
RTP_TAIL_S: Final = 0.15
#: a reply whose response.done came and whose track then carried no sound for this long is over, even if no
#: output_audio_buffer.stopped came (reference §1.5 says it does; a server that forgets must not hang a turn)
QUIET_S: Final = 1.0
#: a sample above this (of 32,767) is sound; decoded Opus silence is not exactly zero
SOUND_LEVEL: Final = 64


class RtcEncoder(RealtimeEncoder):
    """Intentions → GA client events for the data channel; the question's audio is not among them."""

    def encode(self, intent: ev.Intent) -> list[dict[str, Any]]:
        match intent:
            case ev.ConfigureSession():
                events = super().encode(intent)
                audio = events[0]["session"]["audio"]
                audio["input"].pop("format", None)  # negotiated in the SDP: Opus
                audio["output"].pop("format", None)
                return events
            case ev.AppendAudio():
                return []  # on the microphone track
            case ev.Commit():
                return [self._event("input_audio_buffer.commit")]
            case ev.ClearOutput():
                return [self._event("output_audio_buffer.clear")]
        return super().encode(intent)


@dataclass
class RtcDownlink:
    """Which reply the remote track's audio is, and the reply's end held until its audio has come."""

    #: (response_id, item_id) of the audio part the track is playing, or None: audio now is nobody's
    playing: tuple[str, str] | None = None
    cancelled: set[str] = field(default_factory=set)
    held: list[ev.Input] = field(default_factory=list)
    drained_at: float | None = None  # when the server said the output buffer stopped or was cleared
    sound_at: float | None = None  # the last frame with sound in it (the part's opening, before any)
    sounded: bool = False  # the playing part has had sound: silence before it is the server's idle track

    def event(self, data: dict[str, Any], inp: ev.Input, now: float) -> list[ev.Input]:
        """One data-channel event (its JSON and its parsed input): the inputs to deliver now."""
        out: list[ev.Input] = []
        kind = data.get("type")
        if kind == "response.content_part.added" and _audio_part(data):
            out += self._release()
            self.playing = (str(data.get("response_id")), str(data.get("item_id")))
            self.sound_at, self.sounded = now, False
        elif kind in ("output_audio_buffer.stopped", "output_audio_buffer.cleared") and self.playing is not None:
            said = data.get("response_id")
            # one that names no response is taken only once the part has sounded: a late one for a reply kioskd
            # cancelled must not end the next reply before its audio came (the quiet rule still ends that one)
            if said == self.playing[0] or (said is None and self.sounded):
                self.drained_at = now
        if (self.playing is not None and self.playing[0] not in self.cancelled
                and isinstance(inp, (ev.AudioDone, ev.ResponseDone)) and inp.response_id == self.playing[0]):
            self.held.append(inp)
            return out
        return [*out, inp]

    def frame(self, pcm: Pcm, now: float) -> list[ev.Input]:
        """24 kHz PCM from the remote track: a delta of the reply playing, or nothing (silence between replies,
        or audio of a reply kioskd cancelled)."""
        if self.playing is None or self.playing[0] in self.cancelled or not pcm.size:
            return []
        if int(np.abs(pcm.astype(np.int32)).max()) > SOUND_LEVEL:
            self.sound_at, self.sounded = now, True
        elif not self.sounded or self.drained_at is not None:
            return []  # the server's idle silence before the reply's first sound or after it drained
        return [ev.AudioDelta(response_id=self.playing[0], item_id=self.playing[1], pcm=pcm)]

    def cancel(self, response_id: str | None) -> list[ev.Input]:
        """kioskd cancelled a response (None: whichever is open): its audio is dropped from now on and what was
        held for it is delivered."""
        if response_id is None and self.playing is not None:
            response_id = self.playing[0]
        if response_id is None:
            return []
        self.cancelled.add(response_id)
        if self.playing is not None and self.playing[0] == response_id:
            return self._release()
        return []

    def due(self, now: float) -> list[ev.Input]:
        """What the passing of time releases: the held end of a reply whose audio has all come."""
        if self.playing is None:
            return []
        if self.drained_at is not None and now >= self.drained_at + RTP_TAIL_S:
            return self._release()
        quiet = self.sound_at is None or now >= self.sound_at + QUIET_S
        if quiet and any(isinstance(i, ev.ResponseDone) for i in self.held):
            return self._release()
        return []

    def _release(self) -> list[ev.Input]:
        out, self.held = self.held, []
        self.playing, self.drained_at, self.sound_at, self.sounded = None, None, None, False
        if len(self.cancelled) > 64:  # ids of long-gone responses: keep the set small
            self.cancelled.clear()
        return out


def _audio_part(data: dict[str, Any]) -> bool:
    part = data.get("part")
    return isinstance(part, dict) and part.get("type") == "audio" and isinstance(data.get("response_id"), str) \
        and isinstance(data.get("item_id"), str)
