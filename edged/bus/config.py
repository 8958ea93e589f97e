"""The ``[bus]`` table: where events are published and requests are served, and who may."""

from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_SCHEMES = ("ipc://", "tcp://")


class BusConfig(BaseModel):
    """The ``[bus]`` table."""

    model_config = ConfigDict(extra="forbid")

    events: str = Field(
        "ipc:///run/edged/events.sock", description="ZeroMQ endpoint the event publisher binds"
    )
    control: str = Field(
        "ipc:///run/edged/control.sock", description="ZeroMQ endpoint the request server binds"
    )
    device: str = Field(
        default_factory=socket.gethostname, min_length=1, description="device name in every event"
    )
    status_interval_s: float = Field(10.0, gt=0, description="seconds between status events")
    send_hwm: int = Field(1000, gt=0, description="events queued per subscriber before it misses some")
    queue_limit: int = Field(16, gt=0, description="requests in progress before new ones get 'busy'")
    request_timeout_s: float = Field(60.0, gt=0, description="a request not answered by then gets 'deadline'")
    max_request_bytes: int = Field(65536, gt=0, description="larger requests get 'too_large'")
    curve_secret_key: Path | None = Field(
        None, description="the server's secret key file (edged keys generate); turns on CURVE"
    )
    curve_allow: Path | None = Field(
        None, description="folder of client public key files allowed to connect (with CURVE)"
    )

    @field_validator("events", "control")
    @classmethod
    def _is_endpoint(cls, value: str) -> str:
        if not value.startswith(_SCHEMES) or value in _SCHEMES:
            raise ValueError("must be a ZeroMQ endpoint like ipc:///run/edged/x.sock or tcp://127.0.0.1:5555")
        return value

    @model_validator(mode="after")
    def _tcp_needs_curve(self) -> BusConfig:
        if (self.events.startswith("tcp://") or self.control.startswith("tcp://")) and self.curve_secret_key is None:
            raise ValueError(
                "a tcp:// endpoint needs CURVE: set curve_secret_key and curve_allow "
                "(edged keys generate makes the keys), or use ipc://"
            )
        if (self.curve_secret_key is None) != (self.curve_allow is None):
            raise ValueError("curve_secret_key and curve_allow go together")
        return self
