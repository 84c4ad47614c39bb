"""The visitor's turn's phases (``core/turn.py``), apart so the turn's modules can share them."""

from __future__ import annotations

from enum import Enum
from typing import Final


class TurnPhase(str, Enum):
    IDLE = "idle"
    LISTENING = "listening"
    WAITING = "waiting"
    SPEAKING = "speaking"


IN_TURN: Final = frozenset({TurnPhase.LISTENING, TurnPhase.WAITING, TurnPhase.SPEAKING})
