"""Configuration: where values come from, and what an operator sees when one is wrong."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest

from conftest import clean_env, edged

EX_CONFIG = 78


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def shown(result) -> tuple[dict, list[str]]:
    """`config show` output as data, and its lines (for the source comments)."""
    assert result.returncode == 0, result.stderr
    return tomllib.loads(result.stdout), result.stdout.splitlines()


def line_for(lines: list[str], key: str, table: str) -> str:
    current = ""
    for line in lines:
        if line.startswith("["):
            current = line.strip("[]")
        elif current == table and line.startswith(f"{key} ="):
            return line
    raise AssertionError(f"{table}.{key} not in output")


# -- precedence ---------------------------------------------------------------------------


@pytest.fixture
def layered(tmp_path: Path) -> Path:
    """A main file and three drop-ins, each overriding some of what came before."""
    main = write(
        tmp_path / "etc/edged.toml",
        """
        [model]
        threads = 1
        max_length = 100
        [state]
        budget_mb = 10
        [cameras.front]
        source = "synthetic"
        fps = 0.5
        """,
    )
    write(tmp_path / "etc/edged.d/20-late.toml", "[model]\nthreads = 3\nmax_length = 300\n")
    write(tmp_path / "etc/edged.d/10-early.toml", "[model]\nthreads = 2\nmax_length = 200\n[cameras.front]\nfps = 2.0\n")
    write(tmp_path / "etc/edged.d/notes.txt", "not toml, not read")
    return main


def test_drop_ins_override_the_main_file_in_name_order(layered: Path) -> None:
    config, lines = shown(edged("config", "show", "--config", str(layered)))
    assert config["model"]["threads"] == 3
    assert config["model"]["max_length"] == 300
    assert config["state"]["budget_mb"] == 10
    assert {k: config["cameras"]["front"][k] for k in ("source", "enabled", "fps")} == {
        "source": "synthetic", "enabled": True, "fps": 2.0}
    assert line_for(lines, "max_length", "model").endswith(f"# from {layered.parent}/edged.d/20-late.toml")
    assert line_for(lines, "fps", "cameras.front").endswith(f"# from {layered.parent}/edged.d/10-early.toml")
    assert line_for(lines, "source", "cameras.front").endswith(f"# from {layered}")


def test_environment_overrides_files_and_flags_override_environment(layered: Path) -> None:
    env = clean_env(EDGED_MODEL__THREADS="4", EDGED_MODEL__MAX_LENGTH="400", EDGED_CAMERAS__FRONT__FPS="3")
    config, lines = shown(edged("config", "show", "--config", str(layered), "--set", "model.threads=5", env=env))
    assert config["model"]["threads"] == 5
    assert config["model"]["max_length"] == 400
    assert config["cameras"]["front"]["fps"] == 3.0
    assert line_for(lines, "threads", "model").endswith("# from flag --set model.threads")
    assert line_for(lines, "max_length", "model").endswith("# from environment EDGED_MODEL__MAX_LENGTH")


def test_config_file_can_be_named_by_environment(layered: Path) -> None:
    config, _ = shown(edged("config", "show", env=clean_env(EDGED_CONFIG=str(layered))))
    assert config["model"]["threads"] == 3


def test_log_flags_are_config_values(tmp_path: Path) -> None:
    main = write(tmp_path / "edged.toml", '[log]\nlevel = "error"\n')
    config, lines = shown(edged("config", "show", "-c", str(main), "--log-level", "debug", "--log-format", "json"))
    assert config["log"] == {"level": "debug", "format": "json"}
    assert line_for(lines, "level", "log").endswith("# from flag --log-level")


def test_defaults_need_no_file_and_are_not_marked(tmp_path: Path) -> None:
    # No --config and no EDGED_CONFIG: /etc/edged/edged.toml, absent on test machines.
    assert not Path("/etc/edged/edged.toml").exists()
    config, lines = shown(edged("config", "show"))
    assert config["model"]["max_length"] > 0
    assert config["bus"]["events"].startswith("ipc://")
    assert not any("# from" in line for line in lines if not line.startswith("#"))


def test_show_output_is_a_config_that_loads_to_the_same_settings(layered: Path, tmp_path: Path) -> None:
    first = edged("config", "show", "--config", str(layered), "--set", "cameras.back.source=file:/tmp/x.mp4")
    copy = write(tmp_path / "copy/edged.toml", first.stdout)
    second = edged("config", "show", "--config", str(copy))
    assert tomllib.loads(second.stdout) == tomllib.loads(first.stdout)


# -- errors -------------------------------------------------------------------------------


def check(path: Path, env: dict[str, str] | None = None):
    return edged("config", "check", str(path), env=env)


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[cameras.front]\nsource = 'synthetic'\nfps = -1\n", "cameras.front.fps: must be greater than 0, got -1"),
        ("[model]\nthreads = 'many'\n", 'model.threads: must be a valid integer, unable to parse string as an integer, got "many"'),
        ("[model]\nmax_length = 0\n", "model.max_length: must be greater than 0, got 0"),
        ("[model]\npath = ''\n", 'model.path: must have at least 1 character, got ""'),
        ("[state]\nbudget_mb = 1.5\n", "state.budget_mb: must be a valid integer, got a number with a fractional part, got 1.5"),
        ("[log]\nlevel = 'loud'\n", "log.level: must be 'debug', 'info', 'warning' or 'error', got \"loud\""),
        ("[bus]\nevents = 'http://x'\n", "bus.events: must be a ZeroMQ endpoint"),
        ("[cameras.front]\nsource = 'webcam'\n", 'cameras.front.source: must be one of picamera2, synthetic'),
        ("[cameras.front]\nfps = 2\n", "cameras.front.source: required, but not set"),
        ("[cameras.Front]\nsource = 'synthetic'\n", "cameras.Front: camera names are 1 to 32 lower-case letters"),
        ("[cameras.front]\nsource = 'synthetic'\nenabled = 'sometimes'\n", "cameras.front.enabled: must be a valid boolean"),
        ("model = 3\n", "model: must be a valid dictionary or instance of ModelConfig, got 3"),
        ("[bus]\ncontrol = 'tcp://0.0.0.0:5555'\n", "bus: a tcp:// endpoint needs CURVE: set curve_secret_key"),
    ],
)
def test_each_invalid_value_is_one_line_naming_file_key_value_and_reason(tmp_path: Path, toml: str, expected: str) -> None:
    path = write(tmp_path / "edged.toml", toml)
    result = check(path)
    assert result.returncode == EX_CONFIG
    assert result.stderr.splitlines() == [line for line in result.stderr.splitlines() if line]
    [line] = result.stderr.splitlines()
    assert line.startswith(f"{path}: {expected}")


def test_unknown_keys_are_errors_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "edged.toml", "[cameras.front]\nsource = 'synthetic'\nfsp = 2\n[modle]\nthreads = 1\n")
    result = check(path)
    assert result.returncode == EX_CONFIG
    assert sorted(result.stderr.splitlines()) == [
        f"{path}: cameras.front.fsp: unknown key (did you mean 'fps'?)",
        f"{path}: modle: unknown key (did you mean 'model'?)",
    ]


def test_every_problem_in_every_source_is_reported_at_once(tmp_path: Path) -> None:
    main = write(tmp_path / "edged.toml", "[model]\nthreads = -2\n")
    drop_in = write(tmp_path / "edged.d/50-cam.toml", "[cameras.door]\nsource = 'synthetic'\nfps = 0\n")
    env = clean_env(EDGED_STATE__BUDGET_MB="lots", EDGED_MODLE__THREADS="1")
    result = check(main, env)
    assert result.returncode == EX_CONFIG
    assert sorted(result.stderr.splitlines()) == sorted([
        f"{main}: model.threads: must be greater than or equal to 0, got -2",
        f"{drop_in}: cameras.door.fps: must be greater than 0, got 0",
        'environment EDGED_STATE__BUDGET_MB: state.budget_mb: must be a valid integer, '
        'unable to parse string as an integer, got "lots"',
        "environment EDGED_MODLE__THREADS: unknown setting 'modle' (did you mean 'model'?)",
    ])


def test_toml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "edged.toml", "[model]\nthreads = 2\nmax_length = = 3\n")
    result = check(path)
    assert result.returncode == EX_CONFIG
    assert result.stderr.strip() == f"{path}: line 3, column 14: invalid TOML: Invalid value"


def test_syntax_error_in_a_drop_in_names_the_drop_in(tmp_path: Path) -> None:
    main = write(tmp_path / "edged.toml", "[model]\nthreads = 2\n")
    drop_in = write(tmp_path / "edged.d/10-bad.toml", "[model\n")
    result = check(main)
    assert result.returncode == EX_CONFIG
    assert result.stderr.startswith(f"{drop_in}: line 1, column 7: invalid TOML")


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    result = check(tmp_path / "missing.toml")
    assert result.returncode == EX_CONFIG
    assert result.stderr.strip() == f"{tmp_path}/missing.toml: no such file"


def test_bad_set_flag_is_explained(tmp_path: Path) -> None:
    result = edged("config", "show", "--set", "model.threads")
    assert result.returncode == EX_CONFIG
    assert "expected KEY=VALUE" in result.stderr
    result = edged("config", "show", "--set", "model.threads=0x")
    assert result.returncode == EX_CONFIG
    assert result.stderr.strip() == (
        'flag --set model.threads: model.threads: must be a valid integer, '
        'unable to parse string as an integer, got "0x"'
    )


def test_check_accepts_a_valid_file_and_says_what_it_holds(tmp_path: Path) -> None:
    path = write(tmp_path / "edged.toml", "[cameras.front]\nsource = 'v4l2:/dev/video0'\n[cameras.yard]\nsource = 'rtsp://cam/1'\n")
    result = check(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: valid (2 cameras, model bundled)"


def test_run_refuses_an_invalid_config_with_exit_78(tmp_path: Path) -> None:
    path = write(tmp_path / "edged.toml", "[cameras.front]\nsource = 'synthetic'\nfps = -1\n")
    result = edged("run", "--config", str(path), timeout=30)
    assert result.returncode == EX_CONFIG
    assert f"{path}: cameras.front.fps: must be greater than 0, got -1" in result.stderr.splitlines()


def test_which_settings_need_a_restart_is_declared_on_each() -> None:
    from edged.config import needs_restart
    from edged.settings import Settings

    for key in ("model.path", "state.dir", "bus.events", "cameras.front.source", "cameras.front.masks"):
        assert needs_restart(Settings, key), key
    assert needs_restart(Settings, "cameras.front")  # a camera added or removed: capture opens it at start
    for key in ("cameras.front.rules", "cameras.front.describe_every_s", "log.level", "agent.system_prompt"):
        assert not needs_restart(Settings, key), key
