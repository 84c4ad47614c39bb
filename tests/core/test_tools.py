"""Tool calls through the turn (``core/calls.py`` inside ``TurnMachine``), on the fake clock: the protocol done
right — run a call only when complete, answer every call_id, one reply after all outputs and after the calling
response is done, a preamble heard first, a barge-in cancels cleanly, a loop is stopped."""

from __future__ import annotations

import json

import pytest

from kioskd.core import events as ev
from kioskd.core.calls import CANCELLED, MAX_CALLS, TOO_MANY
from kioskd.core.turn import DONE_GRACE_S
from tests.core.drive import (
    SETTINGS, Driver, arms, ask, delta, done, earcons, leds, note, notes, online, said, speaking, then_played, usage_of,
)

TURN = SETTINGS.turn


def call(rid: str = "resp_1", call_id: str = "call_1", name: str = "lookup_exhibit_knowledge") -> ev.ToolCall:
    return ev.ToolCall(rid, f"item_{call_id}", call_id, name, '{"query": "how old is it"}')


def runs(actions: list[ev.Action]) -> list[ev.RunTool]:
    return [a for a in actions if isinstance(a, ev.RunTool)]


def replies(actions: list[ev.Action]) -> list[ev.RequestReply]:
    return [a for a in actions if isinstance(a, ev.RequestReply)]


def outputs(actions: list[ev.Action]) -> dict[str, str]:
    return {a.call_id: a.output for a in actions if isinstance(a, ev.ReturnToolOutput)}


def calling(d: Driver) -> None:
    """WAITING: the reply's response is created and ends with a completed call (no preamble)."""
    d.feed(ev.ResponseCreated("resp_1"), after_s=0.1)
    assert runs(d.feed(call(), after_s=0.2)) == [ev.RunTool("call_1", "lookup_exhibit_knowledge",
                                                            '{"query": "how old is it"}')]


def test_a_call_runs_when_complete_and_its_output_brings_one_reply_after_the_calling_response() -> None:
    """No preamble: the call runs at once; its result waits for the calling response's response.done; then the
    output and exactly one RequestReply go out; the answer is heard and the turn is answered, its line naming
    the tool and summing both responses' usage."""
    d = online()
    ask(d)
    calling(d)
    out = d.feed(ev.ToolResult("call_1", '{"found": true}'), after_s=0.01)
    assert said(out) == [] and d.phase == "waiting"  # the calling response is still open
    out = d.feed(done("resp_1", usage=usage_of(100)), after_s=0.05)
    assert said(out) == [ev.ReturnToolOutput("call_1", '{"found": true}'), ev.RequestReply("req_2", True)]
    assert d.phase == "waiting" and not notes(out, "turn.done")
    assert arms(out)[ev.Timer.REPLY_WAIT] == pytest.approx(d.now + TURN.reply_wait_s)
    speaking(d, rid="resp_2", item="item_2")
    d.feed(ev.AudioDone("resp_2", "item_2"))
    d.feed(done("resp_2", usage=usage_of(300)))
    line = note(d.feed(ev.PlaybackDrained(0), after_s=1.2), "turn.done").fields
    assert line["outcome"] == "answered" and line["tools"] == ["lookup_exhibit_knowledge"]
    assert line["responses"] == 2 and line["usage"]["total_tokens"] == 400


def test_the_result_may_come_after_the_calling_response() -> None:
    d = online()
    ask(d)
    calling(d)
    assert said(d.feed(done("resp_1"), after_s=0.05)) == []  # the tool still runs: nothing to send yet
    assert d.phase == "waiting" and not d.done_lines()
    out = d.feed(ev.ToolResult("call_1", "{}"), after_s=0.3)
    assert [type(a).__name__ for a in said(out)] == ["ReturnToolOutput", "RequestReply"]


def test_several_calls_in_one_response_go_back_together_with_one_reply() -> None:
    d = online()
    ask(d)
    d.feed(ev.ResponseCreated("resp_1"), after_s=0.1)
    d.feed(call(call_id="call_a"))
    d.feed(call(call_id="call_b", name="opening_hours"))
    d.feed(done("resp_1"))
    assert said(d.feed(ev.ToolResult("call_b", '"b"'))) == []  # call_a still runs
    out = d.feed(ev.ToolResult("call_a", '"a"'))
    assert outputs(out) == {"call_a": '"a"', "call_b": '"b"'} and len(replies(out)) == 1


def test_a_preamble_plays_first_and_the_answer_follows_it() -> None:
    """The calling response speaks "Let me check" before its call: the preamble plays; the answer's audio that
    arrives while it still plays is queued behind it (no gap, no overlap), and the turn stays SPEAKING."""
    d = online()
    ask(d)
    speaking(d, ms=600)  # the preamble
    assert runs(d.feed(call()))
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(ev.ToolResult("call_1", "{}"), after_s=0.01)
    out = d.feed(done("resp_1"), after_s=0.01)
    assert len(replies(out)) == 1 and d.phase == "speaking"
    d.feed(ev.ResponseCreated("resp_2"), after_s=0.1)
    out = d.feed(delta("resp_2", "item_2", 200), after_s=0.05)
    assert [type(a).__name__ for a in out if isinstance(a, ev.Play)] == ["Play"] and d.phase == "speaking"
    d.feed(ev.AudioDone("resp_2", "item_2"))
    d.feed(done("resp_2"))
    line = note(d.feed(ev.PlaybackDrained(0), after_s=1.0), "turn.done").fields
    assert line["outcome"] == "answered" and line["reply_ms"] == 800


def test_silence_after_a_preamble_while_the_tool_runs_is_covered_by_the_thinking_cue() -> None:
    """The preamble has played out and the tool is slow: back to WAITING (thinking LED), the thinking earcon
    after thinking_cue_s, and the reply wait re-timed; the answer then plays as usual."""
    d = online()
    ask(d)
    speaking(d, ms=400)
    d.feed(call())
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1"))
    out = d.feed(ev.PlaybackDrained(0), after_s=0.5)
    assert d.phase == "waiting" and leds(out) == [ev.Led.THINKING] and not d.done_lines()
    assert earcons(d.feed(ev.Timeout(ev.Timer.THINKING_CUE), after_s=TURN.thinking_cue_s)) == [ev.Earcon.THINKING]
    d.feed(ev.ToolResult("call_1", "{}"), after_s=0.5)
    speaking(d, rid="resp_2", item="item_2")
    assert d.phase == "speaking"


def test_a_barge_in_during_a_call_cancels_the_tool_and_answers_its_call_id() -> None:
    """A press while the tool runs: the run is cancelled, its call_id still gets an output (cancelled), no
    reply is asked for the old question, and a result that comes late changes nothing."""
    d = online()
    ask(d)
    calling(d)
    out = then_played(d, d.press(after_s=0.3), 0)
    assert ev.CancelTool("call_1") in out and outputs(out) == {"call_1": CANCELLED}
    assert not replies(out) and d.phase == "listening"
    late = d.feed(ev.ToolResult("call_1", "{}"), after_s=0.1)
    assert said(late) == [] and note(late, "turn.tool_late").level == "debug"
    line = note(d.feed(done("resp_1", "cancelled", usage_of(50))), "turn.done").fields
    assert line["outcome"] == "interrupted" and line["tools"] == ["lookup_exhibit_knowledge"]


def test_a_call_from_a_cancelled_response_is_answered_not_run() -> None:
    d = online()
    ask(d)
    d.feed(ev.ResponseCreated("resp_1"), after_s=0.1)
    then_played(d, d.press(after_s=0.1), 0)  # barge-in: resp_1 is cancelled
    out = d.feed(call())  # its call completes anyway
    assert not runs(out) and outputs(out) == {"call_1": CANCELLED}


def test_a_model_calling_in_a_loop_is_stopped() -> None:
    """After MAX_CALLS calls the follow-up may call no tool; a call past the limit is refused, not run, and
    still answered."""
    d = online()
    ask(d)
    rid = 0
    for n in range(MAX_CALLS):
        rid += 1
        d.feed(ev.ResponseCreated(f"resp_{rid}"), after_s=0.1)
        assert runs(d.feed(call(f"resp_{rid}", f"call_{n}")))
        d.feed(ev.ToolResult(f"call_{n}", "{}"))
        out = d.feed(done(f"resp_{rid}"))
        assert replies(out)[0].tools is (n + 1 < MAX_CALLS)
    rid += 1
    d.feed(ev.ResponseCreated(f"resp_{rid}"), after_s=0.1)
    out = d.feed(call(f"resp_{rid}", "call_extra"))  # the service called anyway
    assert not runs(out) and note(out, "turn.tool_refused").fields["reason"] == "too many calls"
    out = d.feed(done(f"resp_{rid}"))
    assert outputs(out) == {"call_extra": TOO_MANY} and replies(out)[0].tools is False


def test_a_failed_calling_response_ends_the_turn_and_answers_its_calls() -> None:
    d = online()
    ask(d)
    calling(d)
    out = d.feed(done("resp_1", "failed"), after_s=0.1)
    assert note(out, "turn.done").fields["outcome"] == "failed"
    assert ev.CancelTool("call_1") in out and outputs(out) == {"call_1": CANCELLED} and not replies(out)
    assert d.phase == "idle"


def test_the_reply_wait_bounds_a_tool_that_never_answers() -> None:
    d = online()
    ask(d)
    calling(d)
    d.feed(done("resp_1"), after_s=0.1)
    out = d.feed(ev.Timeout(ev.Timer.REPLY_WAIT), after_s=TURN.reply_wait_s)
    assert note(out, "turn.done").fields["outcome"] == "timed_out" and ev.CancelTool("call_1") in out
    assert json.loads(outputs(out)["call_1"])["status"] == "cancelled" and d.phase == "idle"


# ------------------------------------------------------------------------------------------------ review findings


def test_a_tool_result_after_the_session_dropped_changes_nothing() -> None:
    """The link drops while a tool runs: the run is cancelled (no output to a session that is gone), and its
    late result is a debug line, not a kioskd bug."""
    from kioskd.errors import ConnectionLost

    d = online()
    ask(d)
    calling(d)
    out = d.feed(ev.Disconnected(ConnectionLost(1006)), after_s=0.2)
    assert ev.CancelTool("call_1") in out and outputs(out) == {}
    late = d.feed(ev.ToolResult("call_1", "{}"), after_s=0.1)
    assert said(late) == [] and note(late, "turn.tool_late").level == "debug" and not notes(late, "turn.bug")


def test_a_preamble_heard_before_its_response_is_done_waits_for_the_tool() -> None:
    """The preamble plays out before the calling response's response.done: the turn waits (WAITING), it is not
    'answered' by the done-grace while the tool still runs."""
    d = online()
    ask(d)
    speaking(d, ms=400)
    d.feed(call())
    d.feed(ev.AudioDone("resp_1", "item_1"))
    out = d.feed(ev.PlaybackDrained(0), after_s=0.5)
    assert d.phase == "waiting" and arms(out)[ev.Timer.REPLY_WAIT] == pytest.approx(d.now + TURN.reply_wait_s)
    d.feed(ev.Timeout(ev.Timer.THINKING_CUE), after_s=TURN.thinking_cue_s)
    d.feed(ev.ToolResult("call_1", "{}"), after_s=0.5)
    out = d.feed(done("resp_1"))
    assert len(replies(out)) == 1 and not d.done_lines()


def test_a_call_arriving_after_its_preamble_played_waits_in_waiting() -> None:
    d = online()
    ask(d)
    speaking(d, ms=400)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(ev.PlaybackDrained(0), after_s=0.5)  # heard; response.done late: the grace is armed
    grace_at = d.now + DONE_GRACE_S
    out = d.feed(call(), after_s=0.3)
    assert runs(out) and d.phase == "waiting"
    # the 2 s grace is replaced by the reply wait: nothing ends the turn at grace_at
    wait_at = arms(out)[ev.Timer.REPLY_WAIT]
    assert wait_at == pytest.approx(d.now + TURN.reply_wait_s) and wait_at > grace_at


def test_a_follow_up_without_audio_while_the_preamble_plays_ends_when_it_has_played() -> None:
    d = online()
    ask(d)
    speaking(d, ms=600)
    d.feed(call())
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(ev.ToolResult("call_1", "{}"))
    d.feed(done("resp_1"))
    d.feed(ev.ResponseCreated("resp_2"), after_s=0.1)
    d.feed(done("resp_2"))  # the answer said nothing
    line = note(d.feed(ev.PlaybackDrained(0), after_s=0.5), "turn.done").fields
    assert line["outcome"] == "answered" and d.phase == "idle"  # no 10 s of silence, no apology


def test_a_call_re_arms_the_reply_wait_so_a_slow_tool_has_its_time() -> None:
    d = online()
    ask(d)
    d.feed(ev.ResponseCreated("resp_1"), after_s=0.1)
    out = d.feed(call(), after_s=TURN.reply_wait_s - 1)
    assert arms(out)[ev.Timer.REPLY_WAIT] == pytest.approx(d.now + TURN.reply_wait_s)


def test_a_call_cut_short_is_answered_never_run() -> None:
    d = online()
    ask(d)
    d.feed(ev.ResponseCreated("resp_1"), after_s=0.1)
    cut = ev.ToolCall("resp_1", "item_c", "call_c", "lookup_exhibit_knowledge", '{"qu', complete=False)
    out = d.feed(cut)
    assert not runs(out) and outputs(out) == {"call_c": CANCELLED}


def test_losing_the_session_forgets_its_conversation() -> None:
    """The link drops during the quiet: nothing will be deleted from a session that is gone."""
    from kioskd.errors import ConnectionLost

    d = online()
    ask(d)
    d.feed(ev.ItemAdded("item_q"))
    speaking(d)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(done("resp_1"))
    d.feed(ev.PlaybackDrained(0), after_s=1.0)
    out = d.feed(ev.Disconnected(ConnectionLost(1006)), after_s=1.0)
    assert ev.Disarm(ev.Timer.NEW_VISITOR) in out
