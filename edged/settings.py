"""The daemon's settings: every part's own tables, joined into the one model that config
files, the environment and flags are read into. Every default edged has lives in one of them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edged.agent.agent_settings import AgentConfig, CameraTasksConfig
from edged.bus.bus_settings import BusConfig
from edged.capture.camera_settings import CameraName, CaptureConfig
from edged.config import LoadedConfig, Override, read_config
from edged.config.loader import ENV_NESTED_DELIMITER, ENV_PREFIX
from edged.engine.state_settings import StateConfig
from edged.logs import LogConfig
from edged.models.model_settings import ModelConfig
from edged.mqtt.mqtt_settings import MqttConfig
from edged.http.http_settings import HttpConfig


class CameraConfig(CameraTasksConfig, CaptureConfig):
    """One ``[cameras.<name>]`` table: capture's half (where frames come from, which go on)
    and the agent's (the rules and tasks run on them)."""


class Settings(BaseSettings):
    """edged's whole configuration. Build it with ``load_config`` below."""

    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
    )

    model: ModelConfig = Field(default_factory=ModelConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    bus: BusConfig = Field(default_factory=BusConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    cameras: dict[CameraName, CameraConfig] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The loader merges files, drop-ins, environment and flags itself, because it must
        # remember where each value came from to name the file in an error.
        return (init_settings,)


def load_config(path: Path | None = None, overrides: Iterable[Override] = ()) -> LoadedConfig:
    """The daemon's configuration from every source (edged.config.read_config); raises
    ConfigError listing every problem."""
    return read_config(Settings, path, overrides)
