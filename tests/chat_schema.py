"""openai's Chat Completions types as strict validators, for every test that builds or reads Chat Completions bodies.

- ``validate_request(body)``: a ``POST /chat/completions`` body against ``CompletionCreateParamsStreaming`` (or
  ``…NonStreaming`` when ``stream`` is not true). The params are TypedDicts, which pydantic lets carry undeclared
  keys, and whose ``Iterable`` fields (message content) it validates lazily, so a bad content part would pass
  (reference model-features §5). So each message is validated again as ``ChatCompletionMessageParam`` and each
  content part as its own part type (``ChatCompletionContentPartInputAudioParam`` refuses ``pcm16``), and then the
  whole body is walked against the TypedDicts' annotations, failing on any key one does not declare.
- ``validate_chunk`` / ``validate_completion`` / ``validate_usage`` / ``validate_error``: a streamed chunk, a
  non-streamed answer, a usage object and an error body against their SDK models, with no undeclared key anywhere
  (``tests.realtime_schema.assert_no_extra``); a chunk's ``delta.audio`` must be a ``ChoiceDeltaAudio`` (openai
  ≥ 3.25), not an extra dict.

Each accepts a dict or its JSON text and returns the validated value; they raise ``pydantic.ValidationError`` or
``AssertionError``.
"""

from __future__ import annotations

import collections.abc
import functools
import json
import types
import typing
from typing import Any, Union

from openai.types import CompletionUsage, ErrorObject
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionContentPartImageParam,
    ChatCompletionContentPartInputAudioParam,
    ChatCompletionContentPartRefusalParam,
    ChatCompletionContentPartTextParam,
    ChatCompletionMessageParam,
)
from openai.types.chat.chat_completion_chunk import ChoiceDeltaAudio
from openai.types.chat.chat_completion_content_part_param import File
from openai.types.chat.completion_create_params import (
    CompletionCreateParamsNonStreaming,
    CompletionCreateParamsStreaming,
)
from pydantic import TypeAdapter, ValidationError
from typing_extensions import NotRequired, ReadOnly, Required, is_typeddict

from tests.realtime_schema import assert_no_extra

#: each content part type, validated on its own (pydantic only validates Iterable content when it is consumed)
PART_TYPES: dict[str, Any] = {
    "text": ChatCompletionContentPartTextParam,
    "input_audio": ChatCompletionContentPartInputAudioParam,
    "image_url": ChatCompletionContentPartImageParam,
    "file": File,
    "refusal": ChatCompletionContentPartRefusalParam,
}


def validate_request(body: dict[str, Any] | str | bytes) -> dict[str, Any]:
    """Validate a Chat Completions request body strictly; return it (as a dict)."""
    d = _as_dict(body)
    params = CompletionCreateParamsStreaming if d.get("stream") is True else CompletionCreateParamsNonStreaming
    _adapter(params).validate_python(d)
    messages = d.get("messages")
    assert isinstance(messages, list), "messages: expected a list"
    for i, message in enumerate(messages):
        _adapter(ChatCompletionMessageParam).validate_python(message)
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                assert kind in PART_TYPES, f"messages[{i}].content[{j}]: unknown part type {kind!r}"
                _adapter(PART_TYPES[kind]).validate_python(part)
    _strict(d, params, "request")
    return d


def validate_chunk(chunk: dict[str, Any] | str | bytes) -> ChatCompletionChunk:
    """Validate one streamed ``chat.completion.chunk`` strictly; return the SDK model."""
    d = _as_dict(chunk)
    model = ChatCompletionChunk.model_validate(d)
    assert_no_extra(model, "chunk")
    for raw, choice in zip(d.get("choices", []), model.choices):
        if "audio" in raw.get("delta", {}):
            assert isinstance(choice.delta.audio, ChoiceDeltaAudio), "delta.audio is not a ChoiceDeltaAudio"
    if model.usage is not None:
        validate_usage(d["usage"])
    return model


def validate_completion(body: dict[str, Any] | str | bytes) -> ChatCompletion:
    """Validate a non-streamed ``chat.completion`` strictly; return the SDK model."""
    model = ChatCompletion.model_validate(_as_dict(body))
    assert_no_extra(model, "completion")
    return model


def validate_usage(usage: dict[str, Any] | str | bytes) -> CompletionUsage:
    model = CompletionUsage.model_validate(_as_dict(usage))
    assert_no_extra(model, "usage")
    return model


def validate_error(body: dict[str, Any] | str | bytes) -> ErrorObject:
    """An error answer: ``{"error": ErrorObject}`` and nothing else, with a message, a type and a code key."""
    d = _as_dict(body)
    assert set(d) == {"error"}, f"error body keys {sorted(d)}"
    assert isinstance(d["error"], dict) and {"message", "type", "param", "code"} <= set(d["error"]), d
    model = ErrorObject.model_validate(d["error"])
    assert_no_extra(model, "error")
    return model


# ------------------------------------------------------------------------------------------- the strict walk


@functools.lru_cache(maxsize=None)
def _adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def _strict(value: Any, tp: Any, path: str) -> None:
    """Fail if ``value`` holds a key that the TypedDicts in ``tp`` do not declare (types are pydantic's job; a
    union is walked along the first member that validates and is strict)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Annotated, Required, NotRequired, ReadOnly):
        _strict(value, args[0], path)
    elif is_typeddict(tp):
        assert isinstance(value, dict), f"{path}: expected an object"
        hints = typing.get_type_hints(tp, include_extras=True)
        extra = set(value) - set(hints)
        assert not extra, f"{path}: undeclared keys {sorted(extra)}"
        missing = set(getattr(tp, "__required_keys__", ())) - set(value)
        assert not missing, f"{path}: missing keys {sorted(missing)}"
        for key, item in value.items():
            _strict(item, hints[key], f"{path}.{key}")
    elif origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return
        loose: list[AssertionError] = []  # members the value validates as, but with undeclared keys
        for member in args:
            try:
                _adapter(member).validate_python(value)
            except ValidationError:
                continue
            try:
                _strict(value, member, path)
                return
            except AssertionError as exc:
                loose.append(exc)
        if loose:
            raise loose[0]
        raise AssertionError(f"{path}: fits no member of {tp}")
    elif origin in (list, collections.abc.Iterable, collections.abc.Sequence) and args:
        assert isinstance(value, list), f"{path}: expected an array"
        for i, item in enumerate(value):
            _strict(item, args[0], f"{path}[{i}]")
    elif origin is dict and len(args) == 2:
        for key, item in value.items():
            _strict(item, args[1], f"{path}.{key}")


def _as_dict(value: dict[str, Any] | str | bytes) -> dict[str, Any]:
    d = json.loads(value) if isinstance(value, (str, bytes)) else value
    assert isinstance(d, dict), f"expected a JSON object, not {type(d).__name__}"
    return d
