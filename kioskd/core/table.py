"""What every kioskd state machine shares: a table of rows, each declaring the phases it may lead to.

Theory of operation (after h11's ``_state.py``). A machine is a phase plus a table ``{(phase, key): Row}``, where
the key is an input's type, or a ``Timer`` for a ``Timeout``. ``handle(input, now)`` looks the pair up (falling back
to the row listed for ``ANY`` phase), runs the row's handler and checks that the phase it left the machine in is
one the row declared: a row that leads anywhere else is a kioskd bug, raised at once as ``LocalProtocolError``.
A pair the table lacks is ignored when the input came from the outside (a server event, a late timer), and is a
bug otherwise. Timers are armed through the machine, so a ``Timeout`` that was disarmed or replaced meanwhile is
dropped before any row sees it.

The tables are data: ``scripts/state-diagram`` draws the README's diagram from them, and a golden test walks them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Final, Generic, TypeVar

from kioskd.core import events as ev
from kioskd.errors import LocalProtocolError

P = TypeVar("P", bound=Enum)
M = TypeVar("M", bound="Machine[Any]")

ANY: Final = None
Key = type | ev.Timer


@dataclass(frozen=True)
class Row(Generic[P]):
    """A handler and the phases it may lead to; no targets: it always stays in the phase it was in."""

    handler: Callable[[Any, Any, float], list[ev.Action]]
    targets: frozenset[P]


def row(handler: Callable[[M, Any, float], list[ev.Action]], *targets: P) -> Row[P]:
    return Row(handler, frozenset(targets))


def key_of(inp: ev.Input) -> Key:
    return inp.timer if isinstance(inp, ev.Timeout) else type(inp)


def key_name(key: Key) -> str:
    return f"Timeout({key.value})" if isinstance(key, ev.Timer) else key.__name__


class Machine(Generic[P]):
    """A phase, a table and the timers the machine armed. Subclasses set ``TABLE`` and ``REMOTE``."""

    TABLE: ClassVar[dict[tuple[Any, Key], Row[Any]]]
    REMOTE: ClassVar[tuple[type, ...]] = ()

    def __init__(self, phase: P) -> None:
        self.phase = phase
        self._armed: set[ev.Timer] = set()

    def handle(self, inp: ev.Input, now: float) -> list[ev.Action]:
        """Advance by one input; return the actions to execute, in order."""
        if isinstance(inp, ev.Timeout):
            if inp.timer not in self._armed:
                return []  # fired as it was being replaced or disarmed
            self._armed.discard(inp.timer)
        key = key_of(inp)
        found = self.TABLE.get((self.phase, key)) or self.TABLE.get((ANY, key))
        if found is None:
            if isinstance(inp, self.REMOTE):
                return self.ignore(inp)
            raise LocalProtocolError(f"{type(self).__name__} has no row for {key_name(key)} in "
                                     f"phase {self.phase.value}")
        was = self.phase
        out = found.handler(self, inp, now)
        if self.phase not in (found.targets or {was}):
            raise LocalProtocolError(f"{type(self).__name__}: {key_name(key)} in phase {was.value} led to "
                                     f"{self.phase.value}, not one of the row's targets")
        return out

    def ignore(self, inp: ev.Input) -> list[ev.Action]:
        return [ev.Note("turn.ignored", "debug", {"input": type(inp).__name__, "phase": self.phase.value})]

    def arm(self, timer: ev.Timer, at_s: float) -> ev.Arm:
        self._armed.add(timer)
        return ev.Arm(timer, at_s)

    def disarm(self, *timers: ev.Timer) -> list[ev.Action]:
        out: list[ev.Action] = []
        for timer in timers:
            if timer in self._armed:
                self._armed.discard(timer)
                out.append(ev.Disarm(timer))
        return out

    def disarm_all(self) -> list[ev.Action]:
        return self.disarm(*sorted(self._armed, key=lambda t: t.value))


def rows_of(table: dict[tuple[Any, Key], Row[Any]], phases: Iterable[Any]) -> list[tuple[str, str, list[str]]]:
    """The table as (from, input, sorted targets) rows, ``ANY`` spelt ``*``: for the diagram and the docs."""
    order = {p: i for i, p in enumerate(phases)}
    out = []
    for (phase, key), r in sorted(table.items(), key=lambda kv: (order.get(kv[0][0], -1), key_name(kv[0][1]))):
        here = "*" if phase is ANY else phase.value
        out.append((here, key_name(key), sorted(t.value for t in r.targets) or ["(stays)" if phase is ANY else here]))
    return out


def render(title: str, table: dict[tuple[Any, Key], Row[Any]], phases: Iterable[Any]) -> str:
    """The table as aligned text, one row a line: ``from  input  → targets`` (``*``: any phase without a row of
    its own; a row that stays where it is names its own phase)."""
    rows = rows_of(table, phases)
    width = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    lines = [title]
    lines += [f"  {here:<{width[0]}}  {key:<{width[1]}}  → {' | '.join(to)}" for here, key, to in rows]
    return "\n".join(lines)
