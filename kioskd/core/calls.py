"""The tool calls of one turn, from the model's call to the output the model is given. Pure.

The protocol (reference model-features §1.2-1.5): a call is run only once its item is complete (``ToolCall``);
every ``call_id`` gets an output, even a call that failed, was refused or was cancelled by a barge-in, or the
model waits for it; the outputs go back together, and one reply is asked for after them (the turn machine asks,
once the calling response is done). A model that calls again and again is stopped: past ``limit`` calls a turn's
calls are answered with a refusal instead of being run, and its follow-up may call no tool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from kioskd.core import events as ev

MAX_CALLS: Final = 3
CANCELLED: Final = json.dumps({"status": "cancelled", "note": "The visitor interrupted; this result is not needed."})
TOO_MANY: Final = json.dumps({"error": "No more tool calls for this question: answer from what you have."})


@dataclass
class _Call:
    name: str
    output: str | None = None  # None: running
    returned: bool = False


class Calls:
    """One turn's calls. ``call`` starts one, ``result`` records its output; ``outputs`` hands the model every
    output once none is running; ``cancel`` gives up on the running ones (their output says so)."""

    def __init__(self, limit: int = MAX_CALLS) -> None:
        self._limit = limit
        self._calls: dict[str, _Call] = {}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self._calls.values()]

    @property
    def active(self) -> bool:
        """Some call has not had its output handed to the model yet."""
        return any(not c.returned for c in self._calls.values())

    @property
    def running(self) -> bool:
        return any(c.output is None for c in self._calls.values())

    @property
    def spent(self) -> bool:
        """The turn has made as many calls as it may: its follow-up may call no tool."""
        return len(self._calls) >= self._limit

    def call(self, inp: ev.ToolCall) -> list[ev.Action]:
        """The model called ``inp.name``: run it, or refuse it past the limit (or a call_id seen before)."""
        if inp.call_id in self._calls:
            return [ev.Note("turn.tool_refused", "warning", {"name": inp.name, "reason": "repeated call_id"})]
        if self.spent:
            self._calls[inp.call_id] = _Call(inp.name, TOO_MANY)
            return [ev.Note("turn.tool_refused", "warning", {"name": inp.name, "reason": "too many calls",
                                                            "limit": self._limit})]
        self._calls[inp.call_id] = _Call(inp.name)
        return [ev.RunTool(inp.call_id, inp.name, inp.arguments),
                ev.Note("turn.tool_call", "info", {"name": inp.name, "call_id": inp.call_id})]

    def result(self, inp: ev.ToolResult) -> bool:
        """Record a running call's output; False for a call this turn no longer waits for."""
        call = self._calls.get(inp.call_id)
        if call is None or call.output is not None:
            return False
        call.output = inp.output
        return True

    def outputs(self) -> list[ev.Action]:
        """Every output not yet given to the model, once none is running (they go back together)."""
        if self.running:
            return []
        out: list[ev.Action] = []
        for call_id, call in self._calls.items():
            if not call.returned and call.output is not None:
                call.returned = True
                out.append(ev.ReturnToolOutput(call_id, call.output))
        return out

    def cancel(self, *, answer: bool = True) -> list[ev.Action]:
        """The turn is over: stop what runs; every call still owed an output gets one (cancelled, or the answer
        it already had), so the conversation holds no unanswered call. ``answer=False``: the session is gone
        (its conversation with it), so only the runs are stopped."""
        out: list[ev.Action] = []
        for call_id, call in self._calls.items():
            if call.output is None:
                call.output = CANCELLED
                out.append(ev.CancelTool(call_id))
        if not answer:
            for call in self._calls.values():
                call.returned = True
            return out
        return out + self.outputs()
