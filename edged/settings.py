"""The one settings model: every default edged has lives in it or in a table it holds."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edged.agent.config import AgentConfig
from edged.bus.config import BusConfig
from edged.capture.config import CameraConfig, CameraName
from edged.engine.config import ModelConfig, StateConfig
from edged.logs import LogConfig

ENV_PREFIX = "EDGED_"
ENV_NESTED_DELIMITER = "__"


class Settings(BaseSettings):
    """edged's whole configuration. Build it with ``edged.config.load_config``."""

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
