"""The reply of the current turn as it arrives and plays: how much audio each item brought, which items are
complete, whether the speaker was told the reply ended and has played it out; and where a barge-in cuts it."""

from __future__ import annotations

from kioskd.core import events as ev
from kioskd.core.pcm import samples_to_ms


class Reply:
    """Pure bookkeeping for ``TurnMachine``; a new one for every committed question."""

    def __init__(self) -> None:
        self._received: dict[str, int] = {}  # samples received per item
        self._complete: set[str] = set()  # items whose audio is done
        self.ended = False  # EndOfReply sent: the speaker plays out the tail
        self.drained = False  # …and has played it

    @property
    def samples(self) -> int:
        return sum(self._received.values())

    def add(self, item_id: str, samples: int) -> None:
        self._received[item_id] = self._received.get(item_id, 0) + samples
        self.ended = self.drained = False

    def complete(self, item_id: str) -> None:
        self._complete.add(item_id)

    def end(self) -> list[ev.Action]:
        """``EndOfReply`` once: the speaker may drain the tail."""
        if self.ended:
            return []
        self.ended = True
        return [ev.EndOfReply()]

    def cut(self, item_id: str | None, played_ms: int) -> list[ev.Action]:
        """After a barge-in: truncate ``item_id`` to what the visitor heard (``min(played, received)``), unless
        all of it was received and heard; a line saying where it was cut."""
        if item_id is None or item_id not in self._received:
            return []
        received_ms = samples_to_ms(self._received[item_id])
        end_ms = max(0, min(played_ms, received_ms))
        out: list[ev.Action] = []
        if end_ms < received_ms or item_id not in self._complete:
            out.append(ev.Truncate(item_id, end_ms))
        out.append(ev.Note("turn.truncated", "info", {"item_id": item_id, "played_ms": played_ms,
                                                       "received_ms": received_ms, "audio_end_ms": end_ms}))
        return out
