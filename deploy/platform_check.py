"""What edged computes on this machine, as one JSON object: run it on a board (or under
emulation, deploy/arm64-proof.sh) and on a workstation, and compare.

    /opt/edged/venv/bin/python deploy/platform_check.py [--run] > platform.json

For each bundled tiny text package (fp32, int4, and int4 in blocks of 64, whose larger
blocks run other kernels): the greedy tokens of a fixed prompt and the first token's
logits. With --run: ``edged run`` on a synthetic camera with one rule, timed to READY=1 and
to its first rule event. fp32 results are the same on every CPU; int4 ones
are not exactly (MatMulNBits is computed by CPU-specific kernels), so compare their logits
within a tolerance (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "Describe a quiet street at night."
TOKENS = 16
PACKAGES = ("text-fp32", "text-int4", "text-int4-b64")
RUN_CONFIG = """
[model]
path = "bundled"
[bus]
events = "ipc://{folder}/events.sock"
control = "ipc://{folder}/control.sock"
[state]
dir = "{folder}/state"
[cameras.demo]
source = "synthetic"
fps = 1.0
[[cameras.demo.rules]]
id = "anything"
when = "Is there anything in the picture"
on_threshold = 0.0
off_threshold = 0.0
"""


def tokens_and_logits(package: Path) -> dict[str, object]:
    from edged.engine.engine import Engine, GenerationOptions

    engine = Engine(package, threads=2, max_length=256)
    state = engine.new_state()
    logits = engine.extend_prompt(state, engine.chat_prompt([{"role": "user", "content": PROMPT}]))
    first = [round(float(x), 6) for x in logits.reshape(-1)]
    generation = engine.generate(state, GenerationOptions(max_tokens=TOKENS))
    for _ in generation:
        pass
    return {"tokens": list(generation.tokens), "logits": first}


def run_daemon(timeout: float = 600) -> dict[str, object]:
    """``edged run`` as systemd would start it: seconds to READY=1 and to the first rule event."""
    from edged.client import Subscriber

    folder = Path(tempfile.mkdtemp(prefix="edged-check-"))
    config = folder / "edged.toml"
    config.write_text(RUN_CONFIG.format(folder=folder))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(folder / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(folder / "notify")}
    events = Subscriber(f"ipc://{folder}/events.sock", ["edged.rule."])  # before the daemon: no event missed
    started = time.monotonic()
    daemon = subprocess.Popen([sys.executable, "-m", "edged", "run", "--config", str(config)], env=env,
                              stdout=(folder / "daemon.log").open("w"), stderr=subprocess.STDOUT)
    result: dict[str, object] = {"ready_s": None, "rule_event_s": None}
    try:
        notify.settimeout(timeout)
        while b"READY=1" not in notify.recv(4096):
            pass
        result["ready_s"] = round(time.monotonic() - started, 1)
        received = events.receive(timeout=timeout)
        if received is not None:
            result["rule_event_s"] = round(time.monotonic() - started, 1)
            result["rule_event"] = received.event.data.model_dump(mode="json")
    except TimeoutError:
        pass
    finally:
        events.close()
        daemon.send_signal(signal.SIGTERM)
        result["exit_status"] = daemon.wait(timeout=60)
        result["log_tail"] = (folder / "daemon.log").read_text()[-2000:]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="also run the daemon until its first rule event")
    args = parser.parse_args()
    from edged.models.installed import BUNDLED_PACKAGE

    tiny = BUNDLED_PACKAGE.parent
    report: dict[str, object] = {"machine": platform.machine(), "python": platform.python_version()}
    for name in PACKAGES:
        report[name] = tokens_and_logits(tiny / name)
    if args.run:
        report["run"] = run_daemon()
    json.dump(report, sys.stdout)
    print()


if __name__ == "__main__":
    main()
