"""The response ledger (``core/ledger.py``): every response from request to done, booked to the turn that asked.

Some of its paths (a turn with two responses in flight, as a tool call and its answer will have) cannot be reached
through the turn's inputs yet, so the ledger is tested on its own here; test_turn.py covers it through the turn.
"""

from __future__ import annotations

from typing import Any

import pytest

from kioskd.core import events as ev
from kioskd.core.ledger import Ledger, add_usage


def usage(total: int) -> dict[str, Any]:
    return {"total_tokens": total, "input_token_details": {"audio_tokens": total // 2}}


# ------------------------------------------------------------------------------------------------ add_usage


def test_add_usage_sums_nested_objects_and_skips_non_numbers() -> None:
    """add_usage sums numbers field by field, nested objects too; strings, booleans and None are left out."""
    total = add_usage({}, {"total_tokens": 10, "input_token_details": {"audio_tokens": 4, "cached_tokens": 0},
                           "kind": "realtime", "estimated": True, "output_tokens": None})
    total = add_usage(total, {"total_tokens": 5, "input_token_details": {"audio_tokens": 1, "text_tokens": 2},
                              "output_token_details": {"audio_tokens": 3}})
    assert total == {"total_tokens": 15, "input_token_details": {"audio_tokens": 5, "cached_tokens": 0,
                                                                 "text_tokens": 2},
                     "output_token_details": {"audio_tokens": 3}}


def test_add_usage_does_not_change_its_arguments() -> None:
    """add_usage returns a new total; the dicts it was given stay as they were."""
    total = {"total_tokens": 1, "input_token_details": {"audio_tokens": 1}}
    added = {"total_tokens": 2, "input_token_details": {"audio_tokens": 2}}
    add_usage(total, added)
    assert total == {"total_tokens": 1, "input_token_details": {"audio_tokens": 1}}
    assert added == {"total_tokens": 2, "input_token_details": {"audio_tokens": 2}}


def test_add_usage_replaces_a_number_with_an_object() -> None:
    """A field that was a number and now is an object is summed as a fresh object (never a crash)."""
    assert add_usage({"details": 3}, {"details": {"a": 1}}) == {"details": {"a": 1}}


# ------------------------------------------------------------------------------------------------ requests


def test_one_response_at_a_time() -> None:
    """ask() sends a RequestReply at once when nothing is open; otherwise it waits for the open one's done."""
    led = Ledger()
    assert led.ask(1) == [ev.RequestReply("req_1")]
    assert led.ask(2) == []
    assert (led.open_for(1), led.open_for(2), led.has_open()) == (1, 1, True)
    led.created("resp_1")
    assert led.done("resp_1", "completed", usage(10)) == (1, [ev.RequestReply("req_2")])
    assert led.close(1).fields() == {"responses": 1, "usage": usage(10), "cost_usd": 0.0}
    led.created("resp_2")
    assert led.is_current("resp_2", 2) and not led.is_current("resp_2", 1)


def test_a_turn_with_two_responses_is_done_only_after_both() -> None:
    """A turn that asked twice has a response pending after the first one's done; its bill sums both."""
    led = Ledger()
    led.ask(1)
    assert led.ask(1) == []  # a second response of the same turn (a tool call's answer) waits its turn
    led.created("resp_a")
    turn, out = led.done("resp_a", "completed", usage(7))
    assert (turn, out, led.open_for(1)) == (1, [ev.RequestReply("req_2")], 1)
    led.created("resp_b")
    assert led.done("resp_b", "completed", usage(3)) == (1, [])
    assert led.open_for(1) == 0
    bill = led.close(1)
    assert (bill.responses, bill.usage, bill.missing, bill.statuses) == (
        2, {"total_tokens": 10, "input_token_details": {"audio_tokens": 4}}, 0, ["completed", "completed"])


def test_created_names_the_oldest_unnamed_request() -> None:
    """A ResponseCreated gives its id to the oldest open request that has none yet."""
    led = Ledger()
    led.ask(1)
    led.created("resp_1")
    led.created("resp_stray")  # nothing unnamed is open: not ours
    assert led.is_current("resp_1", 1) and not led.is_current("resp_stray", 1)
    assert led.done("resp_stray", "completed", usage(1)) == (None, [])


def test_cancel_marks_the_open_response_once_and_drops_waiting_requests() -> None:
    """cancel() says CancelReply once per open response (None before it is created), keeps it open for its usage,
    and drops the turn's requests still waiting (never sent: never billed)."""
    led = Ledger()
    led.ask(1)
    led.ask(1)
    assert led.cancel(1) == [ev.CancelReply(None)]
    assert led.cancel(1) == []
    assert led.open_for(1) == 1
    led.created("resp_1")
    assert not led.is_current("resp_1", 1)  # cancelled: its audio is not played
    assert led.done("resp_1", "cancelled", usage(4)) == (1, [])
    assert led.close(1).fields() == {"responses": 1, "usage": usage(4), "cost_usd": 0.0}


def test_cancel_by_id_once_created() -> None:
    """cancel() names the response once the service has created it."""
    led = Ledger()
    led.ask(1)
    led.created("resp_1")
    assert led.cancel(1) == [ev.CancelReply("resp_1")]
    assert led.cancel(2) == []


def test_refused_request_is_never_billed_and_frees_the_next() -> None:
    """refused(ref) drops a request the service refused before creating it, and sends the one waiting behind it."""
    led = Ledger()
    led.ask(1)
    led.ask(2)
    assert led.refused("req_9") == (None, [])
    assert led.refused("req_1") == (1, [ev.RequestReply("req_2")])
    assert led.open_for(1) == 0 and led.close(1).fields() == {"responses": 0, "usage": None, "cost_usd": 0.0}
    led.created("resp_2")
    assert led.refused("req_2") == (None, [])  # created: no longer refusable


def test_forget_gives_up_on_usage() -> None:
    """forget(turn) drops the turn's open responses: a created one counts as usage missing, an uncreated one as
    never billed; the request waiting behind them is sent."""
    led = Ledger()
    led.ask(1)
    led.created("resp_1")
    led.ask(2)
    assert led.forget(1) == [ev.RequestReply("req_2")]
    assert led.close(1).fields() == {"responses": 1, "usage": None, "cost_usd": 0.0, "usage_missing": 1}
    assert led.done("resp_1", "cancelled", usage(5)) == (None, [])  # too late: billed nowhere
    assert led.forget(2) == []
    assert led.close(2).fields() == {"responses": 0, "usage": None, "cost_usd": 0.0}


def test_lost_session_ends_everything() -> None:
    """lost(): nothing open will be done and nothing waiting sent; created responses count as usage missing."""
    led = Ledger()
    led.ask(1)
    led.created("resp_1")
    led.ask(2)
    led.ask(3)
    led.lost()
    assert not led.has_open() and led.open_for(2) == 0
    assert [led.close(t).fields() for t in (1, 2, 3)] == [
        {"responses": 1, "usage": None, "cost_usd": 0.0, "usage_missing": 1}, {"responses": 0, "usage": None, "cost_usd": 0.0},
        {"responses": 0, "usage": None, "cost_usd": 0.0}]
    assert led.ask(4) == [ev.RequestReply("req_4")]


@pytest.mark.parametrize("status", ["completed", "cancelled", "failed", "incomplete"])
def test_done_without_usage_is_missing(status: str) -> None:
    """A response.done carrying no usage is booked as usage missing, with its status."""
    led = Ledger()
    led.ask(1)
    led.created("resp_1")
    led.done("resp_1", status, None)
    bill = led.close(1)
    assert (bill.missing, bill.statuses, bill.fields()["usage"]) == (1, [status], None)


def test_close_of_an_unknown_turn_is_an_empty_bill() -> None:
    """close() of a turn that asked nothing (too short) is an empty bill."""
    assert Ledger().close(7).fields() == {"responses": 0, "usage": None, "cost_usd": 0.0}
