"""The ``edged`` command: run the daemon, and check what it will run with. Each command lives
in edged/commands/; this module assembles them and runs one."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from edged import __version__
from edged.commands.options import CONFIG_HELP, CommandFailed, config_options

DESCRIPTION = """\
edged watches cameras and answers questions about what they see with a Qwen3.5
vision-language model, on the device itself. systemd runs it as a service (`edged run`);
the other commands check its configuration and try its parts by hand."""

EXAMPLES = """\
examples:
  edged run                                   run on the defaults, logging to the terminal
  edged run -c ./edged.toml --log-level debug
  edged config check /etc/edged/edged.toml    validate without starting anything
  edged config show --set model.threads=2     the effective config, with each value's source
  edged models list                           installed model packages and what 'auto' picks
  edged generate --image door.png "Anyone there?"   try the model on a picture"""


def build_parser() -> argparse.ArgumentParser:
    from edged.commands import bench, bus_tools, camera_test, daemon, generate, model_packages, replay

    parser = argparse.ArgumentParser(
        prog="edged", description=DESCRIPTION, epilog=CONFIG_HELP + "\n\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    options = config_options()
    for module in (daemon, generate, model_packages, camera_test, bus_tools, replay, bench):
        module.add_commands(commands, options)
    parser.set_defaults(handler=lambda args: daemon.usage(parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":  # tools log warnings to stderr, keeping stdout for their output
        from edged.logs import LogConfig, configure_logging

        configure_logging(LogConfig(level="warning", format="console"))
    try:
        return args.handler(args)
    except CommandFailed as failure:
        print(*failure.lines, sep="\n", file=sys.stderr)
        return failure.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edged watch | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
