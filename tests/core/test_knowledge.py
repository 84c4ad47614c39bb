"""The knowledge lookup the model's tool call runs: real questions against the example exhibit's entries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kioskd.core.knowledge import Entry, Knowledge, fold, stem, terms

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "examples" / "knowledge.yaml"


@pytest.fixture(scope="module")
def mosaic() -> Knowledge:
    data = yaml.safe_load(EXAMPLE.read_text())
    return Knowledge([Entry(d["topic"], d["text"], tuple(d.get("keywords", ()))) for d in data])


@pytest.mark.parametrize(("question", "topic"), [
    ("how old is it", "When the mosaic was made"),
    ("what year was it made", "When the mosaic was made"),
    ("how big is the mosaic", "How big it is"),
    ("what do the dolphins symbolise", "Why dolphins"),
    ("is it allowed to take photographs", "Photography"),
    ("who lived in the villa", "The owner of the villa"),
    ("tell me about the peacock", "Other mosaics nearby"),
    ("what colours are used", "How it was made"),
])
def test_a_visitors_words_find_the_entry(mosaic: Knowledge, question: str, topic: str) -> None:
    assert mosaic.search(question)[0].topic == topic


@pytest.mark.parametrize(("question", "topic"), [
    ("who discoverd it", "Who discovered it"),  # a typo
    ("what materails were used", "How it was made"),  # a typo
    ("how many tesseras", "How it was made"),  # a wrong plural
    ("when was it excavated", "Who discovered it"),  # an inflection of a keyword
])
def test_typos_and_inflections_still_find_it(mosaic: Knowledge, question: str, topic: str) -> None:
    assert topic in [e.topic for e in mosaic.search(question)]


@pytest.mark.parametrize("question", ["what is the capital of France", "how much did it cost",
                                      "what is the weather tomorrow", "the", ""])
def test_a_question_the_entries_do_not_answer_finds_nothing(mosaic: Knowledge, question: str) -> None:
    assert mosaic.search(question) == []
    answer = mosaic.answer(question)
    assert answer["found"] is False and "do not know" in answer["note"]


def test_the_answer_carries_at_most_three_entries_best_first(mosaic: Knowledge) -> None:
    answer = mosaic.answer("when was the mosaic made and how")
    assert answer["found"] is True and 1 <= len(answer["entries"]) <= 3
    assert answer["entries"][0] == {"topic": "When the mosaic was made",
                                    "text": mosaic.search("when was the mosaic made")[0].text}


def test_topic_and_keywords_count_more_than_a_passing_word_in_a_text() -> None:
    k = Knowledge([Entry("Colours", "Reds come from clay; the blue parts are glass."),
                   Entry("Glass", "Made in Egypt and carried north."),
                   Entry("Blues", "The strongest colour on the floor.", ("glass",))])
    # in every entry, the word is common here: in passing in a text it is too weak to count on its own
    assert [e.topic for e in k.search("glass")] == ["Glass", "Blues"]
    assert [e.topic for e in k.search("clay")] == ["Colours"]


def test_terms_fold_accents_drop_common_words_and_strip_suffixes() -> None:
    assert fold("Café Müller") == "cafe muller"
    assert stem("paintings") == "paint" and stem("discovered") == "discover" and stem("stories") == "story"
    assert stem("glass") == "glas" and stem("is") == "is"
    assert terms("Who painted the Dolphins?") == ["paint", "dolphin"]


def test_a_huge_query_is_cut_before_matching(mosaic: Knowledge) -> None:
    assert mosaic.search("dolphin " * 100_000)  # bounded work: cut to QUERY_MAX_CHARS
