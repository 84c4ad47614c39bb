"""Which arm (a backend and a model) answers which visitor. Pure; the turn machine owns one ``Arms``.

A visitor is drawn once, when they come (at start, and after each new-visitor quiet): into the A/B test's second
arm with the chance ``ab_split``, else the first, the Realtime model (``gpt-realtime``, or ``degrade`` once
today's spending has reached ``degrade_at`` of the budget). The draw holds for the whole visit. Each press then
takes the visitor's arm if its backend is up; else the Realtime session's own model (a switch still under way);
else the fallback while the Realtime link is down. A visitor who got an arm keeps it while its backend is up: a
visitor answered by the fallback stays there when the Realtime link comes back, so their conversation goes on.

The Realtime session runs one model; ``wanted_model`` says which the next visitor needs, so the link renews the
session between visitors (never under one) when the draw or the degrade asks for another model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kioskd.core import events as ev
from kioskd.core.settings import Backend, ModelArm, TurnSettings

#: why a turn went to its arm (``turn.done``'s ``route``)
MAIN, AB, FALLBACK = "main", "ab", "fallback"


class Arms:
    def __init__(self, settings: TurnSettings, rand: Callable[[], float]) -> None:
        self.settings = settings
        self._rand = rand
        self.spent_usd = 0.0  # today's spending, as the spend store last said
        self.session_model = ""  # the model the Realtime session runs (said when it came up)
        self.current: ModelArm | None = None  # the arm answering the present visitor; None: picked at the press
        self.why = MAIN
        self.routed: Backend = "realtime"  # where the visitor's intentions go (the executor starts there)
        self._second = False  # the visitor was drawn into the A/B test's second arm
        self._in_test = False  # the visitor was drawn (into either arm)
        self.draw()

    # ------------------------------------------------------------------------------------------ visitors

    def draw(self) -> None:
        """A new visitor: their arm is drawn afresh (the A/B test's, when one runs)."""
        s = self.settings
        self.current = None
        self._in_test = s.ab_arm is not None and s.ab_split > 0
        self._second = self._in_test and self._rand() < s.ab_split

    def lost(self, backend: Backend) -> None:
        """``backend`` went down: a visitor on it picks again at their next press (their draw holds)."""
        if self.current is not None and self.current.backend == backend:
            self.current = None

    def reloaded(self, settings: TurnSettings) -> None:
        """New settings: a visitor on a backend that is no longer configured picks again at their next press."""
        self.settings = settings
        if self.current is not None and self.current.backend not in {arm.backend for arm in self.all()}:
            self.current = None

    def pick(self, down: Mapping[Backend, str]) -> list[ev.Action] | None:
        """A press starts a turn: the arm answering it (``current``) and, if its backend changed, the ``Route``
        there with its ``turn.route`` line. None: no arm can answer."""
        if self.current is None or self.current.backend in down:
            target = self._target()
            if target.backend not in down and (target.backend == "chat" or target.model == self.session_model):
                self.current, self.why = target, AB if self._in_test else MAIN
            elif "realtime" not in down:  # the session still runs another model (its switch is under way)
                self.current, self.why = self._session_arm(), MAIN
            elif self.settings.fallback is not None and "chat" not in down:
                self.current, self.why = self.settings.fallback, FALLBACK
            else:
                return None
        arm = self.current
        if arm.backend == self.routed:
            return []
        self.routed = arm.backend
        fields = {"backend": arm.backend, "model": arm.model, "why": self.why}
        if self.why == FALLBACK:
            fields["realtime"] = down.get("realtime", "")
        return [ev.Route(arm.backend), ev.Note("turn.route", "info", fields)]

    # ------------------------------------------------------------------------------------------ models

    @property
    def degraded(self) -> bool:
        s = self.settings
        return (s.degrade is not None and s.daily_budget_usd is not None
                and self.spent_usd >= s.degrade_at * s.daily_budget_usd)

    @property
    def wanted_model(self) -> str:
        """The model the Realtime session should run: the present visitor's, else the next visitor's."""
        if self.current is not None and self.current.backend == "realtime":
            return self.current.model
        target = self._target()
        return target.model if target.backend == "realtime" else self._main().model

    def all(self) -> list[ModelArm]:
        s = self.settings
        return [arm for arm in (s.main, s.degrade, s.fallback, s.ab_arm) if arm is not None]

    def _main(self) -> ModelArm:
        return self.settings.degrade if self.degraded and self.settings.degrade is not None else self.settings.main

    def _target(self) -> ModelArm:
        """The arm the visitor's draw gives them now."""
        ab_arm = self.settings.ab_arm
        return ab_arm if self._second and ab_arm is not None else self._main()

    def _session_arm(self) -> ModelArm:
        return next((arm for arm in self.all() if arm.backend == "realtime" and arm.model == self.session_model),
                    self._main())
