"""The whole daemon on one model: how fresh its rule decisions are and how fast it answers.

The daemon runs as it would in production (a subprocess, its own bus), watching a synthetic
camera at 1 frame/s with four rules and a description every 10 s, while a client asks it
questions. Reported: capture-to-rules latency (from status, every frame), capture-to-event
latency (from the events' own timestamps), the answers' round trip (client side) and what
of it they waited for other work (less their own prefill and decode, from the speed status
reports), and the agent's dropped jobs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edged.bench.children import dies_with_parent

if TYPE_CHECKING:
    from edged.bus.schema import Answer, Status

RULES = ("Is there a person in the picture", "Is a door open", "Is there a vehicle", "Is it dark")
QUESTIONS = ("What is in the picture?", "What colours do you see?", "Is anything moving?")


@dataclass
class AgentBench:
    model: str
    seconds: float
    frames_with_rules: int
    frame_to_rules_ms_p50: float | None
    frame_to_rules_ms_max: float | None
    frame_to_event_ms_p50: float | None
    events: int
    asks: int
    ask_ms_p50: float
    """A 32-token answer's round trip, as the client sees it, while the camera's rules run."""
    ask_p99_ms: float
    ask_wait_ms_p50: float
    """The round trip less the answer's own prefill and decode (as status reports the speed
    of the generation that ended last): the time it waited for other work."""
    ask_wait_p99_ms: float
    """The same at p99: what the goal of 1.5 s bounds."""
    status_ttft_ms: float | None
    status_tokens_per_s: float | None
    jobs_dropped: dict[str, int]
    images_encoded: int
    daemon_peak_rss_mb: float
    """The daemon's peak resident memory over the run: what a board must have for it."""
    config_overrides: list[str]
    """The daemon's config values set for the run (``--set KEY=VALUE``, as ``edged run``)."""
    peak_rss_mib: float
    """The same (VmHWM in KiB / 1024), under the name the goals use."""
    inference_s: dict[str, float]
    """Inference seconds over the run by kind (ask, rules, describe), from status, which counts
    a job when it ends: one running as the run begins counts whole."""
    busy_share: float
    """Their sum over the run's length: near 1, the model never idled, and every job waited
    for the others; the questions' waits then turn on the machine's speed that day."""


def _config(folder: Path, model: Path, threads: int) -> Path:
    rules = "".join(f'\n[[cameras.bench.rules]]\nid = "rule{n}"\nwhen = "{when}"\n' for n, when in enumerate(RULES))
    path = folder / "edged.toml"
    path.write_text(f"""
[model]
path = "{model}"
threads = {threads}
[state]
dir = "{folder / 'state'}"
[bus]
events = "ipc://{folder}/events.sock"
control = "ipc://{folder}/control.sock"
status_interval_s = 1.0
[cameras.bench]
source = "synthetic"
fps = 1.0
gate_threshold = 0.0
describe_every_s = 10.0
{rules}""")
    return path


def run_agent_bench(model: Path, seconds: float = 60.0, threads: int = 0, asks: int = 10,
                    config_overrides: Sequence[str] = ()) -> AgentBench:
    """Watch a 1 frame/s synthetic camera with rules for ``seconds``, asking ``asks``
    questions at even intervals, at moments unrelated to the frames' reads. The daemon runs
    with each of ``config_overrides`` (KEY=VALUE) as ``edged run --set`` takes it; a daemon
    that does not start raises RuntimeError with the end of its log."""
    from edged.client import Client, Subscriber

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config = _config(folder, model.resolve(), threads)
        log = (folder / "daemon.log").open("w")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGED_", "NOTIFY_SOCKET"))}
        settings = [argument for assignment in config_overrides for argument in ("--set", assignment)]
        daemon = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(config), *settings],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=dies_with_parent)
        try:
            control, events = f"ipc://{folder}/control.sock", f"ipc://{folder}/events.sock"
            try:
                _wait_ready(control, daemon)
            except (RuntimeError, TimeoutError) as error:
                log.flush()
                raise RuntimeError(f"{error}; its log ends:\n{_last_lines(folder / 'daemon.log')}") from None
            rules_latency: list[float] = []
            event_latency: list[float] = []
            round_trips: list[float] = []
            waits: list[float] = []
            with Client(control, timeout=120) as client, Subscriber(events, ["edged."]) as subscriber:
                at_start = client.status().inference_s
                started = time.monotonic()
                asked = 0
                while time.monotonic() - started < seconds:
                    received = subscriber.receive(timeout=0.5)
                    if received is not None:
                        event = received.event
                        if event.kind == "status" and event.data.frame_to_rules_ms is not None:
                            rules_latency.append(event.data.frame_to_rules_ms)
                        elif event.kind in ("rule", "description") and event.data.provenance.frame_ts:
                            event_latency.append((event.ts - event.data.provenance.frame_ts) * 1000)
                    if asked < asks and time.monotonic() - started > (asked + 1) * seconds / (asks + 1):
                        sent = time.perf_counter()
                        answer = client.ask(QUESTIONS[asked % len(QUESTIONS)], camera="bench", max_tokens=32)
                        "".join(answer)  # a random model's tokens may decode to no text: time the final reply
                        round_trips.append((time.perf_counter() - sent) * 1000)
                        waits.append(round_trips[-1] - _own_time_ms(client.status(), answer.final))
                        asked += 1
                status = client.status()
                elapsed = time.monotonic() - started
                spent = _spent_since(at_start, status.inference_s)
            peak_mb = _peak_rss_mb(daemon.pid)
        finally:
            daemon.terminate()
            daemon.wait(30)
            log.close()
    return AgentBench(
        model=model.name, seconds=seconds, frames_with_rules=len(rules_latency),
        frame_to_rules_ms_p50=_median(rules_latency), frame_to_rules_ms_max=max(rules_latency, default=None),
        frame_to_event_ms_p50=_median(event_latency), events=len(event_latency),
        asks=len(round_trips), ask_ms_p50=_median(round_trips) or 0.0,
        ask_p99_ms=_p99(round_trips), ask_wait_ms_p50=_median(waits) or 0.0, ask_wait_p99_ms=_p99(waits),
        status_ttft_ms=status.ttft_ms, status_tokens_per_s=status.tokens_per_s,
        jobs_dropped=status.jobs_dropped, images_encoded=status.images_encoded or 0,
        daemon_peak_rss_mb=peak_mb, peak_rss_mib=peak_mb, config_overrides=list(config_overrides),
        inference_s=spent, busy_share=round(sum(spent.values()) / elapsed, 2),
    )


def _spent_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Inference seconds by kind between two statuses (kinds that spent none left out)."""
    spent = {kind: round(seconds - before.get(kind, 0.0), 1) for kind, seconds in after.items()}
    return {kind: seconds for kind, seconds in spent.items() if seconds > 0}


def _last_lines(path: Path, count: int = 8) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-count:])


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return round(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024, 1)


def _wait_ready(control: str, daemon: subprocess.Popen, timeout: float = 300) -> None:
    """Until the daemon's bus answers with the model loaded (loading 0.8B takes seconds)."""
    from edged.client import Client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with status {daemon.returncode} before it was ready")
        try:
            with Client(control, timeout=1) as client:
                if client.status().engine_loads:
                    return
        except TimeoutError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the daemon was not ready within {timeout:g} s")


def _own_time_ms(status: Status, answer: Answer | None) -> float:
    """An answer's own prefill and decode: status's speed figures are the last generation's,
    set before its final reply (a periodic description that ends in between replaces them
    with its own, of the same model and threads)."""
    if answer is None or status.ttft_ms is None or not status.tokens_per_s:
        return 0.0
    return status.ttft_ms + max(answer.completion_tokens - 1, 0) / status.tokens_per_s * 1000


def _p99(values: list[float]) -> float:
    return round(float(np.percentile(values, 99)), 1) if values else 0.0


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def format_table(bench: AgentBench) -> str:
    return "\n".join([
        f"edged bench agent: {bench.model}, {bench.seconds:g} s, 1 synthetic camera at 1 frame/s, {len(RULES)} rules",
        f"capture to rules evaluated, ms  p50 {bench.frame_to_rules_ms_p50}  max {bench.frame_to_rules_ms_max}"
        f"  ({bench.frames_with_rules} status samples)",
        f"capture to event, ms            p50 {bench.frame_to_event_ms_p50}  ({bench.events} events)",
        f"32-token answers ({bench.asks}): round trip p50 {bench.ask_ms_p50} ms, p99 {bench.ask_p99_ms} ms "
        f"(client); waiting, less their own prefill and decode, p50 {bench.ask_wait_ms_p50} ms, "
        f"p99 {bench.ask_wait_p99_ms} ms; "
        f"last answer's TTFT "
        f"{bench.status_ttft_ms} ms, {bench.status_tokens_per_s} tokens/s (status)",
        f"jobs dropped: {bench.jobs_dropped or 'none'}; images encoded: {bench.images_encoded}",
        f"inference over the run: {', '.join(f'{kind} {s:g} s' for kind, s in bench.inference_s.items()) or 'none'}"
        f" ({bench.busy_share:.0%} of it busy)",
        f"daemon peak RSS: {bench.daemon_peak_rss_mb} MB",
        *([f"config set: {' '.join(bench.config_overrides)}"] if bench.config_overrides else []),
    ])


def as_json(bench: AgentBench) -> str:
    return json.dumps(asdict(bench))
