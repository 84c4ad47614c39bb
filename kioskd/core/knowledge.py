"""The exhibit's knowledge: a curator's entries, and the lookup the model's tool call runs. Pure.

Theory of operation. The model asks in its own words ("when was the mosaic made", "who found the villa"); the
curator wrote ``topic`` / ``text`` / optional ``keywords``. Both sides are reduced to terms: words, lower-cased,
accents folded, short and common words dropped, a crude English suffix strip so "paintings" meets "painting"
and "founded" meets "found". Each entry's terms are weighted (topic and keywords count more than the text) and
rarer terms count more (inverse document frequency over the entries). A query term absent from every entry may
be a typo or another inflection: it is matched to the closest known term (``difflib``, similarity ≥
``FUZZY_CUTOFF``), counting for less. The best entries above ``MIN_SCORE`` are returned; none is an explicit "no
entry", so the model says it does not know instead of inventing.
"""

from __future__ import annotations

import difflib
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Final

#: words that carry no topic (English; the curator's keywords cover other languages' needs)
STOPWORDS: Final = frozenset(
    "the a an and or of to in on at by for with from about is are was were be been being it its this that these "
    "those what which who whom whose when where why how do does did can could would should will shall may might "
    "me my you your he she they them their his her we our us there here tell please know any some much many "
    "than then also just very into onto out up down over under again more most such not no yes".split()
)
SUFFIXES: Final = ("ations", "ation", "ings", "ing", "edly", "ies", "ied", "es", "ed", "ly", "s")
TOPIC_WEIGHT: Final = 3.0
KEYWORD_WEIGHT: Final = 3.0
TEXT_WEIGHT: Final = 1.0
FUZZY_CUTOFF: Final = 0.8
FUZZY_DISCOUNT: Final = 0.7
#: a match below this is no match (one rare text word, or one common topic word, clears it)
MIN_SCORE: Final = 1.0
MAX_RESULTS: Final = 3
#: the query the model sends is cut to this before it is matched, and to this many terms
QUERY_MAX_CHARS: Final = 500
QUERY_MAX_TERMS: Final = 30


def fold(text: str) -> str:
    """Lower-case, accents removed: "Café" → "cafe"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def stem(word: str) -> str:
    for suffix in SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            base = word[: -len(suffix)]
            return base + "y" if suffix in ("ies", "ied") else base
    return word


def terms(text: str) -> list[str]:
    return [stem(w) for w in re.findall(r"\w+", fold(text)) if len(w) > 2 and w not in STOPWORDS]


@dataclass(frozen=True)
class Entry:
    topic: str
    text: str
    keywords: tuple[str, ...] = ()
    line: int = 0
    """Where the entry starts in its file (0: not from a file)."""


class Knowledge:
    """The entries, indexed for ``search``."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = list(entries)
        self._weights: list[dict[str, float]] = []
        for entry in self.entries:
            weights: dict[str, float] = {}
            for term in terms(entry.text):
                weights[term] = max(weights.get(term, 0.0), TEXT_WEIGHT)
            for term in terms(entry.topic):
                weights[term] = max(weights.get(term, 0.0), TOPIC_WEIGHT)
            for term in (t for keyword in entry.keywords for t in terms(keyword)):
                weights[term] = max(weights.get(term, 0.0), KEYWORD_WEIGHT)
            self._weights.append(weights)
        count = max(len(self.entries), 1)
        seen: dict[str, int] = {}
        for weights in self._weights:
            for term in weights:
                seen[term] = seen.get(term, 0) + 1
        self._idf = {term: math.log(1 + count / n) for term, n in seen.items()}
        self._by_length: dict[int, list[str]] = {}  # a typo changes a word's length by a letter or two at most
        for term in sorted(self._idf):
            self._by_length.setdefault(len(term), []).append(term)

    def search(self, query: str, limit: int = MAX_RESULTS) -> list[Entry]:
        """The best entries for ``query``, best first; empty when nothing matches well enough."""
        wanted: dict[str, float] = {}  # known term → how much it counts (1, or less for a fuzzy match)
        for term in terms(query[:QUERY_MAX_CHARS])[:QUERY_MAX_TERMS]:
            if term in self._idf:
                wanted[term] = 1.0
                continue
            near = [t for n in range(len(term) - 2, len(term) + 3) for t in self._by_length.get(n, ())]
            close = difflib.get_close_matches(term, near, n=1, cutoff=FUZZY_CUTOFF) if len(term) > 3 else []
            if close:
                wanted[close[0]] = max(wanted.get(close[0], 0.0), FUZZY_DISCOUNT)
        scored = []
        for index, weights in enumerate(self._weights):
            score = sum(weights[t] * self._idf[t] * factor for t, factor in wanted.items() if t in weights)
            if score >= MIN_SCORE:
                scored.append((-score, index))
        return [self.entries[index] for _, index in sorted(scored)[:limit]]

    def answer(self, query: str) -> dict[str, Any]:
        """The tool's output for ``query``: the entries found, or an explicit "no entry"."""
        found = self.search(query)
        if not found:
            return {"found": False,
                    "note": "The exhibit's knowledge has no entry for this. Say you do not know; do not guess."}
        return {"found": True, "entries": [{"topic": e.topic, "text": e.text} for e in found]}
