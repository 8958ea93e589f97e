"""Model packages on a device: verifying them, choosing one, and installing one safely."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import TINY, edged

from edged.models.model_settings import ModelConfig
from edged.models.installed import ModelSelectionError, choose_model, installed_packages
from edged.models.manifest import read_manifest


@pytest.fixture
def package(tmp_path: Path) -> Path:
    copy = tmp_path / "vl-fp32"
    shutil.copytree(TINY / "vl-fp32", copy)
    return copy


# -- verify -------------------------------------------------------------------------------


def test_committed_tiny_packages_verify() -> None:
    for name in ("text-fp32", "text-int4", "text-int4-b64", "vl-fp32", "vl-int4"):
        result = edged("models", "verify", str(TINY / name))
        assert result.returncode == 0, result.stderr
        assert "files match" in result.stdout


def test_verify_names_a_file_with_one_flipped_byte(package: Path) -> None:
    weights = package / "vision_encoder/model.onnx.data"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(data)
    result = edged("models", "verify", str(package))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"{package}: vision_encoder/model.onnx.data: sha256 differs from the manifest (corrupted or modified)"
    )


def test_verify_names_a_missing_file(package: Path) -> None:
    (package / "tokenizer.json").unlink()
    (package / "decoder/model.onnx").write_bytes(b"truncated")
    result = edged("models", "verify", str(package))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{package}: decoder/model.onnx: size 9, expected {(TINY / 'vl-fp32/decoder/model.onnx').stat().st_size}",
        f"{package}: tokenizer.json: missing",
    ]


def test_verify_refuses_a_folder_that_is_not_a_package(tmp_path: Path) -> None:
    result = edged("models", "verify", str(tmp_path))
    assert result.returncode == 1
    assert "not an edged model package" in result.stderr


# -- choosing a package -------------------------------------------------------------------


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "models"
    for name in ("text-int4", "vl-fp32"):
        shutil.copytree(TINY / name, directory / name)
    return directory


def auto(models_dir: Path, headroom_mb: int = 0) -> ModelConfig:
    return ModelConfig(path="auto", models_dir=models_dir, headroom_mb=headroom_mb)


def test_auto_picks_the_largest_package_that_fits(models_dir: Path) -> None:
    needs = {p.path.name: p.ram_mb for p in installed_packages(models_dir, 2048)}
    assert needs["vl-fp32"] > needs["text-int4"]
    plenty = choose_model(auto(models_dir), available_mb=needs["vl-fp32"], targets=["cpu"])
    assert plenty.path == models_dir / "vl-fp32"
    assert f"needs {needs['vl-fp32']} MiB" in plenty.reason
    tight = choose_model(auto(models_dir), available_mb=needs["vl-fp32"] - 1, targets=["cpu"])
    assert tight.path == models_dir / "text-int4"


def test_auto_leaves_the_configured_headroom(models_dir: Path) -> None:
    needs = {p.path.name: p.ram_mb for p in installed_packages(models_dir, 2048)}
    choice = choose_model(auto(models_dir, headroom_mb=300), available_mb=needs["vl-fp32"] + 299, targets=["cpu"])
    assert choice.path == models_dir / "text-int4"


def test_auto_counts_the_states_a_batch_of_rules_holds(models_dir: Path) -> None:
    """With rules run several to a decoder call, each row's state is held twice while the
    batch runs: `auto` must not pick a package that fits only one rule at a time."""
    single = {p.path.name: p.ram_mb for p in installed_packages(models_dir, 2048)}
    batched = {p.path.name: p.ram_mb for p in installed_packages(models_dir, 2048, rules_per_batch=8)}
    short = batched["vl-fp32"] - 1  # enough for vl-fp32 one rule at a time, and for text-int4 batched
    assert single["vl-fp32"] <= short and batched["text-int4"] <= short
    assert choose_model(auto(models_dir), available_mb=short, targets=["cpu"]).path == models_dir / "vl-fp32"
    config = ModelConfig(path="auto", models_dir=models_dir, headroom_mb=0, rules_per_batch=8)
    assert choose_model(config, available_mb=short, targets=["cpu"]).path == models_dir / "text-int4"
    assert choose_model(config, available_mb=short + 1, targets=["cpu"]).path == models_dir / "vl-fp32"
    with pytest.raises(ModelSelectionError, match="max_length or rules_per_batch"):
        choose_model(config, available_mb=100, targets=["cpu"])


def test_auto_skips_packages_for_an_accelerator_this_device_lacks(models_dir: Path) -> None:
    manifest = models_dir / "vl-fp32/edged-model.json"
    manifest.write_text(manifest.read_text().replace('"target": "cpu"', '"target": "cuda"'))
    assert choose_model(auto(models_dir), available_mb=10_000, targets=["cpu"]).path == models_dir / "text-int4"
    assert choose_model(auto(models_dir), available_mb=10_000, targets=["cpu", "cuda"]).path == models_dir / "vl-fp32"


def test_auto_with_nothing_that_fits_says_what_to_do(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelSelectionError, match="none of the 2 installed packages fits.*edged models pull"):
        choose_model(auto(models_dir), available_mb=100, targets=["cpu"])
    with pytest.raises(ModelSelectionError, match="no packages are installed"):
        choose_model(auto(tmp_path / "empty"), available_mb=100_000, targets=["cpu"])


def test_a_path_without_a_package_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelSelectionError, match="no model package there"):
        choose_model(ModelConfig(path=str(tmp_path)))


def test_list_shows_size_ram_and_marks_the_pick(models_dir: Path) -> None:
    needs = {p.path.name: p.ram_mb for p in installed_packages(models_dir, 2048)}
    result = edged(
        "models", "list", "--set", "model.path=auto", "--set", f"model.models_dir={models_dir}",
        "--set", "model.headroom_mb=0", "--memory-mb", str(needs["vl-fp32"] - 1),
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1 if line.startswith("*") else 0]: line for line in result.stdout.splitlines()
            if line.startswith(("*", "  edged-"))}
    assert rows["edged-tiny-text-int4"].startswith("*")
    assert not rows["edged-tiny-vl-fp32"].startswith("*")
    assert f"{needs['vl-fp32']} MiB" in rows["edged-tiny-vl-fp32"]
    assert f'[model] path = "auto": {models_dir}/text-int4' in result.stdout
    assert rows["edged-tiny-text-int4"].split()[2] == "int4" and rows["edged-tiny-vl-fp32"].split()[1] == "fp32"

    # A package built with --block-size 128 says so where its weights are listed.
    manifest = models_dir / "text-int4/edged-model.json"
    manifest.write_text(manifest.read_text().replace('"block_size": 32', '"block_size": 128'))
    listed = edged("models", "list", "--set", f"model.models_dir={models_dir}").stdout
    assert "int4-b128" in next(line for line in listed.splitlines() if "edged-tiny-text-int4" in line).split()


def test_list_catalog_names_every_known_model() -> None:
    result = edged("models", "list", "--catalog")
    assert result.returncode == 0
    for size in ("0.8b", "2b", "4b"):
        assert f"qwen3.5-{size}-int4-cpu" in result.stdout


# -- pulling ------------------------------------------------------------------------------


@dataclass
class PackageServer:
    """A real HTTP server on 127.0.0.1 serving a folder, with Range support and faults."""

    root: Path
    drop_once: dict[str, int] = field(default_factory=dict)  # path -> bytes to send, then hang up
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PackageServer]:
    served = PackageServer(root=tmp_path / "served")
    served.root.mkdir()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            relative = self.path.lstrip("/")
            served.requests.append((relative, self.headers.get("Range")))
            path = served.root / relative
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            start = 0
            if self.headers.get("Range"):
                start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            cut = served.drop_once.pop(relative, None)
            self.wfile.write(data[start:cut] if cut is not None else data[start:])
            if cut is not None:
                self.close_connection = True

        def log_message(self, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.url = f"http://127.0.0.1:{httpd.server_port}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield served
    httpd.shutdown()
    httpd.server_close()


def publish(server: PackageServer, name: str = "vl-fp32") -> str:
    shutil.copytree(TINY / name, server.root / name)
    return f"{server.url}/{name}"


def test_pull_installs_a_package_from_http_and_it_verifies(server: PackageServer, tmp_path: Path) -> None:
    url = publish(server)
    models = tmp_path / "models"
    result = edged("models", "pull", url, "--models-dir", str(models))
    assert result.returncode == 0, result.stderr
    installed = models / "edged-tiny-vl-fp32"
    assert sorted(p.name for p in models.iterdir()) == ["edged-tiny-vl-fp32"]
    assert edged("models", "verify", str(installed)).returncode == 0
    assert read_manifest(installed).fingerprint == read_manifest(TINY / "vl-fp32").fingerprint
    again = edged("models", "pull", url, "--models-dir", str(models))
    assert "already installed, intact" in again.stdout


def test_pull_resumes_after_the_server_drops_the_connection(server: PackageServer, tmp_path: Path) -> None:
    url = publish(server)
    big = "vl-fp32/decoder/model.onnx.data"
    half = (server.root / big).stat().st_size // 2
    server.drop_once[big] = half
    models = tmp_path / "models"
    result = edged("models", "pull", url, "--models-dir", str(models))
    assert result.returncode == 0, result.stderr
    assert (big, None) in server.requests
    assert (big, f"bytes={half}-") in server.requests  # asked only for what was missing
    assert "resuming" in result.stderr
    assert edged("models", "verify", str(models / "edged-tiny-vl-fp32")).returncode == 0


def test_pull_refuses_a_corrupted_package_and_leaves_the_models_dir_unchanged(server: PackageServer, tmp_path: Path) -> None:
    url = publish(server)
    weights = server.root / "vl-fp32/embedding/model.onnx.data"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(data)
    models = tmp_path / "models"
    shutil.copytree(TINY / "text-int4", models / "already-here")
    before = sorted(str(p.relative_to(models)) for p in models.rglob("*"))
    result = edged("models", "pull", url, "--models-dir", str(models))
    assert result.returncode == 1
    assert "embedding/model.onnx.data: sha256 differs" in result.stderr
    assert "nothing was installed" in result.stderr
    assert sorted(str(p.relative_to(models)) for p in models.rglob("*")) == before


def test_pull_from_a_local_package_folder(tmp_path: Path) -> None:
    models = tmp_path / "models"
    result = edged("models", "pull", str(TINY / "text-int4"), "--models-dir", str(models))
    assert result.returncode == 0, result.stderr
    assert (models / "edged-tiny-text-int4/edged-model.json").is_file()


def test_pull_of_a_catalog_model_without_a_download_explains_how_to_build_it(tmp_path: Path) -> None:
    result = edged("models", "pull", "qwen3.5-0.8b-int4-cpu", "--models-dir", str(tmp_path))
    assert result.returncode == 1
    assert "edged models build Qwen/Qwen3.5-0.8B" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_pull_of_a_missing_url_fails_cleanly(server: PackageServer, tmp_path: Path) -> None:
    result = edged("models", "pull", f"{server.url}/nothing", "--models-dir", str(tmp_path / "models"))
    assert result.returncode == 1
    assert "HTTP 404" in result.stderr
    assert not (tmp_path / "models").exists()


def test_a_file_missing_on_the_server_leaves_nothing_behind(server: PackageServer, tmp_path: Path) -> None:
    url = publish(server)
    (server.root / "vl-fp32/vision_encoder/model.onnx.data").unlink()
    models = tmp_path / "models"
    result = edged("models", "pull", url, "--models-dir", str(models))
    assert result.returncode == 1
    assert "vision_encoder/model.onnx.data: HTTP 404" in result.stderr
    assert list(models.rglob("*")) == []


@pytest.mark.parametrize("flags, said", [(["--precision", "fp16"], "fp16 is for --target cuda"),
                                         (["--precision", "fp32", "--target", "cuda"], "fp32 is for --target cpu"),
                                         (["--precision", "fp32", "--block-size", "64"], "--block-size is for int4"),
                                         (["--block-size", "128"], "--block-size 128 does not divide the model's "
                                                                   "hidden size (64)")])
def test_build_refuses_a_decoder_its_target_cannot_load_before_doing_any_work(tmp_path: Path, flags: list[str],
                                                                              said: str) -> None:
    """ORT GenAI 0.18's builder makes Qwen3.5 decoders that do not load as CPU fp16 and as
    CUDA fp32 (seen on an H200): refused up front, with what to use instead. So are int4
    blocks for float weights, and blocks that do not divide the hidden size (the token table,
    which the embedding shares, is cut into blocks along it)."""
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"hidden_size": 64}, "vision_config": {}}))
    result = edged("models", "build", str(tmp_path), "--out", str(tmp_path / "pkg"), *flags)
    assert result.returncode == 1
    assert said in result.stderr
    assert not (tmp_path / "pkg").exists()


def test_a_checkpoint_folder_given_relative_reaches_the_builder_from_any_folder(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`edged models build ./Qwen3.5-2B` (the help's example): the builder runs in a folder
    of its own, where a relative path would name nothing and be taken for a hub id."""
    from edged.recipe.build import fetch_checkpoint

    (tmp_path / "Qwen3.5-2B").mkdir()
    monkeypatch.chdir(tmp_path)
    assert fetch_checkpoint("./Qwen3.5-2B") == tmp_path.resolve() / "Qwen3.5-2B"


def test_build_refuses_a_vision_precision_for_cuda_and_records_the_default(tmp_path: Path) -> None:
    result = edged("models", "build", str(tmp_path), "--out", str(tmp_path / "pkg"), "--target", "cuda",
                   "--vision-precision", "int8")
    assert result.returncode == 1 and "--vision-precision is for --target cpu" in result.stderr
    assert not (tmp_path / "pkg").exists()
    # The bundled int4 package's encoder is int8, the fp32 package's float32. An ONNX graph
    # holds its operator names as plain strings: read without the onnx module, which only the
    # build extra brings.
    for package, precision, int8 in (("vl-int4", "int8", True), ("vl-fp32", "fp32", False)):
        assert json.loads((TINY / package / "edged-model.json").read_text())["vision"] == precision
        assert (b"MatMulInteger" in (TINY / package / "vision_encoder/model.onnx").read_bytes()) is int8


def test_build_needs_a_source_or_a_random_size(tmp_path: Path) -> None:
    result = edged("models", "build", "--out", str(tmp_path / "pkg"))
    assert result.returncode == 2
    assert "give a SOURCE checkpoint, or --tiny / --size" in result.stderr


def test_build_of_a_random_model_refuses_options_it_would_ignore(tmp_path: Path) -> None:
    result = edged("models", "build", "--tiny", "--text-only", "--out", str(tmp_path / "pkg"))
    assert result.returncode == 2
    assert "--text-only choose how SOURCE is built" in result.stderr
    assert not (tmp_path / "pkg").exists()
