"""The button and LED adapter on gpiozero's own MockFactory pins (MockPWMPin for the pulsing LED)."""

from __future__ import annotations

import asyncio
import math
import statistics
import threading
from collections.abc import Callable
from typing import Any

import pytest

from kioskd.adapters.button import LED_TIMINGS, SIMULATED_REFUSAL, ButtonAdapter, LedTiming, mock_pin_factory
from kioskd.core.events import Led
from kioskd.errors import KioskError
from tests.conftest import run, wait_until

BUTTON_PIN = 17
LED_PIN = 27
#: gpiozero's PWMLED.pulse() steps the brightness at 25 frames per second (output_devices._blink_device)
PULSE_FPS = 25


class Edges:
    """Records what the adapter reports, with the thread each report ran on."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float, int]] = []

    def press(self, at_s: float) -> None:
        self.seen.append(("press", at_s, threading.get_ident()))

    def release(self, at_s: float) -> None:
        self.seen.append(("release", at_s, threading.get_ident()))

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.seen]


def adapter(factory: Any, edges: Edges, *, button_pin: int = BUTTON_PIN, led_pin: int | None = LED_PIN,
            pwm: bool = True, simulated: bool = True) -> ButtonAdapter:
    return ButtonAdapter(button_pin, led_pin, pin_factory=factory, loop=asyncio.get_running_loop(),
                         on_press=edges.press, on_release=edges.release, pwm=pwm, simulated=simulated)


async def settle() -> None:
    """Let every callback already posted to the loop run."""
    for _ in range(5):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------------------------------- button


def test_press_is_reported_on_the_loop_not_inside_the_edge(mock_factory: Any) -> None:
    """MockPin fires when_pressed synchronously in the caller's thread; the report must still come via the loop."""
    edges = Edges()

    async def scenario() -> tuple[list[str], float, float]:
        button = adapter(mock_factory, edges)
        before = asyncio.get_running_loop().time()
        button.press()
        inside = list(edges.kinds)  # nothing may have been reported within press() itself
        await wait_until(lambda: len(edges.seen) == 1)
        after = asyncio.get_running_loop().time()
        button.close()
        return inside, before, after

    inside, before, after = run(scenario())
    assert inside == []
    assert edges.kinds == ["press"]
    kind, at_s, thread = edges.seen[0]
    assert before <= at_s <= after  # loop.time(), taken on the loop
    assert thread == threading.get_ident()  # run() drives the loop on this thread


def test_edge_from_a_foreign_thread_is_reported_on_the_loop(mock_factory: Any) -> None:
    """As lgpio does: the edge arrives on another thread; on_press/on_release run on the loop's."""
    edges = Edges()
    pin = mock_factory.pin(BUTTON_PIN)
    edge_threads: list[int] = []

    def finger(low: bool) -> None:
        edge_threads.append(threading.get_ident())
        pin.drive_low() if low else pin.drive_high()

    async def scenario() -> None:
        button = adapter(mock_factory, edges, simulated=False)
        await asyncio.to_thread(finger, True)
        await wait_until(lambda: edges.kinds == ["press"])
        await asyncio.to_thread(finger, False)
        await wait_until(lambda: edges.kinds == ["press", "release"])
        button.close()

    run(scenario())
    loop_thread = threading.get_ident()
    assert [t for _, _, t in edges.seen] == [loop_thread, loop_thread]
    assert loop_thread not in edge_threads


def test_repeated_press_and_short_bounce_are_dropped(mock_factory: Any) -> None:
    edges = Edges()

    async def scenario() -> list[list[str]]:
        button = adapter(mock_factory, edges)
        steps = []
        button.press()
        await wait_until(lambda: edges.kinds == ["press"])
        button.press()  # already down: no level change
        await settle()
        steps.append(list(edges.kinds))
        button.release()
        button.press()  # a bounce within one loop turn: up and down again before the loop looks
        await settle()
        steps.append(list(edges.kinds))
        button.release()
        await wait_until(lambda: len(edges.seen) == 2)
        button.release()  # already up
        await settle()
        steps.append(list(edges.kinds))
        button.close()
        return steps

    assert run(scenario()) == [["press"], ["press"], ["press", "release"]]


def test_alternating_presses_all_arrive_in_order(mock_factory: Any) -> None:
    edges = Edges()

    async def scenario() -> None:
        button = adapter(mock_factory, edges)
        for i in range(5):
            button.press()
            await wait_until(lambda: len(edges.seen) == 2 * i + 1)
            button.release()
            await wait_until(lambda: len(edges.seen) == 2 * i + 2)
        button.close()

    run(scenario())
    assert edges.kinds == ["press", "release"] * 5
    times = [at_s for _, at_s, _ in edges.seen]
    assert times == sorted(times)


def test_kioskctl_cannot_press_a_real_button(mock_factory: Any) -> None:
    """simulated=False is the gpio path (here on mock pins): press() and release() are refused."""
    edges = Edges()

    async def scenario() -> None:
        button = adapter(mock_factory, edges, simulated=False)
        with pytest.raises(KioskError) as pressed:
            button.press()
        with pytest.raises(KioskError) as released:
            button.release()
        assert str(pressed.value) == str(released.value) == "button.kind is gpio: kioskctl cannot press a real button"
        await settle()
        button.close()

    run(scenario())
    assert SIMULATED_REFUSAL == "button.kind is gpio: kioskctl cannot press a real button"
    assert edges.seen == []
    assert mock_factory.pin(BUTTON_PIN).state == 1  # the pin was never driven


def test_close_releases_the_pins(mock_factory: Any) -> None:
    edges = Edges()

    async def scenario() -> tuple[float, list[str]]:
        first = adapter(mock_factory, edges)
        first.set_led(Led.SPEAKING)
        first.close()
        first.close()  # twice is fine
        led_value = mock_factory.pin(LED_PIN).state
        mock_factory.pin(BUTTON_PIN).drive_low()  # a closed adapter reports nothing
        mock_factory.pin(BUTTON_PIN).drive_high()
        await settle()
        kinds = list(edges.kinds)
        second = adapter(mock_factory, edges)  # the same pins again: would raise GPIOPinInUse if still held
        second.press()
        await wait_until(lambda: edges.kinds == ["press"])
        second.close()
        return led_value, kinds

    led_value, kinds_after_close = run(scenario())
    assert led_value == 0
    assert kinds_after_close == []


def test_pin_conflict_is_a_kiosk_error_and_frees_the_button(mock_factory: Any) -> None:
    async def scenario() -> None:
        with pytest.raises(KioskError, match=f"led pin {BUTTON_PIN}"):
            adapter(mock_factory, Edges(), led_pin=BUTTON_PIN)
        adapter(mock_factory, Edges()).close()  # the button pin was released by the failed constructor

    run(scenario())


def test_mock_pin_factory_gives_pwm_pins() -> None:
    factory = mock_pin_factory()
    try:
        edges = Edges()

        async def scenario() -> float:
            button = adapter(factory, edges)
            button.set_led(Led.IDLE)
            value = float(factory.pin(LED_PIN).state)
            button.close()
            return value

        assert run(scenario()) == pytest.approx(0.15)
    finally:
        factory.reset()


# ---------------------------------------------------------------------------------------------------- LED


def identify(history: list[Any]) -> Led:
    """Which pattern a pin history shows. ``history[0]`` is the first value written; each later entry's
    timestamp is how long the previous value lasted (gpiozero's MockPin records deltas)."""
    values = [float(s.state) for s in history]
    if len(values) == 1:
        steady = {p: t for p, t in LED_TIMINGS.items() if t.style in ("off", "steady")}
        return min(steady, key=lambda p: abs(steady[p].level - values[0]))
    levels = {v for v in values if 0.0 < v < 1.0}
    if levels:  # a pulse: one fade shows fps × fade_s - 1 distinct in-between levels
        pulses = {p: t for p, t in LED_TIMINGS.items() if t.style == "pulse"}
        return min(pulses, key=lambda p: abs((int(PULSE_FPS * pulses[p].on_s) - 1) - len(levels)))
    durations = [s.timestamp for s in history[1:]]
    blinks = {p: t for p, t in LED_TIMINGS.items() if t.style == "blink"}
    # nearest on a log scale: the blinks differ tenfold, so scheduling delays cannot move a blink across
    return min(blinks, key=lambda p: abs(math.log(statistics.median(durations) / blinks[p].on_s)))


def seen_enough(history: list[Any], timing: LedTiming) -> bool:
    values = [float(s.state) for s in history]
    if timing.style == "pulse":  # a full fade in and out: up to 1.0, then back to 0.0
        return 1.0 in values and 0.0 in values[values.index(1.0):]
    if timing.style == "blink":
        return len(history) >= 2  # one complete phase
    return True


def observe_all(factory: Any, pwm: bool) -> dict[Led, list[Any]]:
    """Show every pattern at once (one adapter and LED pin each) and collect each LED pin's history."""

    async def scenario() -> dict[Led, list[Any]]:
        adapters: dict[Led, tuple[ButtonAdapter, int]] = {}
        for i, pattern in enumerate(LED_TIMINGS):
            led_pin = 20 + i
            a = adapter(factory, Edges(), button_pin=2 + i, led_pin=led_pin, pwm=pwm)
            a.set_led(Led.LISTENING if pattern is Led.OFF else Led.OFF)  # OFF must be a change too
            start = len(factory.pin(led_pin).states)
            a.set_led(pattern)
            adapters[pattern] = (a, start)
            assert a.led_pattern is pattern
        history = {p: factory.pin(20 + i).states for i, p in enumerate(LED_TIMINGS)}
        await wait_until(lambda: all(seen_enough(history[p][adapters[p][1]:], LED_TIMINGS[p])
                                     for p in LED_TIMINGS if pwm or LED_TIMINGS[p].style != "pulse"))
        if not pwm:  # a pulse on a plain LED is a blink: wait for one phase of those too
            await wait_until(lambda: all(len(history[p][adapters[p][1]:]) >= 2
                                         for p in LED_TIMINGS if LED_TIMINGS[p].style == "pulse"))
        await asyncio.sleep(0.35)  # longer than any quick pattern's period: a steady pattern must stay put
        out = {p: list(history[p][start:]) for p, (_, start) in adapters.items()}
        for a, _ in adapters.values():
            a.close()
        return out

    return run(scenario())


def test_led_timings_are_distinct_and_complete() -> None:
    assert set(LED_TIMINGS) == set(Led)
    assert len(set(LED_TIMINGS.values())) == len(LED_TIMINGS)


def test_every_pattern_is_recognisable_from_pin_history(mock_factory: Any) -> None:
    histories = observe_all(mock_factory, pwm=True)
    assert {p: identify(h) for p, h in histories.items()} == {p: p for p in LED_TIMINGS}
    assert [float(s.state) for s in histories[Led.IDLE]] == [pytest.approx(0.15)]
    assert [float(s.state) for s in histories[Led.LISTENING]] == [1.0]
    assert [float(s.state) for s in histories[Led.OFF]] == [0.0]
    for pattern in (Led.OFFLINE, Led.ERROR):  # blinks start on, and each phase lasts at least its time
        timing = LED_TIMINGS[pattern]
        assert float(histories[pattern][0].state) == 1.0
        assert histories[pattern][1].timestamp >= timing.on_s * 0.9


def test_plain_led_blinks_what_a_pwm_led_pulses(mock_factory: Any) -> None:
    histories = observe_all(mock_factory, pwm=False)
    for pattern, timing in LED_TIMINGS.items():
        values = {float(s.state) for s in histories[pattern]}
        if timing.style in ("pulse", "blink"):
            assert values == {0.0, 1.0}, pattern
            assert histories[pattern][1].timestamp >= timing.on_s * 0.9
        else:
            assert values == {1.0 if timing.level > 0 else 0.0}, pattern


def test_same_pattern_again_does_not_restart_it(mock_factory: Any) -> None:
    async def scenario() -> int:
        a = adapter(mock_factory, Edges())
        a.set_led(Led.OFFLINE)  # starts on, stays on for a second
        changes = len(mock_factory.pin(LED_PIN).states)
        a.set_led(Led.OFFLINE)  # a restart would write off, then on again
        await settle()
        after = len(mock_factory.pin(LED_PIN).states) - changes
        a.close()
        return after

    assert run(scenario()) == 0


def test_without_an_led_the_pattern_is_still_tracked(mock_factory: Any) -> None:
    async def scenario() -> Led:
        a = adapter(mock_factory, Edges(), led_pin=None)
        a.set_led(Led.THINKING)
        pattern = a.led_pattern
        a.close()
        return pattern

    assert run(scenario()) is Led.THINKING
