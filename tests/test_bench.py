"""The benchmarks run (CI smoke tests on the tiny model; no timing is asserted)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, clean_env, edged


def test_bench_engine_runs_and_reports_every_figure() -> None:
    # vl-fp32 is of the same checkpoint, with a float32 vision encoder (and decoder)
    result = edged("bench", "engine", "--model", str(TINY / "vl-int4"), "--repeats", "1", "--json",
                   "--float-vision", str(TINY / "vl-fp32"), timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("decode_ratio", "prefill_ratio", "fanout_ratio", "fanout_bound", "fanout_self_ratio",
                "prefix_ttft_ratio", "decode_ratio_same_threads", "prefill_ratio_same_threads",
                "fanout_ratio_same_threads", "prefix_ttft_ratio_same_threads", "peak_rss_mb", "session_bytes",
                "frame_prep_ratio", "prefill_512_s", "rules_batched_ratio", "contended_decode_ratio",
                "frame_read_ratio", "image_feature_cosine_mean", "image_feature_cosine_min", "decode_long_ratio",
                "decode_long_ratio_same_threads"):
        assert report[key] > 0, key
    assert report["image_feature_cosine_mean"] <= 1.0 + 1e-6 and 0 <= report["rule_probability_change_max"] <= 1
    assert isinstance(report["contended_spin"], bool) and "(" in report["cpu"]
    assert report["weights"] == "int4"  # a report says which build it measured (--block-size shows as int4-b128)
    assert isinstance(report["huge_page_mib"], int) and report["huge_page_mib"] >= 0
    table = edged("bench", "engine", "--model", str(TINY / "text-int4"), "--repeats", "1", "--no-contended", timeout=300)
    assert table.returncode == 0, table.stderr
    assert re.match(r"edged bench engine: text-int4 \(int4 weights, \d+ MiB on huge pages\), ", table.stdout)
    assert "decode tok/s" in table.stdout and "one core kept busy" not in table.stdout
    assert "rules on a read frame" not in table.stdout  # a text package reads no frame


def test_bench_engine_says_what_llama_cpp_needs(tmp_path) -> None:
    # CI does not build llama.cpp (20 minutes on 2 cores); the comparison's figures are in
    # docs/engine.md. What a user without it, or without the checkpoint, is told:
    no_checkpoint = edged("bench", "engine", "--model", str(TINY / "vl-int4"), "--against", "llama.cpp",
                          "--checkpoint", str(tmp_path), timeout=60)
    assert no_checkpoint.returncode == 2 and "config.json" in no_checkpoint.stderr
    (tmp_path / "config.json").write_text("{}")
    no_peer = edged("bench", "engine", "--model", str(TINY / "vl-int4"), "--against", "llama.cpp", "--no-contended",
                    "--repeats", "1", "--checkpoint", str(tmp_path), timeout=300,
                    env={**clean_env(), "EDGED_LLAMA_CPP": str(tmp_path / "nowhere")})
    assert no_peer.returncode == 1 and "deploy/llama-peer.sh" in no_peer.stderr


def test_bench_sizes_measures_each_package_in_its_own_process() -> None:
    from edged.models.manifest import read_manifest

    packages = [TINY / "vl-int4", TINY / "vl-fp32"]
    result = edged("bench", "sizes", *(arg for p in packages for arg in ("--model", str(p))), "--repeats", "1",
                   "--threads", "1", "--json", timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert [f["model"] for f in figures] == [read_manifest(p).name for p in packages]
    for package, found in zip(packages, figures, strict=True):
        assert found["package_mb"] == round(read_manifest(package).size_bytes / 1e6, 1)
        for key in ("load_s", "load_rss_mib", "frame_read_s", "rules_8_s", "decode_tok_s"):
            assert found[key] > 0, key
        assert found["frame_with_8_rules_s"] == pytest.approx(found["frame_read_s"] + found["rules_8_s"], abs=0.002)
        assert found["peak_rss_mib"] >= found["load_rss_mib"]
    # the int4 package's vision encoder is int8, the other's float32
    assert figures[0]["vision_mb"] < figures[1]["vision_mb"]
    text_only = edged("bench", "sizes", "--model", str(TINY / "text-int4"), timeout=60)
    assert text_only.returncode == 2 and "text-only" in text_only.stderr


def test_bench_bus_runs_and_reports_every_figure() -> None:
    result = edged("bench", "bus", "--messages", "2000", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("publish_msg_s", "raw_msg_s", "publish_ratio", "ask_p50_ms", "ask_p99_ms"):
        assert report[key] > 0, key


def test_bench_integrations_runs_against_a_real_broker_and_reports_every_figure() -> None:
    result = edged("bench", "integrations", "--messages", "2000", "--asks", "100", "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("mqtt_msg_s", "raw_paho_msg_s", "mqtt_ratio", "http_ask_p50_ms", "http_ask_p99_ms"):
        assert report[key] > 0, key
    assert "mosquitto" in report["broker"]


def test_bench_capture_runs_and_reports_every_camera() -> None:
    result = edged("bench", "capture", "--seconds", "0.5", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    runs = json.loads(result.stdout)
    assert len(runs) == 5 and all(run["frames_per_s"] > 0 for run in runs)


def test_bench_agent_runs_the_daemon_and_reports_its_latencies() -> None:
    result = edged("bench", "agent", "--seconds", "4", "--set", "agent.reuse_read_within_s=5", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["config_overrides"] == ["agent.reuse_read_within_s=5"]  # the daemon started with it
    assert report["frames_with_rules"] > 0 and report["frame_to_rules_ms_p50"] > 0
    assert report["ask_ms_p50"] > 0 and report["status_tokens_per_s"] > 0 and report["images_encoded"] > 0
    assert report["daemon_peak_rss_mb"] > 50 and report["peak_rss_mib"] == report["daemon_peak_rss_mb"]
    # what [model] path = "auto" counts on for the package covers what the daemon took
    from edged.models.installed import BUNDLED_PACKAGE, ram_need_mb
    from edged.models.manifest import read_manifest

    assert report["peak_rss_mib"] <= ram_need_mb(read_manifest(BUNDLED_PACKAGE), 2048)
    assert report["asks"] >= 2 and report["ask_p99_ms"] >= report["ask_ms_p50"] > 0
    # what the asks waited for: their round trip less their own prefill and decode
    assert report["ask_wait_p99_ms"] >= report["ask_wait_ms_p50"] and report["ask_wait_ms_p50"] < report["ask_ms_p50"]
    # where the model's time went: the questions and the rules took some of it
    assert report["inference_s"]["ask"] > 0 and report["inference_s"]["rules"] > 0 and report["busy_share"] > 0


def test_bench_agent_says_why_its_daemon_did_not_start() -> None:
    result = edged("bench", "agent", "--seconds", "4", "--set", "agent.reuse_read_within=5", timeout=120)
    assert result.returncode == 1
    assert "status 78" in result.stderr and "agent.reuse_read_within: unknown key" in result.stderr


def test_bench_ops_accounts_for_each_decoder_run_by_operator() -> None:
    import onnx

    result = edged("bench", "ops", "--model", str(TINY / "vl-int4"), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["prompt_tokens"] == 128
    graph = onnx.load(TINY / "vl-int4" / "decoder" / "model.onnx", load_external_data=False).graph
    matmuls = sum(node.op_type == "MatMulNBits" for node in graph.node)
    for phase, run_ms in (("prefill", report["prefill_ms"]), ("decode", report["decode_step_ms"])):
        ops = {time["op"]: time for time in report[phase]}
        assert ops["MatMulNBits"]["nodes"] == matmuls, phase  # one run's nodes, not several runs'
        assert sum(time["share"] for time in report[phase]) == pytest.approx(1, abs=0.01)
        assert sum(time["ms"] for time in report[phase]) <= run_ms
    # a decode step's int4 products by weight matrix: every node once, under its matrix's name
    matrices = {time["matrix"]: time for time in report["decode_matrices"]}
    assert sum(time["nodes"] for time in matrices.values()) == matmuls
    assert {"lm_head", "layers.*/mlp/up_proj"} <= set(matrices) and not any(re.search(r"\d", m) for m in matrices)
    int4_ms = {time["op"]: time for time in report["decode"]}["MatMulNBits"]["ms"]
    assert sum(time["ms"] for time in matrices.values()) == pytest.approx(int4_ms, abs=0.01)
    # the tied lm_head, vocabulary x hidden: int4 weights and a float32 scale per block of 32
    config = json.loads((TINY / "vl-int4" / "genai_config.json").read_text())["model"]
    weights = config["vocab_size"] * config["decoder"]["hidden_size"]
    assert matrices["lm_head"]["weights_mb"] == pytest.approx((weights / 2 + weights / 32 * 4) / 1e6, abs=1e-4)
    too_long = edged("bench", "ops", "--model", str(TINY / "vl-int4"), "--tokens", "300", timeout=120)
    assert too_long.returncode == 2 and "1 to 256" in too_long.stderr


def test_a_bench_killed_mid_run_takes_its_daemon_with_it() -> None:
    """A bench that never reaches its cleanup (SIGKILL) must not leave the daemon it measures
    running, to skew every measurement after it."""
    bench = subprocess.Popen([sys.executable, "-m", "edged", "bench", "agent", "--seconds", "60"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    daemon = None
    try:
        deadline = time.monotonic() + 60
        while daemon is None and time.monotonic() < deadline:
            children = Path(f"/proc/{bench.pid}/task/{bench.pid}/children").read_text().split()
            daemon = int(children[0]) if children else None
            time.sleep(0.1)
        assert daemon is not None, "the bench started no daemon"
        time.sleep(2)  # the daemon is loading or running
        bench.send_signal(signal.SIGKILL)
        bench.wait()
        deadline = time.monotonic() + 30
        while _running(daemon) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = _running(daemon)
        assert not alive, "the daemon outlived its bench"
    finally:
        if bench.poll() is None:
            bench.kill()
        if daemon is not None and _running(daemon):
            os.kill(daemon, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_the_sides_of_a_comparison_take_turns_and_each_counts_its_fastest_run() -> None:
    """A machine that slows down half-way must slow both sides of a ratio, not the one timed last."""
    from edged.bench.timing import best_in_turn

    order = []
    taken = {("edged", "decode"): [9.0, 3.0, 4.0], ("og", "decode"): [9.0, 5.0, 2.0],
             ("edged", "prefill"): [9.0, 7.0, 6.0], ("og", "prefill"): [9.0, 8.0, 9.0], ("edged", "only"): [9.0, 1.0, 2.0]}

    def run(side: str, figure: str):
        def timed() -> float:
            order.append(f"{side}/{figure}")
            return taken[side, figure].pop(0)
        return timed

    fastest = best_in_turn({"edged": {name: run("edged", name) for name in ("decode", "prefill", "only")},
                            "og": {name: run("og", name) for name in ("decode", "prefill")}}, repeats=2)
    assert fastest == {"edged": {"decode": 3.0, "prefill": 6.0, "only": 1.0}, "og": {"decode": 2.0, "prefill": 8.0}}
    assert order[5:] == ["edged/decode", "og/decode", "edged/prefill", "og/prefill", "edged/only"] * 2  # after the warm-ups


def test_a_side_whose_speed_comes_and_goes_is_timed_over_the_whole_span() -> None:
    """llama.cpp's speed here falls for stretches of seconds within one process: three runs in
    a row can all land in one. With a span the turns go on until it has passed, so a fast
    stretch after the slow one counts; without one, the repeats alone decide."""
    from edged.bench.timing import best_in_turn

    now = [0.0]

    def decode() -> float:  # 2 s a run, slow until 8 s: the warm-up and the next three runs
        now[0] += 2.0
        return 0.033 if now[0] <= 8.0 else 0.023

    def timed(span_s: float) -> tuple[float, float]:
        now[0] = 0.0
        fastest = best_in_turn({"llama.cpp": {"decode": decode}}, repeats=3, span_s=span_s, clock=lambda: now[0])
        return fastest["llama.cpp"]["decode"], now[0]

    assert timed(0.0) == (0.033, 8.0)  # the warm-up and three runs, all slow
    best, ended = timed(12.0)
    assert best == 0.023 and ended == 14.0  # rounds until 12 s had passed since the first began (at 2)


def test_each_side_of_a_comparison_runs_alone_in_its_own_process_and_says_why_it_failed(tmp_path: Path) -> None:
    """bench engine loads edged and og.Generator each in a process of its own (sides.py):
    loaded into one process, the one loaded second ran faster. A side's figures run there on
    the parent's call; a side that cannot load says why, and its process ends with it."""
    from edged.bench.engine import SIDE, Workload
    from edged.bench.sides import SideProcess
    from edged.engine.engine import Engine

    package = TINY / "vl-int4"
    work = Workload.for_engine(Engine(package), None)
    with SideProcess(SIDE, "edged", package, 1, work) as ours, SideProcess(SIDE, "og", package, 1, work) as og:
        assert {"decode", "prefill", "ttft", "fanout"} <= set(ours.figures) and set(og.figures) == set(ours.figures)
        assert isinstance(ours.fact, bool) and og.fact is None  # whether edged's threads spin
        assert ours.figures["decode"]() > 0 and og.figures["prefill"]() > 0
        children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
        assert str(ours._process.pid) in children and str(og._process.pid) in children
    assert ours._process.poll() == 0 and og._process.poll() == 0  # closed with the comparison
    with pytest.raises(RuntimeError, match="edged-model.json|manifest") as failed:
        SideProcess(SIDE, "edged", tmp_path, 1, work)
    assert "a bench side failed" in str(failed.value)


def test_bench_sides_are_loaded_in_both_orders_and_each_keeps_its_best(tmp_path, monkeypatch) -> None:
    # Whichever engine loads first decodes slower on a virtual machine (bench/sides.py): a
    # ratio from one loading would count that against the side the bench happened to load first.
    from edged.bench.sides import best_loaded_both_ways

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    log = tmp_path / "loads"
    sides = {"edged": ("edged", str(log), 2), "og": ("og", str(log), 2)}
    timed, facts = best_loaded_both_ways("order_sensitive_side:side", sides, repeats=3, figures=["decode"])
    assert log.read_text().split() == ["edged", "og", "og", "edged"]
    assert timed == {"edged": {"decode": 1.0}, "og": {"decode": 1.0}}  # each loaded second once
    assert facts == {"edged": "edged", "og": "og"}
