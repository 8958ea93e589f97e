"""The ``[http]`` table: the HTTP door (status, snapshots, events, Prometheus metrics and an
OpenAI-compatible API). Off by default; every key needs a restart."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, FilePath, field_validator

from edged.config import RestartField


class HttpConfig(BaseModel):
    """The ``[http]`` table."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = RestartField(False, description="serve HTTP")
    listen: str = RestartField("127.0.0.1:8080", description='"host:port", or "unix:/run/edged/http.sock"')
    token_file: FilePath | None = RestartField(
        None, description="a file holding the bearer token every request must carry; unset: no token")
    max_body_mb: float = RestartField(20.0, gt=0, le=512, description="larger request bodies get 413")

    @field_validator("listen")
    @classmethod
    def _is_address(cls, value: str) -> str:
        if value.startswith("unix:"):
            if not value[len("unix:"):].startswith("/"):
                raise ValueError('a unix socket needs an absolute path, like "unix:/run/edged/http.sock"')
            return value
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError('must be "host:port" (like "127.0.0.1:8080") or "unix:/path/to.sock"')
        return value

    @property
    def unix_path(self) -> Path | None:
        return Path(self.listen[len("unix:"):]) if self.listen.startswith("unix:") else None

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path} is empty: put the bearer token in it")
    return token
