"""The `edged` command teaches itself: help, version, and readable logs."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

from conftest import REPO, NotifySocket, edged

import edged as package


def test_version() -> None:
    result = edged("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edged {package.__version__}"


def test_help_lists_commands_config_sources_and_examples() -> None:
    result = edged("--help")
    assert result.returncode == 0
    for text in ("run", "config", "/etc/edged/edged.toml", "edged.d/*.toml", "EDGED_", "--set", "78", "examples:"):
        assert text in result.stdout


def test_every_subcommand_has_help() -> None:
    for command in (["run"], ["config"], ["config", "check"], ["config", "show"], ["replay"], ["snapshot"]):
        result = edged(*command, "--help")
        assert result.returncode == 0, command
        assert result.stdout.startswith(f"usage: edged {' '.join(command)}")
    run_help = edged("run", "--help").stdout
    assert "SIGHUP" in run_help and "exit status" in run_help


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    """`edged schema | head -1`: a closed pipe ends the command quietly."""
    import subprocess
    import sys

    shell = subprocess.run(f"{sys.executable} -m edged schema | head -c 10", shell=True, capture_output=True,
                           text=True, cwd=REPO, timeout=60)
    assert shell.stdout == '{\n  "versi' and shell.stderr == ""


def test_no_command_prints_help_and_fails() -> None:
    result = edged()
    assert result.returncode == 2
    assert "commands:" in result.stderr


def test_json_log_lines_parse(start_daemon, notify_socket: NotifySocket) -> None:
    daemon = start_daemon("--log-format", "json")
    notify_socket.wait_for("READY", "1")
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    events = [json.loads(line) for line in daemon.log().splitlines()]
    assert [e["event"] for e in events][:1] == ["starting"]
    assert {"level", "timestamp"} <= events[0].keys()
    assert events[0]["version"] == package.__version__


def test_console_logs_are_readable_lines(start_daemon, notify_socket: NotifySocket) -> None:
    daemon = start_daemon("--log-level", "info")
    notify_socket.wait_for("READY", "1")
    daemon.send(signal.SIGTERM)
    assert daemon.wait() == 0
    ready = next(line for line in daemon.log().splitlines() if "] ready " in line)
    assert re.search(r"\[info\s*\] ready\s+status='bus: 0 requests in progress; 1 camera: demo \w+; model edged-tiny-vl-fp32, \d+ jobs? queued'", ready)


def test_docs_document_every_key_with_its_default() -> None:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    from edged.settings import CameraConfig
    from edged.settings import Settings

    docs = (REPO / "docs/config.md").read_text()
    sections: dict[str, type[BaseModel]] = {
        name: field.annotation for name, field in Settings.model_fields.items() if name != "cameras"
    }
    sections["cameras.<name>"] = CameraConfig
    for name, model in sections.items():
        heading = f"## `[{name}]`"
        assert heading in docs, heading
        section = docs.split(heading, 1)[1].split("\n## ", 1)[0]
        fields = dict(model.model_fields)
        for key, field in list(fields.items()):  # a table inside the table: its keys as `table.key`
            if isinstance(field.default_factory, type) and issubclass(field.default_factory, BaseModel):
                del fields[key]
                fields.update({f"{key}.{inner}": f for inner, f in field.default_factory.model_fields.items()})
        for key, field in fields.items():
            default = field.default
            if field.default_factory is not None and key in ("device",):
                shown = "(the host name)"
            elif field.default_factory is list:
                shown = "`[]`"
            elif default is PydanticUndefined:
                shown = "(required)"
            elif isinstance(default, bool):
                shown = f"`{str(default).lower()}`"
            elif default is None:
                shown = "(unset)"

            elif isinstance(default, (str, Path)):
                shown = f'`"{default}"`'
            else:
                shown = f"`{default}`"
            assert f"| `{key}` | {shown} |" in section, f"[{name}] {key} = {shown}"


def test_ci_runs_the_test_command_the_readme_gives() -> None:
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.DOTALL)
    run_command, test_command = commands[0], commands[1]
    assert run_command.endswith("edged run")
    ci = (REPO / ".ci/run").read_text().splitlines()
    assert test_command in ci


def test_commands_that_run_no_model_never_import_onnxruntime(tmp_path: Path) -> None:
    """Every shell command on a Pi would pay for it: seconds under emulation, one on x86."""
    import subprocess
    import sys

    nobody = f"ipc://{tmp_path}/nobody.sock"
    for argv in (["--version"], ["config", "check", "--set", "model.path=auto", "--set", f"model.models_dir={tmp_path}"],
                 ["status", "--endpoint", nobody], ["watch", "--endpoint", nobody], ["ask", "x", "--endpoint", nobody]):
        probe = (f"import sys\nfrom edged.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
                 "print(sorted(m for m in ('onnxruntime', 'onnxruntime_genai', 'onnx') if m in sys.modules))")
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.stdout.strip().splitlines()[-1] == "[]", (argv, result.stdout, result.stderr)
