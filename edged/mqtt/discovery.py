"""Home Assistant MQTT discovery: what edged announces, as retained config messages under the
discovery prefix. One device per edged; a binary_sensor per rule, a sensor per camera's
description, a camera entity per camera (its newest snapshot), sensors for tokens/s and frame
latency. An entity that is gone is removed by an empty retained config at its topic."""

from __future__ import annotations

from typing import Any

from edged import __version__
from edged.bus.schema import Status
from edged.mqtt.mqtt_settings import topic_level
from edged.mqtt.topics import Topics

Payloads = dict[str, dict[str, Any]]
"""Discovery config payloads by their topic."""


def node_id(device: str) -> str:
    return f"edged_{topic_level(device)}"


def config_topic(prefix: str, component: str, device: str, object_id: str) -> str:
    return f"{prefix}/{component}/{node_id(device)}/{topic_level(object_id)}/config"


def own_configs(prefix: str, device: str) -> str:
    """A subscription that finds every config this device announced, this run or earlier."""
    return f"{prefix}/+/{node_id(device)}/+/config"


def discovery_payloads(prefix: str, device: str, topics: Topics, status: Status, cameras: list[str]) -> Payloads:
    """Every entity edged has now, its config payload by topic."""
    ident = node_id(device)
    shared = {
        "availability_topic": topics.availability, "payload_available": "online", "payload_not_available": "offline",
        "device": {"identifiers": [ident], "name": f"edged {device}", "manufacturer": "edged",
                   "model": status.model or "edged", "sw_version": __version__},
    }
    payloads: Payloads = {}

    def entity(component: str, object_id: str, name: str, **fields: Any) -> None:
        payloads[config_topic(prefix, component, device, object_id)] = {
            "name": name, "unique_id": f"{ident}_{topic_level(object_id)}", **fields, **shared}

    for camera in cameras:
        for rule in status.rules.get(camera, []):
            entity("binary_sensor", f"{camera}_{rule.id}", f"{camera} {rule.id}",
                   state_topic=topics.rule(camera, rule.id), payload_on="ON", payload_off="OFF",
                   json_attributes_topic=topics.rule_attributes(camera, rule.id), icon="mdi:eye-check")
        entity("sensor", f"{camera}_description", f"{camera} description", state_topic=topics.description(camera),
               json_attributes_topic=topics.description_attributes(camera), icon="mdi:text-box-outline")
        entity("camera", camera, f"{camera}", topic=topics.snapshot(camera))
    entity("sensor", "tokens_per_s", "Tokens per second", state_topic=topics.status,
           value_template="{{ value_json.data.tokens_per_s | default(none) }}", unit_of_measurement="tok/s",
           state_class="measurement", entity_category="diagnostic")
    entity("sensor", "frame_to_event_ms", "Frame to event latency", state_topic=topics.status,
           value_template="{{ value_json.data.frame_to_event_ms | default(none) }}", unit_of_measurement="ms",
           device_class="duration", state_class="measurement", entity_category="diagnostic")
    return payloads
