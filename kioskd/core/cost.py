"""What a response costs: a price table per model and the usage the service reports. Pure.

Prices are USD per 1M tokens (reference model-features §2.1); the cached input rates apply to the cached share of
the input, which the service counts *within* the input tokens (§2.3). The audio models behind Chat Completions
list no cached price: their cached tokens, if any, are billed at the full input rate. Usage fields are all
optional on the wire: a missing one counts as zero, and a response without usage has no cost (its ``turn.done``
says the usage is missing, so nothing is counted twice or silently as free).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class Prices:
    """USD per 1M tokens. ``*_cached`` None: no cached price (billed at the full input rate)."""

    text_in: float
    text_out: float
    audio_in: float
    audio_out: float
    text_cached: float | None = None
    audio_cached: float | None = None


#: the reference's table (model-features §2.1, 2025-10 pricing); ``cost.prices`` overrides or adds models
DEFAULT_PRICES: Final[dict[str, Prices]] = {
    "gpt-realtime": Prices(4.00, 16.00, 32.00, 64.00, 0.40, 0.40),
    "gpt-realtime-1.5": Prices(4.00, 16.00, 32.00, 64.00, 0.40, 0.40),
    "gpt-realtime-mini": Prices(0.60, 2.40, 10.00, 20.00, 0.06, 0.30),
    "gpt-realtime-2": Prices(4.00, 24.00, 32.00, 64.00, 0.40, 0.40),
    "gpt-realtime-2.1": Prices(4.00, 24.00, 32.00, 64.00, 0.40, 0.40),
    "gpt-realtime-2.1-mini": Prices(0.60, 2.40, 10.00, 20.00, 0.06, 0.30),
    "gpt-audio-1.5": Prices(2.50, 10.00, 32.00, 64.00),
    "gpt-audio": Prices(2.50, 10.00, 32.00, 64.00),
    "gpt-audio-mini": Prices(0.60, 2.40, 10.00, 20.00),
}


def prices_for(model: str, table: dict[str, Prices] = DEFAULT_PRICES) -> Prices | None:
    """The model's prices: by its exact name, else by its family (a dated snapshot such as
    ``gpt-realtime-2025-08-28`` is priced as ``gpt-realtime``); None when the table has neither."""
    if model in table:
        return table[model]
    family = max((name for name in table if model.startswith(name + "-") and model[len(name) + 1:][:1].isdigit()
                  and len(model[len(name) + 1:]) == 10), key=len, default=None)
    return table[family] if family is not None else None


def _int(obj: Any, *path: str) -> int:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, int) and not isinstance(obj, bool) and obj > 0 else 0


def realtime_cost_usd(usage: dict[str, Any] | None, prices: Prices) -> float | None:
    """A Realtime ``response.done`` usage in USD (None without usage)."""
    if usage is None:
        return None
    text_in, audio_in = _int(usage, "input_token_details", "text_tokens"), _int(usage, "input_token_details",
                                                                               "audio_tokens")
    cached_text = min(_int(usage, "input_token_details", "cached_tokens_details", "text_tokens"), text_in)
    cached_audio = min(_int(usage, "input_token_details", "cached_tokens_details", "audio_tokens"), audio_in)
    text_cached = prices.text_in if prices.text_cached is None else prices.text_cached
    audio_cached = prices.audio_in if prices.audio_cached is None else prices.audio_cached
    micro = ((text_in - cached_text) * prices.text_in + cached_text * text_cached
             + (audio_in - cached_audio) * prices.audio_in + cached_audio * audio_cached
             + _int(usage, "output_token_details", "text_tokens") * prices.text_out
             + _int(usage, "output_token_details", "audio_tokens") * prices.audio_out)
    return micro / 1e6


def chat_cost_usd(usage: dict[str, Any] | None, prices: Prices) -> float | None:
    """A Chat Completions ``CompletionUsage`` in USD (None without usage): the text share of each side is what
    its audio share leaves of the total (reference §2.4)."""
    if usage is None:
        return None
    prompt, audio_in = _int(usage, "prompt_tokens"), _int(usage, "prompt_tokens_details", "audio_tokens")
    cached = min(_int(usage, "prompt_tokens_details", "cached_tokens"), prompt)
    completion, audio_out = _int(usage, "completion_tokens"), _int(usage, "completion_tokens_details",
                                                                   "audio_tokens")
    audio_in, audio_out = min(audio_in, prompt), min(audio_out, completion)
    cached_audio = min(cached, audio_in)  # the cached share, audio first (no audio model has a cached price)
    cached_text = min(cached - cached_audio, prompt - audio_in)
    text_cached = prices.text_in if prices.text_cached is None else prices.text_cached
    audio_cached = prices.audio_in if prices.audio_cached is None else prices.audio_cached
    micro = ((prompt - audio_in - cached_text) * prices.text_in + cached_text * text_cached
             + (audio_in - cached_audio) * prices.audio_in + cached_audio * audio_cached
             + (completion - audio_out) * prices.text_out + audio_out * prices.audio_out)
    return micro / 1e6


def cost_usd(backend: str, usage: dict[str, Any] | None, prices: Prices) -> float | None:
    """What ``usage`` from ``backend`` ("realtime" or "chat": they name their tokens differently) costs."""
    return (chat_cost_usd if backend == "chat" else realtime_cost_usd)(usage, prices)
