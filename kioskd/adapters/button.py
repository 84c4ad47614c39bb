"""The push-to-talk button and the status LED, on an injected gpiozero pin factory.

Theory: gpiozero reports edges on a thread that is not ours (lgpio's notification thread on a Pi; the caller's
own thread for ``MockPin.drive_low()``). The edge handlers therefore only post a wake-up to the asyncio loop and
return. On the loop thread the adapter re-reads ``Button.is_pressed`` and reports a press or a release only when
the level really differs from the last one it reported, so a repeated edge (bounce, a phantom event, a lost
release) never reaches the core twice. Debounce and the minimum hold are the core's business.

The simulated button (``button.kind: simulated``) is this same class on ``MockFactory`` pins: ``press()`` drives
the mock pin low as a finger would, so the Pi path and the simulated path are one path.

The core names LED patterns (``Led``); ``LED_TIMINGS`` says how each looks: pulses on a PWM LED, blinks on a
plain one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from gpiozero import LED, PWMLED, Button, GPIOZeroError  # type: ignore[import-untyped]
from gpiozero.pins import Factory  # type: ignore[import-untyped]
from gpiozero.pins.mock import MockFactory, MockPin, MockPWMPin  # type: ignore[import-untyped]

from kioskd.core.events import Led
from kioskd.errors import KioskError

Style = Literal["off", "steady", "pulse", "blink"]


@dataclass(frozen=True, slots=True)
class LedTiming:
    """How one pattern looks.

    ``steady``: constant ``level`` (0–1; a plain LED is simply on). ``pulse``: fade in over ``on_s`` and out over
    ``off_s`` on a PWM LED; a plain LED blinks ``on_s`` on, ``off_s`` off instead. ``blink``: ``on_s`` fully on,
    ``off_s`` off.
    """

    style: Style
    level: float = 0.0
    on_s: float = 0.0
    off_s: float = 0.0


LED_TIMINGS: Final[dict[Led, LedTiming]] = {
    Led.OFF: LedTiming("off"),
    Led.IDLE: LedTiming("steady", level=0.15),
    Led.LISTENING: LedTiming("steady", level=1.0),
    Led.THINKING: LedTiming("pulse", on_s=0.15, off_s=0.15),
    Led.SPEAKING: LedTiming("pulse", on_s=0.6, off_s=0.6),
    Led.OFFLINE: LedTiming("blink", on_s=1.0, off_s=1.0),
    Led.ERROR: LedTiming("blink", on_s=0.1, off_s=0.1),
    Led.CLOSED: LedTiming("steady", level=0.04),
}

HOLD_POLL_S: Final = 0.1
SIMULATED_REFUSAL: Final = "button.kind is gpio: kioskctl cannot press a real button"


def mock_pin_factory() -> Factory:
    """gpiozero's own mock backend with PWM-capable pins, for ``button.kind: simulated``."""
    return MockFactory(pin_class=MockPWMPin)


class ButtonAdapter:
    """One push button (to ground, internal pull-up) and an optional status LED.

    Thread affinity: construct, call and close on the event loop's thread. ``on_press(at_s)`` and
    ``on_release(at_s)`` are always called on the loop thread, never inside gpiozero's callback, with ``at_s``
    from ``loop.time()``.

    ``pin_factory=None`` uses gpiozero's default (lgpio on a Pi). ``simulated=True`` requires mock pins and
    enables ``press()`` / ``release()``.
    """

    def __init__(
        self,
        pin: int,
        led_pin: int | None,
        *,
        pin_factory: Factory | None,
        loop: asyncio.AbstractEventLoop,
        on_press: Callable[[float], None],
        on_release: Callable[[float], None],
        pwm: bool = True,
        simulated: bool = False,
    ) -> None:
        self._loop = loop
        self._on_press = on_press
        self._on_release = on_release
        self._simulated = simulated
        self._pwm = pwm
        self._pattern = Led.OFF
        self._closed = False
        self._led: Any = None
        try:
            # bounce_time=None: lgpio's debounce delays every edge and drops short pulses (pi-audio.md §5.3).
            # hold_time: kioskd sets no when_held, but gpiozero's HoldThread still waits hold_time while the
            # button is down, and close() joins it: a short one keeps shutdown quick during a press.
            self._button: Any = Button(pin, pull_up=True, bounce_time=None, hold_time=HOLD_POLL_S,
                                       pin_factory=pin_factory)
        except GPIOZeroError as exc:
            raise KioskError(f"button pin {pin}: {exc}") from exc
        try:
            if simulated and not isinstance(self._button.pin, MockPin):
                raise KioskError(f"button pin {pin}: button.kind simulated needs mock pins, got a real pin factory")
            if led_pin is not None:
                led_class = PWMLED if pwm else LED
                try:
                    self._led = led_class(led_pin, pin_factory=pin_factory)
                except GPIOZeroError as exc:
                    raise KioskError(f"led pin {led_pin}: {exc}") from exc
        except BaseException:
            self._button.close()
            raise
        self._pressed = bool(self._button.is_pressed)
        # Strong references: gpiozero keeps only weak ones to the callbacks it is handed.
        self._press_handler = self._edge
        self._release_handler = self._edge
        self._button.when_pressed = self._press_handler
        self._button.when_released = self._release_handler

    # ------------------------------------------------------------------------------------------ edges

    def _edge(self) -> None:
        """gpiozero's thread (or the caller's, on MockPin): post a wake-up and return at once."""
        try:
            self._loop.call_soon_threadsafe(self._post)
        except RuntimeError:
            pass  # the loop is closed: the daemon is shutting down and nobody listens any more

    def _post(self) -> None:
        """Loop thread: report the level if it really changed since the last report."""
        if self._closed:
            return
        pressed = bool(self._button.is_pressed)
        if pressed == self._pressed:
            return  # a repeated edge or a bounce shorter than one loop turn: no real change
        self._pressed = pressed
        at_s = self._loop.time()
        if pressed:
            self._on_press(at_s)
        else:
            self._on_release(at_s)

    # ------------------------------------------------------------------------------------------ LED

    def set_led(self, pattern: Led) -> None:
        """Show a named pattern (loop thread). Setting the pattern already shown does not restart it."""
        if pattern is self._pattern or self._closed:
            return
        self._pattern = pattern
        led = self._led
        if led is None:
            return
        timing = LED_TIMINGS[pattern]
        if timing.style == "off":
            led.off()
        elif timing.style == "steady":
            if self._pwm:
                led.value = timing.level
            else:
                led.on()
        elif timing.style == "pulse" and self._pwm:
            led.pulse(fade_in_time=timing.on_s, fade_out_time=timing.off_s)
        else:  # a blink, or a pulse shown on a plain LED
            led.blink(on_time=timing.on_s, off_time=timing.off_s)

    @property
    def led_pattern(self) -> Led:
        """The pattern last set (also kept when there is no LED)."""
        return self._pattern

    # ------------------------------------------------------------------------------------------ simulated

    def press(self) -> None:
        """Simulated button only: drive the mock pin low, as a finger would. The press reaches ``on_press`` on
        a later loop iteration, exactly as a real edge would. Raises KioskError on a real (gpio) button."""
        self._mock_pin().drive_low()

    def release(self) -> None:
        """Simulated button only: let the mock pin go high again."""
        self._mock_pin().drive_high()

    def _mock_pin(self) -> Any:
        if not self._simulated:
            raise KioskError(SIMULATED_REFUSAL)
        if self._closed:
            raise KioskError("button is closed")
        return self._button.pin

    # ------------------------------------------------------------------------------------------ close

    def close(self) -> None:
        """Turn the LED off and release both pins (loop thread). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._button.when_pressed = None
            self._button.when_released = None
            if self._led is not None:
                self._led.close()  # stops any blink thread and drives the pin low
        finally:
            self._button.close()
