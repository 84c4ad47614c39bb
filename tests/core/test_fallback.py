"""The fallback backend and the A/B arms, in the core: which arm answers a visitor, where their intentions go, what
each turn is billed. Chat Completions replies reach the core as the same inputs as Realtime ones (the codec is
tested in test_chat.py), so these tests feed those inputs with ``backend="chat"``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from kioskd.core import events as ev
from kioskd.core.cost import DEFAULT_PRICES
from kioskd.core.settings import ModelArm, Settings

from tests.core.drive import SETTINGS, Driver, delta, earcons, note, notes, online, said, said_kinds, then_played

CHAT = ModelArm("chat", "gpt-audio-1.5", DEFAULT_PRICES["gpt-audio-1.5"])
WITH_FALLBACK = Settings(link=SETTINGS.link, turn=dataclasses.replace(SETTINGS.turn, fallback=CHAT))
#: a Chat Completions usage: 3 s question (30 audio tokens) + 600 text tokens in; 8 s answer (160 audio) + 30 text
CC_USAGE = {"prompt_tokens": 630, "completion_tokens": 190, "total_tokens": 820,
            "prompt_tokens_details": {"audio_tokens": 30, "cached_tokens": 0},
            "completion_tokens_details": {"audio_tokens": 160, "text_tokens": 30}}
CC_USAGE_USD = (600 * 2.5 + 30 * 32 + 30 * 10 + 160 * 64) / 1e6


def offline(settings: Settings = WITH_FALLBACK) -> Driver:
    """The Realtime link dropped after coming up: OFFLINE, reconnect armed."""
    d = online(settings)
    d.feed(ev.Disconnected(ConnectionResetError("peer reset")), after_s=1.0)
    assert d.status()["link"] == "offline"
    return d


def chat_turn(d: Driver, n: int = 1, usage: dict[str, object] | None = None) -> list[ev.Action]:
    """Press, hold 300 ms, release; the fallback's reply n streams 400 ms and is heard in full."""
    out = d.press(after_s=1.0)
    out += d.mic(300)[0]
    out += d.release()
    rid, item = f"chat_resp_{n}", f"chat_item_{n}"
    out += d.feed(ev.ResponseCreated(rid, backend="chat"))
    out += d.feed(delta(rid, item, 200), after_s=0.6) + d.feed(delta(rid, item, 200), after_s=0.1)
    out += d.feed(ev.AudioDone(rid, item)) + d.feed(ev.ItemAdded(item))
    out += d.feed(ev.ResponseDone(rid, "completed", None, CC_USAGE if usage is None else usage))
    out += d.feed(ev.PlaybackDrained(0), after_s=0.4)
    assert d.phase in ("idle", "fault")  # fault: the Realtime link's, shown while the fallback answers
    return out


def chat_speaking(d: Driver) -> None:
    """Press, hold 300 ms, release; the fallback's reply 1 starts: 200 ms of it have come."""
    d.press(after_s=1.0)
    d.mic(300)
    d.release()
    d.feed(ev.ResponseCreated("chat_resp_1", backend="chat"))
    d.feed(delta("chat_resp_1", "chat_item_1", 200), after_s=0.5)


def test_a_press_while_the_link_is_down_is_answered_by_the_fallback() -> None:
    d = offline()
    assert d.phase == "idle"  # the kiosk answers presses: the LED does not say offline
    out = chat_turn(d)
    assert out[0] == ev.Route("chat")
    route = note(out, "turn.route").fields
    assert route == {"backend": "chat", "model": "gpt-audio-1.5", "why": "fallback", "realtime": "offline"}
    assert said_kinds(out)[:1] == ["StartQuestion"] and "Commit" in said_kinds(out)
    assert [a for a in said(out) if isinstance(a, ev.RequestReply)] == [ev.RequestReply("req_1")]
    assert ev.PlayEarcon(ev.Earcon.OFFLINE) not in out
    (line,) = d.done_lines()
    assert (line["outcome"], line["backend"], line["model"], line["route"]) == ("answered", "chat", "gpt-audio-1.5",
                                                                                 "fallback")
    assert line["cost_usd"] == pytest.approx(CC_USAGE_USD, abs=1e-6)  # priced by the Chat Completions names
    assert line["release_to_first_sound_ms"] is None and line["release_to_first_delta_ms"] == 600


def test_the_visitor_stays_on_the_fallback_until_the_next_visitor_then_realtime_takes_over() -> None:
    d = offline()
    chat_turn(d, 1)
    d.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=1.0)
    d.feed(ev.SessionCreated("sess_2", None))
    d.feed(ev.SessionUpdated(None))
    out = chat_turn(d, 2)  # the same visitor: no new route, their conversation is the fallback's
    assert not any(isinstance(a, ev.Route) for a in out)
    assert [line["backend"] for line in d.done_lines()] == ["chat", "chat"]
    reset = d.feed(ev.Timeout(ev.Timer.NEW_VISITOR), after_s=45)
    assert said(reset) == [ev.DeleteItem("chat_item_1"), ev.DeleteItem("chat_item_2")]  # still routed to chat
    out = d.press(after_s=5)
    assert out[0] == ev.Route("realtime")
    assert note(out, "turn.route").fields == {"backend": "realtime", "model": "gpt-realtime", "why": "main"}


def test_the_realtime_link_dropping_again_does_not_touch_a_visitor_on_the_fallback() -> None:
    d = offline()
    d.feed(ev.Timeout(ev.Timer.RECONNECT), after_s=1.0)  # connecting: still down for the turn
    chat_speaking(d)
    out = d.feed(ev.Disconnected(ConnectionRefusedError("refused")), after_s=0.1)
    assert d.phase == "speaking" and ev.Interrupt() not in out and not notes(out, "turn.done")
    assert d.status()["link"] == "offline"


def test_without_a_fallback_a_press_while_offline_still_hears_the_offline_prompt() -> None:
    d = offline(SETTINGS)
    assert d.phase == "offline"
    out = d.press(after_s=1.0)
    assert earcons(out) == [ev.Earcon.OFFLINE] and not said(out)


def test_a_cancelled_fallback_reply_is_billed_from_its_estimate_and_says_so() -> None:
    d = offline()
    chat_speaking(d)
    out = then_played(d, d.press(after_s=0.1), 150, "chat_item_1")  # barge-in
    assert ev.CancelReply("chat_resp_1") in out and ev.Truncate("chat_item_1", 150) in out
    estimate = {**CC_USAGE, "estimated": True}
    d.feed(ev.ResponseDone("chat_resp_1", "cancelled", None, estimate))
    (line,) = d.done_lines()
    assert line["outcome"] == "interrupted" and line["usage_estimated"] == 1
    assert line["cost_usd"] == pytest.approx(CC_USAGE_USD, abs=1e-6)


def ab(split: float, draws: list[float]) -> Driver:
    """A/B between Realtime and the fallback; each new visitor's draw is the next of ``draws`` (the first is
    drawn at start)."""
    it: Iterator[float] = iter(draws)
    settings = Settings(link=SETTINGS.link, turn=dataclasses.replace(SETTINGS.turn, fallback=CHAT, ab_split=split,
                                                                      ab_arm=CHAT))
    return online(settings, draw=lambda: next(it))


def test_ab_draws_whole_visitors_never_single_turns() -> None:
    d = ab(0.5, [0.2, 0.9])
    chat_turn(d, 1)
    chat_turn(d, 2)  # the same visitor: no second draw (an exhausted draw list would raise)
    d.feed(ev.Timeout(ev.Timer.NEW_VISITOR), after_s=45)
    out = d.press(after_s=1.0)
    assert out[0] == ev.Route("realtime")
    assert [(line["backend"], line["route"]) for line in d.done_lines()] == [("chat", "ab"), ("chat", "ab")]
    assert note(out, "turn.route").fields["why"] == "ab"


def test_a_visitor_drawn_to_realtime_is_answered_by_the_fallback_while_it_is_down_and_not_counted_in_the_test() -> None:
    d = ab(0.5, [0.9])
    d.feed(ev.Disconnected(ConnectionResetError("reset")), after_s=1.0)
    chat_turn(d, 1)
    assert d.done_lines()[0]["route"] == "fallback"


def test_a_session_renewal_between_two_turns_keeps_the_visitors_draw() -> None:
    """The link renews (a recycle, a reload) between a visitor's turns: their next press is still theirs."""
    d = ab(0.5, [0.9])  # drawn: Realtime
    d.press(after_s=1.0)
    d.mic(300)
    d.release()
    d.feed(ev.ResponseCreated("resp_1"))
    d.feed(delta("resp_1", "item_1", 200), after_s=0.2)
    d.feed(ev.AudioDone("resp_1", "item_1"))
    d.feed(ev.ResponseDone("resp_1", "completed", None, None))
    d.feed(ev.PlaybackDrained(0), after_s=0.3)
    d.feed(ev.Timeout(ev.Timer.RECYCLE), after_s=1.0)  # renewing: the link is connecting for a moment
    d.feed(ev.SessionCreated("sess_2", None))
    d.feed(ev.SessionUpdated(None))
    out = d.press(after_s=1.0)  # the same visitor: no new draw (the list is exhausted), still Realtime
    assert not any(isinstance(a, ev.Route) for a in out) and d.phase == "listening"


def test_a_reply_that_breaks_off_mid_answer_plays_what_came_then_apologises() -> None:
    """A stalled or cut stream: the audio that came is heard, then the apology, and the turn failed."""
    d = offline()
    chat_speaking(d)
    out = d.feed(ev.AudioDone("chat_resp_1", "chat_item_1"))
    out += d.feed(ev.ResponseDone("chat_resp_1", "failed", "ReadTimeout: stalled", {**CC_USAGE, "estimated": True}))
    assert ev.Interrupt() not in out and d.phase == "speaking"
    out = d.feed(ev.PlaybackDrained(0), after_s=0.3)
    assert earcons(out) == [ev.Earcon.APOLOGY] and d.phase == "idle"
    (line,) = d.done_lines()
    assert (line["outcome"], line["cause"]) == ("failed", "response failed: ReadTimeout: stalled")


def test_a_fallback_that_refuses_its_key_is_down_until_a_reload() -> None:
    """401/403/404 from the fallback: it is marked down (the adapter's Availability); with the Realtime link also
    down a press hears the offline prompt, not an apology each time."""
    d = offline()
    d.feed(ev.Availability("chat", False, "fault", "HTTP 401 invalid_api_key"))
    out = d.press(after_s=1.0)
    assert earcons(out) == [ev.Earcon.OFFLINE] and not said(out)
    d.feed(ev.Reloaded(WITH_FALLBACK), after_s=1.0)
    d.release(after_s=0.1)
    out = d.press(after_s=1.0)
    assert ev.Route("chat") in out and d.phase == "listening"


def test_a_realtime_fault_shows_the_error_led_while_the_fallback_answers() -> None:
    from kioskd.errors import AuthError

    d = online(WITH_FALLBACK)
    out = d.feed(ev.Disconnected(AuthError("wss://api.openai.com/v1/realtime", 401)), after_s=1.0)
    assert d.phase == "fault" and ev.SetLed(ev.Led.ERROR) in out
    chat_turn(d, 1)  # the visitor is still answered
    assert d.done_lines()[0]["backend"] == "chat"


MINI = ModelArm("realtime", "gpt-realtime-mini", DEFAULT_PRICES["gpt-realtime-mini"])
DEGRADING = Settings(link=SETTINGS.link, turn=dataclasses.replace(SETTINGS.turn, daily_budget_usd=1.0, degrade=MINI,
                                                                   degrade_at=0.5))


def connects(out: list[ev.Action]) -> list[ev.Connect]:
    return [a for a in out if isinstance(a, ev.Connect)]


def silent_turn(d: Driver) -> None:
    """A Realtime turn whose response ends without audio: the turn is over, the visitor stays."""
    d.press(after_s=1.0)
    d.mic(300)
    d.release()
    d.feed(ev.ResponseCreated("resp_1"))
    d.feed(ev.ResponseDone("resp_1", "completed", None, None))


def renewed(d: Driver) -> None:
    d.feed(ev.SessionCreated("sess_n", None))
    d.feed(ev.SessionUpdated(None))
    assert d.phase == "idle"


def test_degrade_switches_the_session_to_the_cheaper_model_between_visitors() -> None:
    d = online(DEGRADING)
    assert connects(d.log) == [ev.Connect("gpt-realtime")]
    out = d.feed(ev.Spent(0.6), after_s=1.0)  # nobody is visiting: the switch is made now
    assert note(out, "cost.degraded").fields == {"today_usd": 0.6, "budget_usd": 1.0, "degrade_at": 0.5,
                                                 "model": "gpt-realtime-mini"}
    assert note(out, "ws.model_switch").fields == {"from": "gpt-realtime", "to": "gpt-realtime-mini"}
    assert connects(out) == [ev.Connect("gpt-realtime-mini")] and ev.Close() in out
    renewed(d)
    silent_turn(d)
    assert d.done_lines()[0]["model"] == "gpt-realtime-mini"


def test_degrade_never_switches_under_a_visitor() -> None:
    d = online(DEGRADING)
    silent_turn(d)  # no audio: the turn ends; the visitor stays
    out = d.feed(ev.Spent(0.6), after_s=1.0)
    assert notes(out, "cost.degraded") and not connects(out)  # the visitor's next question: the same session
    out = d.feed(ev.Timeout(ev.Timer.NEW_VISITOR), after_s=45)
    assert connects(out) == [ev.Connect("gpt-realtime-mini")]


def test_ab_between_two_realtime_models_opens_the_drawn_model_for_each_visitor() -> None:
    settings = Settings(link=SETTINGS.link, turn=dataclasses.replace(SETTINGS.turn, ab_split=0.5, ab_arm=MINI))
    draws = iter([0.1, 0.9])
    d = Driver(settings, draw=lambda: next(draws))
    assert connects(d.begin()) == [ev.Connect("gpt-realtime-mini")]  # the first visitor's draw
    renewed(d)
    silent_turn(d)
    line = d.done_lines()[0]
    assert (line["model"], line["route"]) == ("gpt-realtime-mini", "ab")
    out = d.feed(ev.Timeout(ev.Timer.NEW_VISITOR), after_s=45)
    assert connects(out) == [ev.Connect("gpt-realtime")]
