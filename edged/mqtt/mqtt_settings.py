"""The ``[mqtt]`` table: the broker edged publishes its events and states to, Home Assistant's
discovery, and asks taken over MQTT. Off by default; every key needs a restart."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, FilePath, model_validator

from edged.config import RestartField

Qos = Literal[0, 1, 2]
TOPIC_LEVELS = re.compile(r"^[^#+\s]+(/[^#+\s]+)*$")


class MqttQos(BaseModel):
    """``[mqtt.qos]``: the MQTT quality of service of each kind of message."""

    model_config = ConfigDict(extra="forbid")

    rule: Qos = RestartField(1, description="rule events and rule states")
    detection: Qos = RestartField(0, description="detection events")
    description: Qos = RestartField(0, description="description events and states")
    answer: Qos = RestartField(1, description="answer events and replies to asks")
    status: Qos = RestartField(0, description="status, availability and snapshots")
    error: Qos = RestartField(1, description="error events")


class MqttConfig(BaseModel):
    """The ``[mqtt]`` table."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = RestartField(False, description="connect to the broker and publish")
    host: str = RestartField("localhost", min_length=1, description="the broker's host name or address")
    port: int | None = RestartField(None, ge=1, le=65535, description="the broker's port; unset: 8883 with TLS, else 1883")
    protocol: Literal["5", "3.1.1"] = RestartField("5", description="the MQTT version to speak")
    username: str | None = RestartField(None, description="the user name to log in with")
    password_file: FilePath | None = RestartField(None, description="a file holding the password (never the config)")
    tls_ca_file: FilePath | None = RestartField(None, description="CA certificate that signed the broker's; turns on TLS")
    tls_cert_file: FilePath | None = RestartField(None, description="client certificate, for brokers that ask for one")
    tls_key_file: FilePath | None = RestartField(None, description="the client certificate's private key")
    client_id: str | None = RestartField(None, max_length=128, description="unset: edged-<device>")
    base_topic: str | None = RestartField(None, description="where edged's topics start; unset: edged/<device>")
    discovery_prefix: str = RestartField("homeassistant", description="Home Assistant's discovery prefix")
    discovery: bool = RestartField(True, description="announce entities to Home Assistant")
    requests: bool = RestartField(True, description="answer requests published to <base_topic>/request")
    keepalive_s: int = RestartField(60, ge=5, le=65535, description="seconds between keep-alive pings")
    reconnect_min_s: float = RestartField(1.0, gt=0, description="first wait before connecting again")
    reconnect_max_s: float = RestartField(60.0, gt=0, description="longest wait between attempts")
    snapshot_every_s: float = RestartField(10.0, ge=0, description="seconds between camera snapshots; 0: none")
    qos: MqttQos = RestartField(default_factory=MqttQos, description="quality of service per kind")

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        for name in ("base_topic", "discovery_prefix"):
            value = getattr(self, name)
            if value is not None and not TOPIC_LEVELS.match(value):
                raise ValueError(f"{name}: a topic like edged/porch, without '+', '#', spaces or empty levels")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError("a client certificate needs TLS: set tls_ca_file too")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must not be below reconnect_min_s")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_ca_file is not None

    @property
    def broker_port(self) -> int:
        return self.port if self.port is not None else (8883 if self.tls else 1883)


def topic_level(name: str) -> str:
    """A device or host name as one topic level and one Home Assistant id part."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def read_password(path: Path) -> str:
    """The password in ``path``, without the line end an editor leaves."""
    return path.read_text().rstrip("\r\n")
