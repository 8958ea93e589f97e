"""What every command shares: the configuration flags, reading the configuration as the
daemon would, and one way out with an exit status."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from edged.config import EX_CONFIG, ConfigError, LoadedConfig, Override, parse_override
from edged.config.loader import DEFAULT_CONFIG_PATH, DROP_IN_DIR
from edged.logs import LogFormat, LogLevel
from edged.settings import Settings, load_config

CONFIG_HELP = f"""\
configuration, later sources winning:
  1. {DEFAULT_CONFIG_PATH} (or --config PATH, or $EDGED_CONFIG)
  2. {DROP_IN_DIR}/*.toml beside that file, in name order
  3. EDGED_* environment variables, '__' between levels: EDGED_MODEL__THREADS=2
  4. flags: --set model.threads=2, --log-level debug
An invalid configuration is reported one line per problem, and the exit status is 78."""


class CommandFailed(Exception):
    """A command's way out: ``lines`` go to stderr, and ``status`` is the exit status."""

    def __init__(self, status: int, *lines: str) -> None:
        super().__init__(*lines)
        self.status, self.lines = status, lines


def config_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("configuration")
    group.add_argument(
        "-c", "--config", type=Path, metavar="PATH",
        help=f"main config file (default: $EDGED_CONFIG, else {DEFAULT_CONFIG_PATH})",
    )
    group.add_argument(
        "-s", "--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
        help="set one value, e.g. --set cameras.front.fps=2 (repeatable; VALUE is read as TOML, "
        "else as text)",
    )
    group.add_argument("--log-level", choices=get_args(LogLevel), help="shorthand for --set log.level=...")
    group.add_argument(
        "--log-format", choices=get_args(LogFormat),
        help="shorthand for --set log.format=...; auto is journal under systemd, console otherwise",
    )
    return options


def config_overrides(args: argparse.Namespace) -> list[Override]:
    """The config values a command's flags set (--set, --log-level, --log-format); a malformed
    --set is EX_CONFIG."""
    try:
        overrides = [parse_override(text) for text in args.assignments]
    except ConfigError as error:
        raise CommandFailed(EX_CONFIG, *error.problems) from None
    if args.log_level:
        overrides.append(Override("log.level", args.log_level, "flag --log-level"))
    if args.log_format:
        overrides.append(Override("log.format", args.log_format, "flag --log-format"))
    return overrides


def load_for_command(args: argparse.Namespace, path: Path | None = None) -> LoadedConfig:
    """The configuration as ``edged run`` would read it (``path`` instead of --config when
    given); an invalid one is EX_CONFIG, one line per problem."""
    overrides = config_overrides(args)
    try:
        return load_config(path or args.config, overrides)
    except ConfigError as error:
        raise CommandFailed(EX_CONFIG, *error.problems) from None


def settings_and_model(args: argparse.Namespace, model: Path | None = None) -> tuple[Settings, Path]:
    """For tools that run a model: the settings and the package ``[model] path`` chooses (or
    ``model``); EX_CONFIG when either cannot be had."""
    from edged.models.installed import ModelSelectionError, choose_model

    settings = load_for_command(args).settings
    try:
        return settings, model or choose_model(settings.model).path
    except ModelSelectionError as error:
        raise CommandFailed(EX_CONFIG, f"edged {args.command}: {error}") from None
