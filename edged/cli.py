"""The ``edged`` command: run the daemon, and check what it will run with."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from edged import __version__
from edged.config import EX_CONFIG, ConfigError, LoadedConfig, Override, Settings, load_config, parse_override
from edged.config.loader import DEFAULT_CONFIG_PATH, DROP_IN_DIR
from edged.logs import LogFormat, LogLevel

DESCRIPTION = """\
edged watches cameras and answers questions about what they see with a Qwen3.5
vision-language model, on the device itself. systemd runs it as a service (`edged run`);
the other commands check its configuration and try its parts by hand."""

CONFIG_HELP = f"""\
configuration, later sources winning:
  1. {DEFAULT_CONFIG_PATH} (or --config PATH, or $EDGED_CONFIG)
  2. {DROP_IN_DIR}/*.toml beside that file, in name order
  3. EDGED_* environment variables, '__' between levels: EDGED_MODEL__THREADS=2
  4. flags: --set model.threads=2, --log-level debug
An invalid configuration is reported one line per problem, and the exit status is 78."""

RUN_DESCRIPTION = """\
Run the daemon in the foreground, logging to the terminal (to journald under systemd).
With no config file it runs on the defaults. Under systemd (Type=notify) it reports
readiness and status, and pings the watchdog only while every part makes progress."""

RUN_SIGNALS = """\
signals:
  SIGHUP           re-read the configuration; an invalid one is logged and the running one kept
  SIGTERM, SIGINT  stop: finish the current step, stop each part, exit 0

exit status (the unit restarts on 1 and 70, not on 65 or 78):
  0   stopped on request
  1   a part failed to start (the log says which and why)
  65  the model package is damaged: a file missing, truncated or not matching its sha256
  70  a thread of the daemon died of a bug (the log has its traceback)
  78  the configuration is invalid, or names key files or a model that are not there"""

EXAMPLES = """\
examples:
  edged run                                   run on the defaults, logging to the terminal
  edged run -c ./edged.toml --log-level debug
  edged config check /etc/edged/edged.toml    validate without starting anything
  edged config show --set model.threads=2     the effective config, with each value's source
  edged models list                           installed model packages and what 'auto' picks
  edged generate --image door.png "Anyone there?"   try the model on a picture"""


def _config_options() -> argparse.ArgumentParser:
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


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="edged", description=DESCRIPTION, epilog=CONFIG_HELP + "\n\n" + EXAMPLES, formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    config_options = _config_options()

    run = commands.add_parser(
        "run", parents=[config_options], formatter_class=formatter,
        help="run the daemon in the foreground (what systemd runs)",
        description=RUN_DESCRIPTION,
        epilog=CONFIG_HELP + "\n\n" + RUN_SIGNALS,
    )
    run.set_defaults(handler=_run)

    config = commands.add_parser(
        "config", help="check or show the configuration", formatter_class=formatter,
        description="Check or show the configuration, without starting anything.", epilog=CONFIG_HELP,
    )
    config_commands = config.add_subparsers(dest="config_command", metavar="COMMAND", title="commands")
    check = config_commands.add_parser(
        "check", parents=[config_options], formatter_class=formatter,
        help="validate the configuration: exit 0 when valid, 78 with one line per problem",
        description="Validate the configuration exactly as `edged run` would read it: the file,\n"
        "its drop-ins, the environment and flags; then what `edged run` needs at start: the\n"
        "bus's key files and allow-list folder, and the model package [model] path chooses\n"
        "(each file present at its size). Exit 0 when valid; otherwise one line per problem\n"
        "(file, key, value, reason) on stderr, and exit 78.",
    )
    check.add_argument("path", nargs="?", type=Path, help="config file to check (default: as for --config)")
    check.set_defaults(handler=_config_check)
    show = config_commands.add_parser(
        "show", parents=[config_options], formatter_class=formatter,
        help="print the effective configuration as TOML, with each value's source",
        description="Print the effective configuration as TOML: every key with its value and,\n"
        "after each value that is not a default, the file, variable or flag it came from.\n"
        "The output is itself a valid config file.",
    )
    show.set_defaults(handler=_config_show)
    config.set_defaults(handler=lambda args: _usage(config))

    from edged.agent.replay import add_commands as add_replay_commands
    from edged.bench.commands import add_commands as add_bench_commands
    from edged.bus.commands import add_commands as add_bus_commands
    from edged.capture.commands import add_commands as add_capture_commands
    from edged.engine.commands import add_commands as add_engine_commands
    from edged.models.commands import add_commands as add_model_commands

    add_engine_commands(commands, config_options)
    add_model_commands(commands, config_options)
    add_capture_commands(commands, config_options)
    add_bus_commands(commands, config_options)
    add_replay_commands(commands, config_options)
    add_bench_commands(commands, config_options)
    parser.set_defaults(handler=lambda args: _usage(parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":  # tools log warnings to stderr, keeping stdout for their output
        from edged.logs import LogConfig, configure_logging

        configure_logging(LogConfig(level="warning", format="console"))
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edged watch | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def config_overrides(args: argparse.Namespace) -> list[Override]:
    """The config values a command's flags set (--set, --log-level, --log-format)."""
    overrides = [parse_override(text) for text in args.assignments]
    if args.log_level:
        overrides.append(Override("log.level", args.log_level, "flag --log-level"))
    if args.log_format:
        overrides.append(Override("log.format", args.log_format, "flag --log-format"))
    return overrides


def settings_and_model(args: argparse.Namespace, model: Path | None = None) -> tuple[Settings, Path] | int:
    """For tools that run a model: the config as the daemon reads it and the package its
    ``[model] path`` chooses (or ``model``); else EX_CONFIG, after saying why."""
    from edged.models.installed import ModelSelectionError, choose_model

    try:
        settings = load_config(args.config, config_overrides(args)).settings
        return settings, model or choose_model(settings.model).path
    except ConfigError as error:
        print(*error.problems, sep="\n", file=sys.stderr)
    except ModelSelectionError as error:
        print(f"edged {args.command}: {error}", file=sys.stderr)
    return EX_CONFIG


def _load(args: argparse.Namespace, path: Path | None) -> LoadedConfig | None:
    try:
        return load_config(path, config_overrides(args))
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    from edged.service import serve

    try:
        overrides = config_overrides(args)
    except ConfigError as error:
        print(*error.problems, sep="\n", file=sys.stderr)
        return EX_CONFIG
    return serve(args.config, overrides)


def _config_check(args: argparse.Namespace) -> int:
    from edged.preflight import start_problems

    loaded = _load(args, args.path or args.config)
    if loaded is None:
        return EX_CONFIG
    problems = start_problems(loaded.settings)
    if problems:
        print(*problems, sep="\n", file=sys.stderr)
        return EX_CONFIG
    cameras = loaded.settings.cameras
    print(
        f"{loaded.describe_files()}: valid ({len(cameras)} camera{'s' if len(cameras) != 1 else ''}, "
        f"model {loaded.settings.model.path})"
    )
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from edged.config.render import render_config

    loaded = _load(args, args.config)
    if loaded is None:
        return EX_CONFIG
    sys.stdout.write(render_config(loaded))
    return 0
