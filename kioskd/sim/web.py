"""What the two aiohttp simulators (Chat Completions, Realtime over WebRTC) share: serving an app on a port and
reading the port back. aiohttp is a test and webrtc dependency, so this is apart from ``common.py``, which the
WebSocket simulator (the embedded default) imports."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def serve_app(app: web.Application, host: str, port: int, **runner: Any) -> web.AppRunner:
    """Listen on ``host:port`` (0: any free port) with no access log and a 1 s shutdown; ``runner``: more
    ``AppRunner`` options."""
    started = web.AppRunner(app, access_log=None, shutdown_timeout=1.0, **runner)
    await started.setup()
    await web.TCPSite(started, host, port).start()
    return started


def port_of(runner: web.AppRunner | None) -> int:
    """The port a started runner listens on."""
    if runner is None or not runner.addresses:
        raise RuntimeError("the simulator is not started")
    return int(runner.addresses[0][1])
