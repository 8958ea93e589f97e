"""The ``[bus]`` table: where events are published and requests are served, and who may."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from edged.config import RestartField

_SCHEMES = ("ipc://", "tcp://")
TRANSPORT_MAX_BYTES = 32 << 20
"""The largest request the transport accepts; ZeroMQ drops a connection announcing more."""


class BusConfig(BaseModel):
    """The ``[bus]`` table."""

    model_config = ConfigDict(extra="forbid")

    events: str = RestartField(
        "ipc:///run/edged/events.sock", description="ZeroMQ endpoint the event publisher binds",
    )
    control: str = RestartField(
        "ipc:///run/edged/control.sock", description="ZeroMQ endpoint the request server binds",
    )
    device: str = RestartField(
        default_factory=socket.gethostname, min_length=1, description="device name in every event",
    )
    status_interval_s: float = RestartField(10.0, gt=0, description="seconds between status events")
    send_hwm: int = RestartField(1000, gt=0, description="events queued per subscriber before it misses some")
    queue_limit: int = RestartField(16, gt=0, description="requests in progress before new ones get 'busy'")
    request_timeout_s: float = RestartField(60.0, gt=0, description="a request not answered by then gets 'deadline'")
    max_request_bytes: int = RestartField(65536, gt=0, description="larger requests get 'too_large'")
    curve_secret_key: Path | None = RestartField(
        None, description="the server's secret key file (edged keys generate); turns on CURVE",
    )
    curve_allow: Path | None = RestartField(
        None, description="folder of client public key files allowed to connect (with CURVE)",
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


SYSTEM_RUNTIME_DIR = Path("/run/edged")


def _user_runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "edged" if base else Path(f"/tmp/edged-{os.getuid()}")


def _can_create(directory: Path) -> bool:
    if directory.is_dir():
        return os.access(directory, os.W_OK)
    return os.access(directory.parent, os.W_OK)


def server_endpoint(endpoint: str) -> str:
    """Where the daemon binds: a default /run/edged socket moves to the user's runtime
    directory when this user cannot create it (edged run by hand, not by systemd)."""
    path = _default_ipc_path(endpoint)
    if path is None or _can_create(path.parent):
        return endpoint
    return f"ipc://{_user_runtime_dir() / path.name}"


def client_endpoint(endpoint: str) -> str:
    """Where a client connects: the system socket when it exists, else where a daemon run
    by this user would have bound it."""
    path = _default_ipc_path(endpoint)
    if path is None or path.exists():
        return endpoint
    fallback = _user_runtime_dir() / path.name
    return f"ipc://{fallback}" if fallback.exists() else endpoint


def _default_ipc_path(endpoint: str) -> Path | None:
    if not endpoint.startswith("ipc://"):
        return None
    path = Path(endpoint[len("ipc://"):])
    return path if path.parent == SYSTEM_RUNTIME_DIR else None
