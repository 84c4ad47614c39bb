"""openai's GA Realtime event models as strict validators (reference §14), for every test that builds or reads frames.

``validate_server`` / ``validate_client`` validate one event against the discriminated GA union and then walk the
validated model, failing on any key the model does not declare (the models allow extra keys, so a beta field
such as ``session.voice`` would otherwise pass silently). Both accept a dict or the JSON text of one frame and
return the validated model; they raise ``pydantic.ValidationError`` or ``AssertionError``.

One deliberate exception: the SDK types ``session.created`` / ``session.updated``'s ``session`` as the *request*
shape, which lacks ``id``, ``object`` and ``expires_at`` that the server sends (the spec's own session.created
example carries them). That field is therefore checked, just as strictly, against the SDK's *response* session
model, ``RealtimeSessionCreateResponse``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from openai.types.realtime import (
    RealtimeClientEvent,
    RealtimeServerEvent,
    RealtimeSessionCreateResponse,
)
from pydantic import BaseModel, Field, TypeAdapter

SERVER: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeServerEvent, Field(discriminator="type")])
CLIENT: TypeAdapter[Any] = TypeAdapter(Annotated[RealtimeClientEvent, Field(discriminator="type")])
SERVER_SESSION: TypeAdapter[RealtimeSessionCreateResponse] = TypeAdapter(RealtimeSessionCreateResponse)

_SESSION_EVENTS = frozenset({"session.created", "session.updated"})


def validate_server(event: dict[str, Any] | str | bytes) -> Any:
    """Validate one server event strictly; return the SDK model."""
    d = _as_dict(event)
    model = SERVER.validate_python(d)
    skip: frozenset[str] = frozenset()
    if d.get("type") in _SESSION_EVENTS and isinstance(d.get("session"), dict) \
            and d["session"].get("type") == "realtime":
        assert_no_extra(SERVER_SESSION.validate_python(d["session"]), "session")
        skip = frozenset({"session"})
    assert_no_extra(model, d.get("type", "event"), skip)
    return model


def validate_client(event: dict[str, Any] | str | bytes) -> Any:
    """Validate one client event strictly; return the SDK model."""
    d = _as_dict(event)
    model = CLIENT.validate_python(d)
    assert_no_extra(model, d.get("type", "event"))
    return model


def assert_no_extra(value: object, path: str, skip: frozenset[str] = frozenset()) -> None:
    """Fail if ``value`` (a validated model, list or dict of them) holds an undeclared key anywhere.
    ``skip`` names top-level fields not to descend into."""
    if isinstance(value, BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{path}: undeclared keys {sorted(extra)}"
        for name in type(value).model_fields:
            if name not in skip:
                assert_no_extra(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            assert_no_extra(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_no_extra(item, f"{path}.{key}")


def _as_dict(event: dict[str, Any] | str | bytes) -> dict[str, Any]:
    d = json.loads(event) if isinstance(event, (str, bytes)) else event
    assert isinstance(d, dict), f"an event is a JSON object, not {type(d).__name__}"
    return d
