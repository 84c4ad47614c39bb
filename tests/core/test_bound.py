"""What a server can make kioskd write is bounded (``core/bound.py``): every field cut to a few hundred
characters, and the notes a server causes held back over their rate, with the count said once a while.

Floods are fed through the coupled core on a fake clock (``Driver``): what leaves it is what would be logged."""

from __future__ import annotations

import json

import pytest

from kioskd.core import events as ev
from kioskd.core.bound import BURST, FIELD_MAX_CHARS, REFILL_S, SUMMARY_S, NoteLimiter, cut
from tests.core.drive import Driver, arms, ask, kinds, note, notes, online

LONG_LINE = FIELD_MAX_CHARS + 100  # a cut field and its "… (+N chars)" tail


@pytest.mark.parametrize("value", [None, True, 7, 2.5, "short", {"type": "server_vad"}, ["a", 1]])
def test_cut_leaves_small_values_alone(value: object) -> None:
    assert cut(value) is value


def test_cut_keeps_the_head_of_a_long_string_and_says_how_much_went() -> None:
    text = "x" * 10_000
    out = cut(text)
    assert out.startswith("x" * FIELD_MAX_CHARS) and out.endswith(f"(+{10_000 - FIELD_MAX_CHARS} chars)")
    assert len(out) < LONG_LINE


def test_cut_turns_a_big_object_into_its_json_cut() -> None:
    obj = {"type": "server_vad", "junk": ["y" * 1000] * 2000}
    out = cut(obj)
    assert isinstance(out, str) and out.startswith('{"type":"server_vad","junk":["yyy') and len(out) < LONG_LINE


def server_errors(n: int, message: str = "x" * 10_000) -> list[ev.ServerError]:
    return [ev.ServerError("server_error", f"{i} {message}", "server_error", None) for i in range(n)]


def said(d: Driver, inputs: list[ev.ServerError], after_s: float = 0.0) -> int:
    """How many ws.server_error notes feeding ``inputs`` (the first ``after_s`` from now) makes."""
    out: list[ev.Action] = []
    for i, inp in enumerate(inputs):
        out += d.feed(inp, after_s=after_s if i == 0 else 0.0)
    return len(notes(out, "ws.server_error"))


def test_an_error_flood_is_a_few_short_lines_and_one_count() -> None:
    """5,000 server errors of 10 KB within 3 s: BURST ws.server_error notes, each field cut; the rest are held
    back, and SUMMARY_S after the first held back, one log.suppressed (warning) says how many."""
    d = online()
    out: list[ev.Action] = []
    for err in server_errors(5000):
        out += d.feed(err, after_s=3.0 / 5000)
    said = notes(out, "ws.server_error")
    assert len(said) == BURST
    assert max(len(json.dumps(n.fields)) for n in said) < LONG_LINE + 200
    assert notes(out, "log.suppressed") == []
    due_s = arms(out)[ev.Timer.LOG_SUMMARY]
    assert due_s == pytest.approx(d.now - 3.0 + SUMMARY_S, abs=0.01)
    summary = note(d.feed(ev.Timeout(ev.Timer.LOG_SUMMARY), after_s=due_s - d.now), "log.suppressed")
    assert (summary.level, summary.fields["name"], summary.fields["count"]) == ("warning", "ws.server_error", 4995)
    assert d.phase == "idle"


def test_after_a_burst_one_line_a_refill_period_and_a_full_burst_after_quiet() -> None:
    d = online()
    assert said(d, server_errors(BURST + 3)) == BURST
    assert said(d, server_errors(2), after_s=REFILL_S) == 1
    assert said(d, server_errors(BURST + 1), after_s=BURST * REFILL_S) == BURST


def test_notes_kioskd_causes_itself_are_never_held_back() -> None:
    """A flood of server errors does not hold back the turn's own lines: phases and turn.done still come."""
    d = online()
    said(d, server_errors(100))
    out = ask(d)
    out += d.feed(ev.ServerError("server_error", "refused", "server_error", "req_1"))
    assert [n.fields["outcome"] for n in notes(out, "turn.done")] == ["failed"]
    assert len(notes(out, "turn.phase")) == 3  # listening, waiting, idle


def test_a_bad_event_flood_with_a_different_text_each_time_is_one_warning() -> None:
    """20,000 malformed frames whose detail differs every time: one warning for the kind; the debug repeats are
    held back over their rate like any server-caused line, and counted."""
    d = online()
    out: list[ev.Action] = []
    for i in range(20_000):
        out += d.feed(ev.BadEvent("conversation.item.truncated", "bad_field", f"not a number: 'soon-{i}'"))
    assert [n.level for n in notes(out, "ws.bad_event")] == ["warning"] + ["debug"] * BURST
    summary = notes(d.feed(ev.Timeout(ev.Timer.LOG_SUMMARY), after_s=SUMMARY_S), "log.suppressed")
    assert [(s.level, s.fields["name"], s.fields["count"]) for s in summary] == [
        ("debug", "ws.bad_event", 20_000 - 1 - BURST)]


def test_a_huge_session_object_is_logged_cut() -> None:
    """session.updated reporting a 200 KB turn_detection: ws.session_mismatch carries it cut to a few hundred
    characters."""
    d = Driver()
    d.begin()
    d.feed(ev.SessionCreated("sess_1", None))
    mismatch = note(d.feed(ev.SessionUpdated({"type": "server_vad", "junk": "y" * 200_000})), "ws.session_mismatch")
    assert isinstance(mismatch.fields["turn_detection"], str)
    assert len(mismatch.fields["turn_detection"]) < LONG_LINE


def test_the_limiter_alone_bounds_per_name_and_level() -> None:
    limiter = NoteLimiter(frozenset({"ws.x"}), burst=2, refill_s=10.0, summary_s=5.0)
    notes_in: list[ev.Action] = [ev.Note("ws.x", "warning"), ev.Note("ws.x", "debug"), ev.Note("turn.phase")] * 4
    out = limiter.limit(notes_in, 0.0)
    assert kinds(out, publish=True) == ["Arm"]
    assert [(n.name, n.level) for n in out if isinstance(n, ev.Note)] == (
        [("ws.x", "warning"), ("ws.x", "debug"), ("turn.phase", "info")] * 2 + [("turn.phase", "info")] * 2)
    assert {(n.level, n.fields["count"]) for n in limiter.summary(5.0) if isinstance(n, ev.Note)} == {
        ("warning", 2), ("debug", 2)}
    assert limiter.summary(6.0) == []
