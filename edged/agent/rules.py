"""A rule's state over time: begin after N confident evaluations, end below a threshold,
then a cooldown, so one event marks one occurrence, not every frame of it."""

from __future__ import annotations

from typing import Literal

from edged.bus.schema import RuleConfig, RuleState


class RuleTracker:
    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.active = False
        self.probability: float | None = None
        self.evaluations = 0
        self._streak = 0
        self._quiet_until = 0.0

    def update(self, probability: float, now: float) -> Literal["begin", "end"] | None:
        """Feed one evaluation; the event it causes, if any."""
        rule = self.rule
        self.probability = probability
        self.evaluations += 1
        if self.active:
            if probability <= rule.off_threshold:
                self.active = False
                self._streak = 0
                self._quiet_until = now + rule.cooldown_s
                return "end"
            return None
        self._streak = self._streak + 1 if probability >= rule.on_threshold else 0
        if self._streak >= rule.consecutive and now >= self._quiet_until:
            self.active = True
            return "begin"
        return None

    def state(self) -> RuleState:
        return RuleState(id=self.rule.id, version=self.rule.version, when=self.rule.when, active=self.active,
                         probability=None if self.probability is None else round(self.probability, 4),
                         evaluations=self.evaluations)


def trackers_for(rules: list[RuleConfig], current: list[RuleTracker]) -> list[RuleTracker]:
    """Trackers for a new set of rules: an unchanged rule (same id and version) keeps its
    tracker, so a reload neither repeats a 'begin' nor forgets a cooldown."""
    kept = {(t.rule.id, t.rule.version): t for t in current}
    return [kept.get((rule.id, rule.version)) or RuleTracker(rule) for rule in rules]
