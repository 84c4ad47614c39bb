"""Model lifecycle: at start and then daily, ask the service about the model the kiosk runs (``GET
/v1/models/{model}``, httpx), so a retirement is seen weeks ahead instead of on the day the exhibit goes silent.

A ``shutdown_date`` is a warning (``model.retiring``), an error within ``URGENT_DAYS``; a model the service does
not know (404 ``model_not_found``) is one ``model.unknown`` error (the Realtime link, meanwhile, faults on it and
retries slowly: no reconnect loop); any other failure (the network, a 5xx) is one ``model.lookup_failed`` warning
until a lookup works again. None of it ever stops the kiosk serving. The URL is the Realtime endpoint's, with
``/realtime`` replaced by ``/models/{model}`` and ws(s) by http(s); the key goes only where the Realtime key
goes (``config.check_credentials`` already refused a plaintext link to another machine). Azure endpoints name
deployments, not models: they are not looked up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import date
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from kioskd import log as log_mod
from kioskd.adapters.realtime_ws import Auth, auth_headers

URGENT_DAYS: Final = 60
LOOKUP_PERIOD_S: Final = 24 * 3600.0
TIMEOUT_S: Final = 10.0


def models_url(url: str, model: str) -> str | None:
    """Where the model is described, from a Realtime URL (``…/v1/realtime``) or a Chat Completions base URL
    (``…/v1``); None for an Azure endpoint (it names deployments) or a path kioskd does not recognise."""
    parts = urlsplit(url)
    if (parts.hostname or "").endswith(".openai.azure.com"):
        return None
    if parts.scheme in ("ws", "wss"):
        if not parts.path.endswith("/realtime"):
            return None
        base = parts.path[: -len("realtime")]
    elif parts.scheme in ("http", "https"):
        base = parts.path.rstrip("/") + "/"
    else:
        return None
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, base + f"models/{model}", "", ""))


class ModelLifecycle:
    def __init__(self, url: str, model: str, *, auth: Auth, api_key: str | None,
                 setting: str = "realtime.url's model= (or cost.model)",
                 today: Callable[[], date] = date.today, log: log_mod.Logger | None = None) -> None:
        """``url``: the endpoint the model is used at (Realtime or Chat Completions); ``setting``: the config key a
        technician fixes when the service does not know the model."""
        self.model = model
        self._setting = setting
        self._url = models_url(url, model)
        self._headers = auth_headers(url, auth, api_key) if api_key else {}
        self._today = today
        self._log = log or log_mod.get_logger("kioskd.models")
        self._said: str | None = None  # the last state said, so each is said once
        self.state: dict[str, Any] = {"model": model, "checked": None}

    async def run(self) -> None:
        """Look up now, then every day; cancel to stop."""
        if self._url is None:
            self._log.debug("model.lookup_skipped", model=self.model, cause="an Azure or unrecognised endpoint")
            return
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
            while True:
                await self.check(client)
                await asyncio.sleep(LOOKUP_PERIOD_S)

    async def check(self, client: httpx.AsyncClient) -> None:
        assert self._url is not None
        try:
            response = await client.get(self._url, headers=self._headers)
            body = response.json() if len(response.content) <= 65536 else None
        except (httpx.HTTPError, ValueError) as exc:
            if self._new("failed", "model.lookup_failed"):
                self._log.warning("model.lookup_failed", model=self.model, cause=type(exc).__name__)
            return
        code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        if response.status_code == 404 and code == "model_not_found":
            if self._new("unknown", "model.unknown"):
                self._log.error("model.unknown", model=self.model,
                                cause=f"the service does not know this model: set {self._setting}")
            return
        if response.status_code != 200 or not isinstance(body, dict):
            if self._new("failed", "model.lookup_failed"):
                self._log.warning("model.lookup_failed", model=self.model, cause=f"HTTP {response.status_code}")
            return
        self.state = {"model": self.model, "checked": self._today().isoformat(), "shutdown_date": None}
        shutdown = body.get("shutdown_date")
        if not isinstance(shutdown, str):
            self._said = None  # fine again: a later problem is said anew
            return
        self.state["shutdown_date"] = shutdown[:32]
        try:
            days: int | None = (date.fromisoformat(shutdown[:10]) - self._today()).days
        except ValueError:
            days = None
        self.state["days_left"] = days
        urgent = days is not None and days <= URGENT_DAYS
        if not self._new(f"retiring:{shutdown}:{urgent}", "model.retiring"):
            return
        if urgent:
            self._log.error("model.retiring", model=self.model, shutdown_date=shutdown[:32], days_left=days)
        else:
            self._log.warning("model.retiring", model=self.model, shutdown_date=shutdown[:32], days_left=days)

    def _new(self, state: str, problem: str) -> bool:
        """Record the problem in the status; True the first time this state is seen (it is then said)."""
        self.state = {**self.state, "model": self.model, "problem": problem}
        if state == self._said:
            return False
        self._said = state
        return True
