"""One conversation per visitor (``core/conversation.py`` in the turn): after ``new_visitor_after_s`` of quiet the
conversation's items are deleted while idle; a family asking in quick succession keeps theirs."""

from __future__ import annotations

import pytest

from kioskd.core import events as ev
from tests.core.drive import SETTINGS, Driver, arms, ask, done, note, notes, online, reconnect, said, speaking

QUIET_S = SETTINGS.turn.new_visitor_after_s


def visit(d: Driver, n: int) -> list[str]:
    """One answered turn whose question and answer the service added as items; returns their ids."""
    ask(d)
    items = [f"item_q{n}", f"item_a{n}"]
    d.feed(ev.ItemAdded(items[0]))
    speaking(d, rid=f"resp_{n}", item=items[1])
    d.feed(ev.ItemAdded(items[1]))
    d.feed(ev.AudioDone(f"resp_{n}", items[1]))
    d.feed(done(f"resp_{n}"))
    return items


def test_after_the_quiet_the_next_visitor_starts_with_an_empty_conversation() -> None:
    """The quiet is counted from the end of the reply's playback; when it is over every item is deleted, while
    idle, with one conversation.reset line; nothing else is said to the service."""
    d = online()
    items = visit(d, 1)
    out = d.feed(ev.PlaybackDrained(0), after_s=1.2)
    assert arms(out)[ev.Timer.NEW_VISITOR] == pytest.approx(d.now + QUIET_S)
    out = d.feed(ev.Timeout(ev.Timer.NEW_VISITOR), after_s=QUIET_S)
    assert said(out) == [ev.DeleteItem(i) for i in items]
    assert note(out, "conversation.reset").fields == {"reason": "new visitor", "items": 2, "quiet_s": QUIET_S}
    assert d.phase == "idle"
    out = d.press(after_s=5.0)  # the next visitor: nothing left to delete, nothing re-armed
    assert not [a for a in out if isinstance(a, ev.DeleteItem)]


def test_a_family_asking_in_quick_succession_keeps_its_conversation() -> None:
    d = online()
    first = visit(d, 1)
    d.feed(ev.PlaybackDrained(0), after_s=1.2)
    visit(d, 2)  # pressed well within the quiet: the timer is disarmed
    d.feed(ev.PlaybackDrained(0), after_s=1.2)
    out = d.feed(ev.Timeout(ev.Timer.NEW_VISITOR), after_s=QUIET_S)
    assert [a.item_id for a in said(out)] == [*first, "item_q2", "item_a2"]  # both turns' items, once


def test_a_press_during_the_quiet_disarms_the_reset() -> None:
    d = online()
    visit(d, 1)
    d.feed(ev.PlaybackDrained(0), after_s=1.2)
    out = d.press(after_s=QUIET_S / 2)
    assert ev.Disarm(ev.Timer.NEW_VISITOR) in out
    assert d.feed(ev.Timeout(ev.Timer.NEW_VISITOR), after_s=QUIET_S) == []  # disarmed: dropped


def test_a_too_short_press_counts_the_quiet_from_its_release() -> None:
    d = online()
    visit(d, 1)
    d.feed(ev.PlaybackDrained(0), after_s=1.2)
    d.press(after_s=10.0)
    out = d.release(after_s=0.05)
    assert note(out, "turn.done").fields["outcome"] == "too_short"
    assert arms(out)[ev.Timer.NEW_VISITOR] == pytest.approx(d.now + QUIET_S)


def test_a_new_session_is_a_new_conversation() -> None:
    """A reconnect's session starts empty: its items are forgotten, nothing is deleted later."""
    from kioskd.errors import ConnectionLost

    d = online()
    visit(d, 1)
    d.feed(ev.PlaybackDrained(0), after_s=1.2)
    out = d.feed(ev.Disconnected(ConnectionLost(1006)), after_s=1.0)
    reconnect(d, after_s=arms(out)[ev.Timer.RECONNECT] - d.now)
    assert d.feed(ev.Timeout(ev.Timer.NEW_VISITOR), after_s=QUIET_S) == []
    assert not notes(d.log, "conversation.reset")
