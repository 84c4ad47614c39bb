"""The action executor: feeds the core one input at a time and carries out its actions, in order.

An input produced by an action (``Interrupt`` → ``Played``) is handled before the next queued input, so a
barge-in goes out as stop → cancel → truncate → clear. Every adapter is injected (audio, LED, the link factory,
the sinks, systemd's status, the speaker's reopen), so the executor runs in-process in tests on real parts. Edge
threads never touch the machine: their adapters post inputs to this loop.

Failures: an exception from the core is a kioskd bug — logged once with its traceback as ``turn.bug``, then the
core's ``recover`` decides (fresh machines with the link's backoff kept, or ``Exit(1)`` after repeated bugs); an
action that raises is logged as ``daemon.action_failed`` and the rest still run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from kioskd import log as log_mod
from kioskd.core import events as ev
from kioskd.core.kiosk import Kiosk
from kioskd.core.pcm import Pcm, earcon_pcm
from kioskd.metrics import Sink


class Link(Protocol):
    def start(self) -> None: ...
    def send(self, intent: ev.Intent) -> None: ...
    async def close(self) -> None: ...


class Speaker(Protocol):
    def play(self, pcm24: Pcm, item_id: str | None) -> None: ...
    def end_of_reply(self) -> None: ...
    def interrupt(self) -> tuple[str | None, int]: ...
    def set_mic(self, mode: ev.Mic) -> None: ...


class ToolRuns(Protocol):
    def start(self, call_id: str, name: str, arguments: str) -> None: ...
    async def cancel(self, call_id: str) -> None: ...


class Executor:
    """Drives ``kiosk``. ``run()`` returns the exit code an ``Exit`` action asked for (it runs until then or until
    cancelled); ``close()`` ends the session and the timers."""

    def __init__(self, kiosk: Kiosk, *, audio: Speaker, set_led: Callable[[ev.Led], None],
                 open_link: Callable[[Callable[[ev.Input], None], str], Link], sinks: Sequence[Sink],
                 publish: Callable[[ev.Publish], None] = lambda p: None,
                 reopen_speaker: Callable[[float], Awaitable[None]] | None = None,
                 tools: ToolRuns | None = None, prompts: dict[ev.Earcon, Pcm] | None = None,
                 open_chat: Callable[[Callable[[ev.Input], None]], Link] | None = None,
                 log: log_mod.Logger | None = None) -> None:
        self.kiosk = kiosk
        self._audio = audio
        self._set_led = set_led
        self._open_link = open_link
        self._sinks = sinks
        self._publish = publish
        self._reopen_speaker = reopen_speaker
        self._tools = tools
        self._log = log or log_mod.get_logger("kioskd")
        self._queue: asyncio.Queue[ev.Input] = asyncio.Queue()
        self._timers: dict[ev.Timer, asyncio.TimerHandle] = {}
        self._link: Link | None = None
        self._open_chat = open_chat
        self._chat: Link | None = open_chat(self.post) if open_chat is not None else None  # the fallback backend
        self._route: ev.Backend = "realtime"  # where the visitor's intentions go
        self._exit: int | None = None
        self._earcons = {kind: earcon_pcm(kind) for kind in ev.Earcon} | (prompts or {})  # spoken over tones

    def post(self, inp: ev.Input) -> None:
        """Queue an input (loop thread only). A press opens the microphone as it is queued, so the pre-roll the
        audio adapter kept goes ahead of it and live blocks follow it; the core re-gates once it has decided."""
        if isinstance(inp, ev.Pressed):
            self._audio.set_mic(ev.Mic.LIVE)
        self._queue.put_nowait(inp)

    @property
    def idle(self) -> bool:
        """No input is waiting to be handled."""
        return self._queue.empty()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        if self._chat is not None:
            self._chat.start()
        await self._execute(self.kiosk.begin(loop.time()))
        while self._exit is None:
            await self._feed(await self._queue.get())
        return self._exit

    async def close(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        for link in (self._link, self._chat):
            if link is not None:
                await link.close()
        self._link = self._chat = None

    async def _feed(self, inp: ev.Input) -> None:
        now = asyncio.get_running_loop().time()
        try:
            actions = self.kiosk.handle(inp, now)
        except Exception as exc:  # a kioskd bug: say so once with the traceback; the core decides what next
            self._log.error("turn.bug", input=type(inp).__name__, phase=self.kiosk.phase.value, exc_info=exc,
                            **log_mod.error_fields(exc))
            actions = self.kiosk.recover(now, exc)
        await self._execute(actions)

    async def _execute(self, actions: list[ev.Action]) -> None:
        """Run the actions in order; an input one of them produces is fed right after the list."""
        produced: list[ev.Input] = []
        for action in actions:
            try:
                result = await self._do(action)
            except Exception as exc:  # an edge failed to carry out one action: say which, go on with the rest
                self._log.error("daemon.action_failed", action=type(action).__name__, **log_mod.error_fields(exc))
                continue
            if result is not None:
                produced.append(result)
        for inp in produced:
            await self._feed(inp)

    async def _do(self, action: ev.Action) -> ev.Input | None:
        match action:
            case ev.Note():
                for sink in self._sinks:
                    sink.note(action)
            case ev.Play(pcm, item_id):
                self._audio.play(pcm, item_id)
            case ev.EndOfReply():
                self._audio.end_of_reply()
            case ev.Interrupt():
                playing, played_ms = self._audio.interrupt()
                return ev.Played(playing, played_ms)
            case ev.PlayEarcon(kind):
                self._audio.play(self._earcons[kind], None)
                self._audio.end_of_reply()
            case ev.SetLed(pattern):
                self._set_led(pattern)
            case ev.SetMic(mode):
                self._audio.set_mic(mode)
            case ev.Arm(timer, at_s):
                old = self._timers.pop(timer, None)
                if old is not None:
                    old.cancel()
                self._timers[timer] = asyncio.get_running_loop().call_at(at_s, self.post, ev.Timeout(timer))
            case ev.Disarm(timer):
                handle = self._timers.pop(timer, None)
                if handle is not None:
                    handle.cancel()
            case ev.Connect(model):
                await self._close_link()
                self._link = self._open_link(self.post, model)
                self._link.start()
            case ev.Close():
                await self._close_link()
            case ev.Publish():
                self._publish(action)
            case ev.ReopenSpeaker(latency_s):
                if self._reopen_speaker is not None:
                    await self._reopen_speaker(latency_s)
            case ev.Exit(code):
                self._exit = code
            case ev.RunTool(call_id, name, arguments):
                if self._tools is None:
                    return ev.ToolResult(call_id, '{"error": "this kiosk has no tools"}')
                self._tools.start(call_id, name, arguments)
            case ev.CancelTool(call_id):
                if self._tools is not None:
                    await self._tools.cancel(call_id)
            case ev.Route(backend):
                self._route = backend
            case ev.ResetFallback():
                if self._chat is not None and self._open_chat is not None:
                    await self._chat.close()
                    self._chat = self._open_chat(self.post)
                    self._chat.start()
            case ev.ConfigureSession():  # the link machine's: always the Realtime session
                if self._link is not None:
                    self._link.send(action)
            case _ if isinstance(action, ev.INTENTS):
                target = self._chat if self._route == "chat" else self._link
                if target is not None:
                    target.send(action)
            case _:
                raise TypeError(f"no executor for {action!r}")
        return None

    async def _close_link(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await link.close()

