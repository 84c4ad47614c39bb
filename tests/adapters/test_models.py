"""Model lifecycle against the simulator's GET /v1/models/{model} on a real socket (its answers validated against
openai's Model type): a retirement is said ahead, an unknown model once, a failed lookup never stops anything."""

from __future__ import annotations

import socket
from datetime import date
from typing import Any

import httpx
import pytest
from openai.types import Model

from kioskd.adapters.models import ModelLifecycle, models_url
from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions
from tests.conftest import LogRecorder, run




TODAY = date(2026, 12, 2)


def lookup(options: SimOptions, model: str, times: int = 1, key: str | None = None) -> tuple[
        ModelLifecycle, LogRecorder, RealtimeSimulator]:
    lines = LogRecorder()

    async def main() -> tuple[ModelLifecycle, RealtimeSimulator]:
        async with RealtimeSimulator(options) as sim:
            life = ModelLifecycle(sim.url, model, auth="auto", api_key=key, today=lambda: TODAY, log=lines)
            async with httpx.AsyncClient() as client:
                for _ in range(times):
                    await life.check(client)
            return life, sim

    life, sim = run(main())
    return life, lines, sim


@pytest.mark.parametrize(("shutdown", "level", "days"), [("2027-01-20", "error", 49), ("2027-06-30", "warning", 210)])
def test_a_retirement_is_said_ahead_and_an_error_within_60_days(shutdown: str, level: str, days: int) -> None:
    life, lines, sim = lookup(SimOptions(api_key="k", shutdown_dates=(("gpt-realtime", shutdown),)), "gpt-realtime",
                              times=2, key="k")
    assert lines.records == [(level, "model.retiring", {"model": "gpt-realtime", "shutdown_date": shutdown,
                                                      "days_left": days})]  # said once for two lookups
    assert life.state["shutdown_date"] == shutdown and life.state["days_left"] == days
    assert sim.request_headers[-1]["authorization"] == "Bearer k"


def test_a_model_without_a_retirement_says_nothing() -> None:
    life, lines, _ = lookup(SimOptions(), "gpt-realtime-mini")
    assert lines.records == [] and life.state == {"model": "gpt-realtime-mini", "checked": "2026-12-02",
                                                "shutdown_date": None}


def test_an_unknown_model_is_one_clear_error() -> None:
    life, lines, _ = lookup(SimOptions(), "gpt-realtime-turbo", times=3)
    [(level, event, fields)] = lines.records
    assert (level, event) == ("error", "model.unknown") and "model=" in fields["cause"]
    assert life.state["problem"] == "model.unknown"


def test_a_failed_lookup_is_one_warning() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines = LogRecorder()

    async def main() -> None:
        life = ModelLifecycle(f"ws://127.0.0.1:{port}/v1/realtime", "gpt-realtime", auth="auto", api_key=None,
                              log=lines)
        async with httpx.AsyncClient() as client:
            await life.check(client)
            await life.check(client)

    run(main())
    assert [(lvl, e) for lvl, e, _ in lines.records] == [("warning", "model.lookup_failed")]


def test_the_simulators_model_objects_are_openais() -> None:
    async def main() -> list[dict[str, Any]]:
        async with RealtimeSimulator(SimOptions(shutdown_dates=(("gpt-audio", "2027-01-20"),))) as sim:
            url = sim.url.replace("ws://", "http://").split("/v1/")[0]
            async with httpx.AsyncClient() as client:
                return [(await client.get(f"{url}/v1/models/{m}")).json() for m in ("gpt-realtime", "gpt-audio")]

    for body in run(main()):
        assert Model.model_validate(body).model_extra in (None, {})
    assert run(main())[1]["shutdown_date"] == "2027-01-20"


def test_the_lookup_url_follows_the_realtime_url() -> None:
    assert models_url("wss://api.openai.com/v1/realtime?model=gpt-realtime", "gpt-realtime") == \
        "https://api.openai.com/v1/models/gpt-realtime"
    assert models_url("ws://127.0.0.1:9/v1/realtime", "m") == "http://127.0.0.1:9/v1/models/m"
    assert models_url("wss://museum.openai.azure.com/openai/v1/realtime?model=dep", "gpt-realtime") is None
    assert models_url("https://api.openai.com/v1/", "gpt-audio-1.5") == "https://api.openai.com/v1/models/gpt-audio-1.5"
    assert models_url("https://museum.openai.azure.com/openai/deployments/guide?api-version=x", "m") is None


def test_the_fallback_model_is_looked_up_at_the_chat_completions_endpoint() -> None:
    """The Chat Completions simulator answers GET /v1/models/{model} as the service does (openai's Model type); an
    unknown fallback model is one error naming fallback.model."""
    from kioskd.sim.chat_server import ChatSimOptions, ChatSimulator

    lines = LogRecorder()

    async def main() -> tuple[list[str], dict[str, Any]]:
        async with ChatSimulator(ChatSimOptions(voice="tone")) as sim:
            known = ModelLifecycle(sim.url, "gpt-audio-1.5", auth="auto", api_key=None, today=lambda: TODAY,
                                   log=lines, setting="fallback.model")
            unknown = ModelLifecycle(sim.url, "gpt-audio-9", auth="auto", api_key=None, today=lambda: TODAY,
                                     log=lines, setting="fallback.model")
            async with httpx.AsyncClient() as client:
                await known.check(client)
                await unknown.check(client)
                body = (await client.get(sim.url + "/models/gpt-audio-1.5")).json()
            return sim.model_lookups, body

    lookups, body = run(main())
    assert Model.model_validate(body).model_extra in (None, {})
    assert lookups[:2] == ["gpt-audio-1.5", "gpt-audio-9"]
    assert [(lvl, e, f["cause"]) for lvl, e, f in lines.records] == [
        ("error", "model.unknown", "the service does not know this model: set fallback.model")]
