"""What the session tells the model about the exhibit: the instructions and the function tools it declares. Pure.

The persona is the curator's (``exhibit.instructions``, else ``realtime.instructions``). kioskd adds what makes it
a guide rather than a chatbot: the exhibit's name, the answer language, and, with a knowledge file, the rule that
facts about the exhibit come from the lookup alone, with a short spoken line first (the "preamble" of reference
model-features §1.4: the visitor hears something while the lookup runs), and "I do not know" when it finds
nothing. Each tool's description says when to use it, which the Realtime models follow better than a general
rule (§1.5).
"""

from __future__ import annotations

import json
from typing import Final

from kioskd.core.settings import ToolSpec

LOOKUP: Final = ToolSpec(
    "lookup_exhibit_knowledge",
    "Look up verified facts about this exhibit: its history, makers, materials, meaning, and the visit (what may "
    "be touched or photographed, what is nearby). Use it for every factual question about the exhibit, before "
    "answering. Before calling, say one short line such as 'Let me check.' Do not use it for greetings or for "
    "questions that are not about the exhibit or the visit.",
    json.dumps({"type": "object", "properties": {"query": {
        "type": "string", "description": "The visitor's question, in their words, in full."}},
        "required": ["query"], "additionalProperties": False}),
)
HOURS: Final = ToolSpec(
    "opening_hours",
    "The museum's opening hours with the local date and time: whether it is open now, when it closes or next "
    "opens, and the coming week (holidays included). Use it whenever the visitor asks when the museum is open, "
    "closes or opens, or what day or time it is.",
    json.dumps({"type": "object", "properties": {}, "additionalProperties": False}),
)


def instructions(persona: str, *, name: str | None, language: str, tools: tuple[ToolSpec, ...]) -> str:
    """The session's instructions: the persona, then kioskd's rules for a museum guide."""
    parts = [persona.strip()]
    if name:
        parts.append(f'You are the guide of the exhibit "{name}", speaking to visitors standing in front of it.')
    if language.strip().lower() == "auto":
        parts.append("Answer in the language the visitor speaks.")
    else:
        parts.append(f"Always answer in {language.strip()}.")
    parts.append("Keep answers short and spoken: one to three sentences, no lists.")
    names = {t.name for t in tools}
    if LOOKUP.name in names:
        parts.append(
            f"For any fact about the exhibit, call {LOOKUP.name} first and answer only from what it returns. "
            "Before the call, say one short line such as 'Let me check.' If it finds nothing, say that you do "
            "not know; never guess or invent facts, dates, names or numbers.")
    if HOURS.name in names:
        parts.append(f"For opening hours, dates and times, call {HOURS.name}; never guess them.")
    return "\n\n".join(p for p in parts if p)
