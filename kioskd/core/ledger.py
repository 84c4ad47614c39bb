"""Every response kioskd asks for, from the request to its ``response.done``, and what each turn was billed.

The one place responses are tracked. A turn may cause several responses (a tool call, then the answer); each is
booked to the turn that asked for it, so its usage lands in exactly that turn's bill, even when its
``response.done`` arrives after the turn has ended (a cancelled reply). The service runs one response at a time:
a request made while another response is still open waits here until that one is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from kioskd.core import events as ev
from kioskd.core.cost import cost_usd
from kioskd.core.settings import ModelArm

#: the arm a response is priced at when its asker named none (the Realtime default)
_UNPRICED: Final = ModelArm("realtime", "", None)


def add_usage(total: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    """Sum ``usage`` into ``total`` field by field (nested objects too); non-numbers are left out."""
    out = dict(total)
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            out[key] = out.get(key, 0) + value
        elif isinstance(value, dict):
            inner = out.get(key)
            out[key] = add_usage(inner if isinstance(inner, dict) else {}, value)
    return out


@dataclass
class _Response:
    ref: str
    turn: int
    tools: bool = True  # the reply may call tools
    arm: ModelArm = _UNPRICED  # who answers it, at what prices
    id: str | None = None  # learnt from response.created
    cancelled: bool = False


@dataclass
class Bill:
    """What one turn's responses cost: the summed usage, how many responses, how many never reported usage."""

    responses: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    missing: int = 0
    estimated: int = 0  # responses whose usage the client estimated (a stream cut before its usage came)
    statuses: list[str] = field(default_factory=list)
    cost_usd: float = 0.0  # of the responses that reported usage

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"responses": self.responses, "usage": self.usage or None,
                               "cost_usd": round(self.cost_usd, 6)}
        if self.missing:
            out["usage_missing"] = self.missing
        if self.estimated:
            out["usage_estimated"] = self.estimated
        return out


class Ledger:
    """Responses from request to done, booked to turns. Pure; the turn machine owns it."""

    def __init__(self) -> None:
        self._open: list[_Response] = []  # requested (and perhaps created), not yet done, in request order
        self._deferred: list[_Response] = []  # asked while another response was open
        self._bills: dict[int, Bill] = {}
        self._refs = 0

    # --------------------------------------------------------------------------------------------- requests

    def ask(self, turn: int, *, tools: bool = True, arm: ModelArm = _UNPRICED) -> list[ev.Action]:
        """Request a reply for ``turn`` from ``arm`` (``tools=False``: one that may call no tool): now, or once
        the open response is done."""
        self._refs += 1
        resp = _Response(ref=f"req_{self._refs}", turn=turn, tools=tools, arm=arm)
        self._bills.setdefault(turn, Bill()).responses += 1
        if self._open:
            self._deferred.append(resp)
            return []
        self._open.append(resp)
        return [ev.RequestReply(resp.ref, resp.tools)]

    def created(self, response_id: str) -> None:
        for resp in self._open:
            if resp.id is None:
                resp.id = response_id
                return

    def is_current(self, response_id: str, turn: int | None) -> bool:
        """The response is ``turn``'s, still open and not cancelled: its audio is to be played."""
        return any(r.id == response_id and r.turn == turn and not r.cancelled for r in self._open)

    def cancel(self, turn: int | None) -> list[ev.Action]:
        """Cancel ``turn``'s open response (never one that is not active) and drop its waiting requests."""
        if turn is None:
            return []
        for resp in [r for r in self._deferred if r.turn == turn]:
            self._deferred.remove(resp)
            self._bills[turn].responses -= 1  # never sent: never billed
        out: list[ev.Action] = []
        for resp in self._open:
            if resp.turn == turn and not resp.cancelled:
                resp.cancelled = True
                out.append(ev.CancelReply(resp.id))
        return out

    def done(self, response_id: str, status: str, usage: dict[str, Any] | None) -> tuple[int | None, list[ev.Action]]:
        """A response ended: book its usage (and what it cost at its arm's prices); returns its turn and a request
        that was waiting for it. A usage marked ``"estimated": true`` is counted as such."""
        resp = next((r for r in self._open if r.id == response_id), None)
        if resp is None:
            return None, []
        self._open.remove(resp)
        bill = self._bills.setdefault(resp.turn, Bill())
        bill.statuses.append(status)
        if usage is None:
            bill.missing += 1
        else:
            bill.usage = add_usage(bill.usage, usage)
            bill.estimated += usage.get("estimated") is True
            prices = resp.arm.prices
            bill.cost_usd += (cost_usd(resp.arm.backend, usage, prices) or 0.0) if prices is not None else 0.0
        return resp.turn, self._next()

    def refused(self, ref: str | None) -> tuple[int | None, list[ev.Action]]:
        """The service refused the request ``ref`` (an error naming it): it will never start, nor be billed."""
        resp = next((r for r in self._open if r.ref == ref and r.id is None), None)
        if resp is None:
            return None, []
        self._open.remove(resp)
        self._bills[resp.turn].responses -= 1
        return resp.turn, self._next()

    def forget(self, turn: int) -> list[ev.Action]:
        """Give up on ``turn``'s responses (their ``response.done`` did not come in time): their usage is missing.
        A response that never started is dropped too. Returns a request that was waiting for them."""
        for resp in [r for r in self._open if r.turn == turn]:
            self._open.remove(resp)
            if resp.id is None:
                self._bills[turn].responses -= 1
            else:
                self._bills[turn].missing += 1
        return self._next()

    def lost(self) -> None:
        """The session is gone: nothing open will ever be done, nothing waiting will be sent."""
        for resp in self._open:
            bill = self._bills[resp.turn]
            if resp.id is None:
                bill.responses -= 1
            else:
                bill.missing += 1
        for resp in self._deferred:
            self._bills[resp.turn].responses -= 1
        self._open.clear()
        self._deferred.clear()

    def _next(self) -> list[ev.Action]:
        if self._open or not self._deferred:
            return []
        resp = self._deferred.pop(0)
        self._open.append(resp)
        return [ev.RequestReply(resp.ref, resp.tools)]

    # --------------------------------------------------------------------------------------------- bills

    def open_for(self, turn: int) -> int:
        """Responses of ``turn`` still to report (open or waiting to be sent)."""
        return sum(r.turn == turn for r in (*self._open, *self._deferred))

    def has_open(self) -> bool:
        return bool(self._open)

    def close(self, turn: int) -> Bill:
        """The turn's final bill (call once its responses are all done, forgotten or lost)."""
        return self._bills.pop(turn, Bill())
