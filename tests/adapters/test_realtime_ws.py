"""The WebSocket edge on real loopback connections to the simulator: auth headers, handshake failures and
closes translated into kioskd's error tree, the key never in an error."""

from __future__ import annotations

import socket

import pytest

from kioskd.adapters import realtime_ws
from kioskd.errors import AuthError, ConnectionLost, classify
from kioskd.sim.realtime_server import RealtimeSimulator, SimOptions
from tests.conftest import run

KEY = "test-key-not-a-secret-0123456789"


def test_headers_bearer_for_openai_and_api_key_for_azure() -> None:
    """OpenAI gets Bearer, Azure gets api-key, no key gets nothing, and the beta header is never sent."""
    openai = realtime_ws.auth_headers("wss://api.openai.com/v1/realtime?model=gpt-realtime", "auto", KEY)
    azure = realtime_ws.auth_headers("wss://x.openai.azure.com/openai/v1/realtime?model=d", "auto", KEY)
    assert openai == {"Authorization": f"Bearer {KEY}"}
    assert azure == {"api-key": KEY}
    assert realtime_ws.auth_headers("ws://127.0.0.1:1/v1/realtime", "auto", None) == {}
    assert realtime_ws.auth_headers("wss://x.openai.azure.com/openai/v1/realtime", "bearer", KEY) == openai
    assert not any(h.lower() == "openai-beta" for h in {**openai, **azure})


def test_endpoint_drops_the_query() -> None:
    """What logs name is scheme, host and path only."""
    assert realtime_ws.endpoint_of("wss://h.example/v1/realtime?model=gpt-realtime&api-key=x") == "wss://h.example/v1/realtime"


def test_right_key_connects_and_wrong_key_is_a_fatal_auth_error() -> None:
    """A 401 at the handshake becomes AuthError (fatal), naming the endpoint and never the key."""

    async def scenario() -> None:
        async with RealtimeSimulator(SimOptions(api_key=KEY)) as sim:
            conn = await realtime_ws.open_session(sim.url, auth="auto", api_key=KEY, open_timeout_s=5)
            first = await conn.recv()
            assert '"session.created"' in str(first)
            await conn.close()
            assert sim.request_headers[-1].get("authorization", sim.request_headers[-1].get("Authorization")) == f"Bearer {KEY}"
            with pytest.raises(AuthError) as info:
                await realtime_ws.open_session(sim.url, auth="auto", api_key="wrong-key-xyz", open_timeout_s=5)
            assert info.value.status == 401
            assert classify(info.value) == "fatal"
            assert "wrong-key-xyz" not in str(info.value) and KEY not in str(info.value)
            assert "127.0.0.1" in str(info.value)

    run(scenario())


def test_refused_connection_is_retryable() -> None:
    """Nothing listening: a ConnectionError naming the endpoint, classified retry."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused

        async def scenario() -> None:
            with pytest.raises(ConnectionError) as info:
                await realtime_ws.open_session(f"ws://127.0.0.1:{port}/v1/realtime", auth="auto", api_key=None,
                                               open_timeout_s=5)
            assert classify(info.value) == "retry"
            assert f"127.0.0.1:{port}" in str(info.value)

        run(scenario())


def test_server_close_ends_frames_with_its_close_code() -> None:
    """The session cap closes with 1001: frames() ends with ConnectionLost(1001), which is retried."""

    async def scenario() -> None:
        async with RealtimeSimulator(SimOptions(session_lifetime_s=0.3)) as sim:
            conn = await realtime_ws.open_session(sim.url, auth="auto", api_key=None, open_timeout_s=5)
            seen = []
            with pytest.raises(ConnectionLost) as info:
                async for frame in realtime_ws.frames(conn):
                    seen.append(frame)
            assert info.value.close_code == 1001
            assert classify(info.value) == "retry"
            assert any("session_expired" in str(f) for f in seen)

    run(scenario())


def test_no_compression_is_offered() -> None:
    """kioskd's handshake offers no permessage-deflate, so no server can send it frames that inflate past the
    frame cap by the thousand in one read."""

    async def scenario() -> None:
        async with RealtimeSimulator(SimOptions()) as sim:
            conn = await realtime_ws.open_session(sim.url, auth="auto", api_key=None, open_timeout_s=5)
            await conn.close()
            assert "sec-websocket-extensions" not in sim.request_headers[-1]
            assert conn.protocol.extensions == []

    run(scenario())
