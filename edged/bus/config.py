"""The ``[bus]`` table: where events are published and requests are served."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

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

    @field_validator("events", "control")
    @classmethod
    def _is_endpoint(cls, value: str) -> str:
        if not value.startswith(_SCHEMES) or value in _SCHEMES:
            raise ValueError("must be a ZeroMQ endpoint like ipc:///run/edged/x.sock or tcp://127.0.0.1:5555")
        return value
