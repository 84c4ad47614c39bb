"""The reply of the current turn as it arrives and plays: how much audio each item brought, which items are
complete, whether the speaker was told the reply ended and has played it out, how much of it was heard; and where
a barge-in cuts it.

What was heard comes from the speaker, never from what arrived: a reply played out (``PlaybackDrained``) was heard
all but what the playout buffer had no room for (``dropped_ms``); a reply cut by an ``Interrupt`` was heard up to
the ``Played`` position of the item playing (earlier items in full)."""

from __future__ import annotations

from kioskd.core import events as ev
from kioskd.core.pcm import samples_to_ms


class Reply:
    """Pure bookkeeping for ``TurnMachine``; a new one for every committed question."""

    def __init__(self) -> None:
        self._received: dict[str, int] = {}  # samples received per item, in order of arrival
        self._complete: set[str] = set()  # items whose audio is done
        self._dropped_ms = 0  # reported by the speaker's drains: no room in the playout buffer, never heard
        self._heard_ms: int | None = None  # what the speaker last said was heard (None: it has not said)
        self.ended = False  # EndOfReply sent: the speaker plays out the tail
        self.drained = False  # …and has played it

    @property
    def samples(self) -> int:
        return sum(self._received.values())

    @property
    def received_ms(self) -> int:
        return samples_to_ms(self.samples)

    @property
    def heard_ms(self) -> int | None:
        """Milliseconds of this reply the visitor heard: 0 when none arrived, None while the speaker has not said
        (audio arrived, and neither a drain nor an interrupt has reported on it since)."""
        if self._heard_ms is not None:
            return self._heard_ms
        return 0 if not self._received else None

    def add(self, item_id: str, samples: int) -> None:
        self._received[item_id] = self._received.get(item_id, 0) + samples
        self.ended = self.drained = False
        self._heard_ms = None  # more audio than the speaker last reported on

    def played_out(self, dropped_ms: int) -> None:
        """The speaker played the reply out (``PlaybackDrained``): heard in full but for what it dropped."""
        self.drained = True
        self._dropped_ms += max(0, dropped_ms)
        self._heard_ms = max(0, self.received_ms - self._dropped_ms)

    def stopped_at(self, item_id: str | None, played_ms: int) -> None:
        """The speaker was stopped (``Played`` after an ``Interrupt``) ``played_ms`` into ``item_id``: the items
        before it were heard, it up to there, none after. An item this reply does not know (an earcon was last)
        keeps what was last reported, or 0."""
        if item_id is None or item_id not in self._received:
            self._heard_ms = self._heard_ms or 0
            return
        before = 0
        for item, samples in self._received.items():
            if item == item_id:
                break
            before += samples
        self._heard_ms = samples_to_ms(before) + max(0, min(played_ms, samples_to_ms(self._received[item_id])))

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
