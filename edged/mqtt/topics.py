"""Where edged's messages go on the broker (docs/integrations.md lists them)."""

from __future__ import annotations

from dataclasses import dataclass

from edged.mqtt.mqtt_settings import MqttConfig, topic_level


@dataclass(frozen=True)
class Topics:
    base: str
    """``edged/<device>`` unless [mqtt] base_topic says otherwise."""

    @classmethod
    def of(cls, config: MqttConfig, device: str) -> Topics:
        return cls(config.base_topic or f"edged/{topic_level(device)}")

    @property
    def availability(self) -> str:
        """``online`` or ``offline``, retained; the broker says ``offline`` for a daemon that died."""
        return f"{self.base}/availability"

    @property
    def status(self) -> str:
        """The newest status event, retained."""
        return f"{self.base}/status"

    def event(self, kind: str, camera: str | None) -> str:
        """Every bus event, its envelope as the bus publishes it."""
        return f"{self.base}/events/{kind}/{camera}" if camera else f"{self.base}/events/{kind}"

    def rule(self, camera: str, rule: str) -> str:
        """``ON`` or ``OFF``, retained."""
        return f"{self.base}/cameras/{camera}/rules/{rule}"

    def rule_attributes(self, camera: str, rule: str) -> str:
        """The rule's probability, version and the provenance of its last event, retained."""
        return f"{self.rule(camera, rule)}/attributes"

    def description(self, camera: str) -> str:
        """The newest description (cut to Home Assistant's 255 characters), retained."""
        return f"{self.base}/cameras/{camera}/description"

    def description_attributes(self, camera: str) -> str:
        """The whole newest description and its provenance, retained."""
        return f"{self.description(camera)}/attributes"

    def snapshot(self, camera: str) -> str:
        """The newest frame the model read, as JPEG bytes, retained."""
        return f"{self.base}/cameras/{camera}/snapshot"

    @property
    def request(self) -> str:
        """Any bus request, as JSON."""
        return f"{self.base}/request"

    def reply(self, request_id: str) -> str:
        """Where a request's reply goes when it carries no MQTT 5 response topic."""
        return f"{self.base}/reply/{topic_level(request_id)}"
