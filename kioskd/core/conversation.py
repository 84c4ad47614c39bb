"""The session's conversation, as items: what a new visitor must not inherit. Pure.

Every item the service adds (the visitor's question, the guide's answer, a tool call and its output) is announced
by ``conversation.item.added`` (``ItemAdded``). When the turn machine decides a new visitor has come (the kiosk
was quiet for ``new_visitor_after_s``), ``reset`` deletes them all, while idle, so the next question reaches the
model alone and nobody hears about, or is steered by, an earlier visitor (reference model-features §4.3, option
B: the session, its cached instructions and its connection stay). A new session starts with an empty
conversation (``clear``).
"""

from __future__ import annotations

from typing import Final

from kioskd.core import events as ev

#: items remembered for deletion (a long visit's oldest are left to the session's truncation); well under the
#: link's outbox (adapters/link.OUTBOX_FRAMES, 256), since a reset sends one delete per item at once
MAX_ITEMS: Final = 100


class Conversation:
    def __init__(self) -> None:
        self._items: dict[str, None] = {}  # ordered set of item ids

    def __len__(self) -> int:
        return len(self._items)

    def added(self, item_id: str) -> None:
        self._items[item_id] = None
        while len(self._items) > MAX_ITEMS:
            del self._items[next(iter(self._items))]

    def reset(self) -> list[ev.Action]:
        """Delete every item: the conversation starts empty for the next visitor."""
        out: list[ev.Action] = [ev.DeleteItem(item_id) for item_id in self._items]
        self._items.clear()
        return out

    def clear(self) -> None:
        """A new session: its conversation is empty already."""
        self._items.clear()
