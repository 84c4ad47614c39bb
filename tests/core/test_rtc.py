"""The WebRTC codec (core/rtc.py): intentions → data-channel events, the remote track's audio → the reply's inputs."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from kioskd.core import events as ev
from kioskd.core.realtime import parse_server_event
from kioskd.core.rtc import QUIET_S, RTP_TAIL_S, RtcDownlink, RtcEncoder

SOUND = np.full(480, 3000, dtype=np.int16)
SILENCE = np.zeros(480, dtype=np.int16)


def server(kind: str, **fields: Any) -> tuple[dict[str, Any], ev.Input]:
    data = {"type": kind, "event_id": "e", **fields}
    return data, parse_server_event(json.dumps(data))


def part_added(rid: str = "r1", iid: str = "i1") -> tuple[dict[str, Any], ev.Input]:
    return server("response.content_part.added", response_id=rid, item_id=iid, output_index=0, content_index=0,
                  part={"type": "audio", "transcript": ""})


def response_done(rid: str = "r1", status: str = "completed") -> tuple[dict[str, Any], ev.Input]:
    return server("response.done", response={"id": rid, "object": "realtime.response", "status": status,
                                             "output": [], "usage": {"total_tokens": 5}})


def feed(down: RtcDownlink, pair: tuple[dict[str, Any], ev.Input], now: float) -> list[ev.Input]:
    return down.event(pair[0], pair[1], now)


# ------------------------------------------------------------------------------------------------ encoder

def test_the_session_names_no_audio_format_and_keeps_push_to_talk() -> None:
    [event] = RtcEncoder().encode(ev.ConfigureSession("cfg_1", "marin", "Be brief."))
    assert event["type"] == "session.update" and event["event_id"] == "cfg_1"
    audio = event["session"]["audio"]
    assert "format" not in audio["input"] and "format" not in audio["output"]
    assert audio["input"]["turn_detection"] is None and audio["output"]["voice"] == "marin"


def test_audio_goes_on_the_track_and_clear_output_is_an_event() -> None:
    enc = RtcEncoder()
    assert enc.encode(ev.AppendAudio(SOUND)) == []
    assert [e["type"] for e in enc.encode(ev.Commit())] == ["input_audio_buffer.commit"]
    assert [e["type"] for e in enc.encode(ev.ClearOutput())] == ["output_audio_buffer.clear"]
    barge = [*enc.encode(ev.CancelReply("r1")), *enc.encode(ev.ClearOutput()), *enc.encode(ev.Truncate("i1", 640))]
    assert [e["type"] for e in barge] == ["response.cancel", "output_audio_buffer.clear", "conversation.item.truncate"]
    assert barge[2]["audio_end_ms"] == 640 and barge[0]["response_id"] == "r1"


# ------------------------------------------------------------------------------------------------ downlink

def test_track_audio_is_nobodys_until_an_audio_part_opens() -> None:
    down = RtcDownlink()
    assert down.frame(SOUND, 0.0) == []
    feed(down, part_added(), 0.0)
    assert down.frame(SILENCE, 0.05) == []  # the server's idle track before the first sound: not the reply
    [delta] = down.frame(SOUND, 0.1)
    assert isinstance(delta, ev.AudioDelta) and (delta.response_id, delta.item_id) == ("r1", "i1")
    assert down.frame(SILENCE, 0.12)  # a pause within the reply is the reply's


def test_the_reply_end_waits_for_the_server_to_drain_and_the_last_packets() -> None:
    down = RtcDownlink()
    feed(down, part_added(), 0.0)
    down.frame(SOUND, 0.1)
    assert feed(down, server("response.output_audio.done", response_id="r1", item_id="i1", output_index=0,
                             content_index=0), 0.2) == []
    assert feed(down, response_done(), 0.3) == []  # generated: not yet played out on the server
    assert down.frame(SOUND, 0.5)  # still the reply's
    assert down.due(0.5) == []
    feed(down, server("output_audio_buffer.stopped", response_id="r1"), 2.0)
    assert down.frame(SOUND, 2.0 + RTP_TAIL_S / 2)  # packets still on their way belong to it
    assert down.frame(SILENCE, 2.0 + RTP_TAIL_S / 2) == []  # the server's idle silence after it does not
    assert down.due(2.0 + RTP_TAIL_S / 2) == []
    released = down.due(2.0 + RTP_TAIL_S)
    assert [type(i) for i in released] == [ev.AudioDone, ev.ResponseDone]
    assert down.frame(SOUND, 2.5) == []  # after the reply: nobody's


def test_other_events_pass_at_once_in_order() -> None:
    down = RtcDownlink()
    feed(down, part_added(), 0.0)
    out = feed(down, server("conversation.item.added", item={"id": "i9", "type": "message"}), 0.1)
    assert [type(i) for i in out] == [ev.ItemAdded]
    assert [type(i) for i in feed(down, response_done("r2"), 0.2)] == [ev.ResponseDone]  # not the one playing


def test_a_server_that_never_says_stopped_ends_the_reply_after_quiet() -> None:
    down = RtcDownlink()
    feed(down, part_added(), 0.0)
    down.frame(SOUND, 1.0)
    feed(down, response_done(), 1.1)
    down.frame(SILENCE, 1.5)  # decoded silence is no sound
    assert down.due(1.0 + QUIET_S - 0.01) == []
    assert [type(i) for i in down.due(1.0 + QUIET_S)] == [ev.ResponseDone]


def test_quiet_alone_does_not_end_a_reply_still_being_generated() -> None:
    down = RtcDownlink()
    feed(down, part_added(), 0.0)
    assert down.due(5.0) == []  # no response.done yet: a long pause in the speech is still the reply


def test_a_cancelled_replys_audio_is_dropped_and_its_end_delivered() -> None:
    down = RtcDownlink()
    feed(down, part_added(), 0.0)
    feed(down, server("response.output_audio.done", response_id="r1", item_id="i1", output_index=0,
                      content_index=0), 0.1)
    released = down.cancel("r1")
    assert [type(i) for i in released] == [ev.AudioDone]
    assert down.frame(SOUND, 0.2) == []
    assert [type(i) for i in feed(down, response_done(status="cancelled"), 0.3)] == [ev.ResponseDone]
    assert down.cancel(None) == []  # nothing playing


@pytest.mark.parametrize("said", [None, "r1"])
def test_cleared_closes_the_reply_like_stopped(said: str | None) -> None:
    down = RtcDownlink()
    feed(down, part_added(), 0.0)
    down.frame(SOUND, 0.05)
    feed(down, response_done(), 0.1)
    fields = {} if said is None else {"response_id": said}
    feed(down, server("output_audio_buffer.cleared", **fields), 0.2)
    assert [type(i) for i in down.due(0.2 + RTP_TAIL_S)] == [ev.ResponseDone]


def test_a_new_audio_part_releases_what_the_last_one_held() -> None:
    down = RtcDownlink()
    feed(down, part_added("r1", "i1"), 0.0)
    feed(down, response_done("r1"), 0.1)
    out = feed(down, part_added("r2", "i2"), 0.2)
    assert [type(i) for i in out] == [ev.ResponseDone, ev.ServerEvent]  # the held end first, then the event
    [delta] = down.frame(SOUND, 0.3)
    assert delta.response_id == "r2"  # type: ignore[attr-defined]


def test_a_late_cleared_naming_no_response_does_not_end_the_next_reply_before_it_sounds() -> None:
    """A barge-in's clear answered late, with no response_id, after the next reply's part opened: the next reply
    keeps its audio; one naming another response is ignored too."""
    down = RtcDownlink()
    feed(down, part_added("r2", "i2"), 0.0)
    feed(down, server("output_audio_buffer.cleared"), 0.01)
    feed(down, server("output_audio_buffer.cleared", response_id="r1"), 0.02)
    feed(down, response_done("r2"), 0.03)
    assert down.due(0.5) == []
    assert down.frame(SOUND, 0.5)  # still r2's
