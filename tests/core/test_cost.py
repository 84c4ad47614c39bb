"""Cost per response from the price table and the usage the service reports, against the reference's own
worked examples (model-features §2.3, §2.5)."""

from __future__ import annotations

import json

import pytest

from kioskd.core.cost import DEFAULT_PRICES, Prices, prices_for, realtime_cost_usd
from tests.core.test_realtime import RESPONSE_DONE_CANCELLED


def usage(text_in: int = 0, audio_in: int = 0, text_out: int = 0, audio_out: int = 0, cached_text: int = 0,
          cached_audio: int = 0) -> dict[str, object]:
    return {"input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in,
                                    "cached_tokens_details": {"text_tokens": cached_text,
                                                              "audio_tokens": cached_audio}},
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}


@pytest.mark.parametrize(("model", "usd"), [("gpt-realtime", 0.0141), ("gpt-realtime-mini", 0.0039),
                                            ("gpt-audio-1.5", 0.0130)])
def test_the_references_cold_museum_turn(model: str, usd: float) -> None:
    """§2.5: 600 text tokens of instructions, 3 s of question (30 audio tokens), 8 s of answer (160 audio + 30
    text tokens out)."""
    prices = prices_for(model)
    assert prices is not None
    cost = realtime_cost_usd(usage(text_in=600, audio_in=30, text_out=30, audio_out=160), prices)
    assert cost == pytest.approx(usd, abs=0.00006)


def test_cached_input_is_a_subset_of_input_billed_at_the_cached_rate() -> None:
    """The spec's response.done: 119 text in of which 64 cached, 13 audio in, 30 text + 91 audio out."""
    done = json.loads(RESPONSE_DONE_CANCELLED)["response"]["usage"]
    cost = realtime_cost_usd(done, DEFAULT_PRICES["gpt-realtime"])
    assert cost == pytest.approx((55 * 4 + 64 * 0.4 + 13 * 32 + 30 * 16 + 91 * 64) / 1e6)


def test_models_without_a_cached_price_bill_cached_tokens_in_full() -> None:
    prices = DEFAULT_PRICES["gpt-audio-1.5"]
    assert realtime_cost_usd(usage(text_in=100, cached_text=100), prices) == pytest.approx(100 * 2.5 / 1e6)


def test_missing_or_junk_usage_fields_count_as_zero_and_no_usage_has_no_cost() -> None:
    prices = Prices(1.0, 1.0, 1.0, 1.0)
    assert realtime_cost_usd({"output_token_details": {"audio_tokens": 1000}}, prices) == pytest.approx(0.001)
    assert realtime_cost_usd({"input_token_details": {"text_tokens": "lots", "audio_tokens": -5}}, prices) == 0
    assert realtime_cost_usd({"input_token_details": {"text_tokens": 10, "cached_tokens_details":
                                                      {"text_tokens": 99}}}, Prices(1, 1, 1, 1, 0.0)) == 0
    assert realtime_cost_usd(None, prices) is None


def test_a_dated_snapshot_is_priced_as_its_model_and_an_unknown_model_has_no_price() -> None:
    assert prices_for("gpt-realtime-2025-08-28") == DEFAULT_PRICES["gpt-realtime"]
    assert prices_for("gpt-realtime-mini-2025-12-15") == DEFAULT_PRICES["gpt-realtime-mini"]
    assert prices_for("my-azure-deployment") is None and prices_for("gpt-realtime-turbo") is None
