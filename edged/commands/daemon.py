"""``edged run`` (the daemon, as systemd runs it) and ``edged config check|show``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edged.commands.options import CONFIG_HELP, CommandFailed, config_overrides, load_for_command
from edged.config import EX_CONFIG

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


def add_commands(commands: Any, config_options: argparse.ArgumentParser) -> None:
    formatter = argparse.RawDescriptionHelpFormatter
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
    config.set_defaults(handler=lambda args: usage(config))


def usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _run(args: argparse.Namespace) -> int:
    from edged.service import serve

    return serve(args.config, config_overrides(args))


def _config_check(args: argparse.Namespace) -> int:
    from edged.preflight import start_problems

    loaded = load_for_command(args, args.path)
    problems = start_problems(loaded.settings)
    if problems:
        raise CommandFailed(EX_CONFIG, *problems)
    cameras = loaded.settings.cameras
    print(
        f"{loaded.describe_files()}: valid ({len(cameras)} camera{'s' if len(cameras) != 1 else ''}, "
        f"model {loaded.settings.model.path})"
    )
    return 0


def _config_show(args: argparse.Namespace) -> int:
    from edged.config.render import render_config

    sys.stdout.write(render_config(load_for_command(args)))
    return 0
