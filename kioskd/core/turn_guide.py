"""The museum guide's rows of the visitor's turn: tool calls, visitors (each with a fresh conversation and one arm:
a backend and a model), the day's budget.

``TurnMachine`` (``core/turn.py``) inherits them; the table there routes inputs to them. They work on the turn's
state, declared below for the type checker and set by ``TurnMachine.__init__``: the current turn's calls
(``core/calls.py``), the session's conversation (``core/conversation.py``), the ledger, the reply.
"""

from __future__ import annotations

from kioskd.core import events as ev
from kioskd.core.arms import Arms
from kioskd.core.calls import CANCELLED, Calls
from kioskd.core.conversation import Conversation
from kioskd.core.ledger import Ledger
from kioskd.core.reply import Reply
from kioskd.core.settings import TurnSettings
from kioskd.core.table import Machine
from kioskd.core.turnlog import TurnRecord
from kioskd.core.turnphase import TurnPhase


class GuideRows(Machine[TurnPhase]):
    settings: TurnSettings
    _turn: TurnRecord | None
    _ledger: Ledger
    _reply: Reply
    _calls: Calls
    _answer_due: bool
    _conversation: Conversation
    _down: dict[ev.Backend, str]  # backends that cannot answer, and why
    _arms: Arms

    @property
    def serving(self) -> bool:
        """Some arm can answer a press now."""
        return any(arm.backend not in self._down for arm in self._arms.all())

    @property
    def _reachable(self) -> bool:
        """The present visitor's backend can still be spoken to (to answer a tool call, to truncate a reply)."""
        current = self._arms.current
        return current is not None and current.backend not in self._down

    @property
    def arms_status(self) -> dict[str, object]:
        """For ``kioskctl status``: who answers the present visitor, and whether the fallback can answer."""
        current, fallback = self._arms.current, self.settings.fallback
        return {"visitor": None if current is None else {"backend": current.backend, "model": current.model,
                                                         "route": self._arms.why},
                "fallback": None if fallback is None else {"model": fallback.model, "up": "chat" not in self._down},
                "degraded": self._arms.degraded}

    @property
    def wanted_model(self) -> str:
        """The model the Realtime session should run (the link renews it between visitors when it differs)."""
        return self._arms.wanted_model

    # ------------------------------------------------------------------------------------------ tools

    def _on_tool_call(self, inp: ev.ToolCall, now: float) -> list[ev.Action]:
        """Run the call; the reply wait starts again for it (a tool may take its own timeout). A call arriving
        after its preamble has played out waits in WAITING, not in a drained SPEAKING."""
        if (self._turn is None or not inp.complete
                or not self._ledger.is_current(inp.response_id, self._turn.id)):
            return self._on_stale_call(inp, now)
        out = self._calls.call(inp)
        if self.phase is TurnPhase.WAITING:
            out.append(self.arm(ev.Timer.REPLY_WAIT, now + self.settings.reply_wait_s))
        elif self._reply.drained:
            out += self._await_answer(now)
        return out

    def _on_stale_call(self, inp: ev.ToolCall, now: float) -> list[ev.Action]:
        """A call cut short, or from a response this turn cancelled: not run, but answered (the model waits on
        every call)."""
        return [ev.ReturnToolOutput(inp.call_id, CANCELLED)] if self._reachable else []

    def _on_tool_result(self, inp: ev.ToolResult, now: float) -> list[ev.Action]:
        if self._turn is None or not self._calls.result(inp):
            return [ev.Note("turn.tool_late", "debug", {"call_id": inp.call_id})]  # its turn moved on
        return [] if self._ledger.open_for(self._turn.id) else self._follow_up(now)

    def _follow_up(self, now: float) -> list[ev.Action]:
        """The calling response is done: once no tool runs, its outputs go back and one reply is asked for them
        (one that may call no tool if the turn has called enough). Until its audio comes the turn waits, with
        the thinking cue and the reply wait as after a release."""
        assert self._turn is not None
        outputs = self._calls.outputs()
        if not outputs:
            return []  # a tool still runs
        self._answer_due = True
        out = [*outputs, *self._ledger.ask(self._turn.id, tools=not self._calls.spent, arm=self._turn.arm)]
        if self.phase is TurnPhase.WAITING or self._reply.drained:
            out += self._await_answer(now)
        return out

    def _await_answer(self, now: float) -> list[ev.Action]:
        """Nothing plays and the answer is still to come: back to WAITING (the thinking LED), re-timed."""
        self.phase = TurnPhase.WAITING
        return [*self.disarm(ev.Timer.REPLY_CAP), self.arm(ev.Timer.REPLY_WAIT, now + self.settings.reply_wait_s),
                self.arm(ev.Timer.THINKING_CUE, now + self.settings.thinking_cue_s)]

    # ------------------------------------------------------------------------------------------ visitors

    def _on_item_added(self, inp: ev.ItemAdded, now: float) -> list[ev.Action]:
        self._conversation.added(inp.item_id)
        return []

    def _on_new_visitor(self, inp: ev.Timeout, now: float) -> list[ev.Action]:
        """Quiet for ``new_visitor_after_s``: whoever presses next is someone else (and is given an arm afresh).
        The conversation is emptied now, while idle, so they pay no latency for it."""
        self._arms.draw()
        items = len(self._conversation)
        if not items:
            return []
        return [*self._conversation.reset(),
                ev.Note("conversation.reset", "info", {"reason": "new visitor", "items": items,
                                                       "quiet_s": self.settings.new_visitor_after_s})]

    # ------------------------------------------------------------------------------------------ the budget

    @property
    def closed(self) -> bool:
        """Today's budget is spent: presses get the "come back later" prompt and nothing is sent."""
        budget = self.settings.daily_budget_usd
        return budget is not None and self._arms.spent_usd >= budget

    def _on_spent(self, inp: ev.Spent, now: float) -> list[ev.Action]:
        was, degraded = self.closed, self._arms.degraded
        self._arms.spent_usd = inp.today_usd
        fields = {"today_usd": round(inp.today_usd, 6), "budget_usd": self.settings.daily_budget_usd}
        out: list[ev.Action] = []
        if self._arms.degraded != degraded:  # new visitors get the other model (a visitor on the old one keeps it)
            if self._arms.degraded and self.settings.degrade is not None:
                out.append(ev.Note("cost.degraded", "warning", {**fields, "degrade_at": self.settings.degrade_at,
                                                                 "model": self.settings.degrade.model}))
            else:
                out.append(ev.Note("cost.undegraded", "info", {**fields, "model": self.settings.model}))
        if self.closed != was:
            out.append(ev.Note("cost.budget_spent", "warning", fields) if self.closed
                       else ev.Note("cost.budget_reopened", "info", fields))
        return out

