"""``edged bench``: measure edged against its baselines on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_commands(commands: Any, config_options: argparse.ArgumentParser) -> None:
    bench = commands.add_parser("bench", help="measure edged against its baselines on this machine",
                                description="Benchmarks that report ratios against a baseline run side by side.")
    sub = bench.add_subparsers(dest="bench_command", metavar="COMMAND", title="commands")
    bench.set_defaults(handler=lambda args: (bench.print_help(sys.stderr), 2)[1])
    engine = sub.add_parser(
        "engine", help="the engine against ORT GenAI's Generator on one package",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Decode speed (after a short prompt and after 800 tokens), prefill speed, 8-rule\n"
        "fan-out on one image, time to first token after a cached prefix, peak memory and\n"
        "saved-session size: edged against og.Generator on the same package, in one run. og runs\n"
        "twice: as the package configures it (what its users get) and told edged's thread count\n"
        "(the headline ratios); the three take turns at each figure, so a machine whose speed\n"
        "drifts slows them alike, and are loaded together (about three times the package's\n"
        "memory), twice, in both orders, each keeping its best: on a virtual machine the\n"
        "first process to load runs slower. Then decode again while another process keeps a\n"
        "core busy; with --float-vision, the package's vision encoder against a float32 one;\n"
        "with --against llama.cpp, llama.cpp on the package's checkpoint, the best of two\n"
        "processes. A few seconds on the tiny model, 10 to 20 minutes on 0.8B.",
        epilog="example, at 0.8B:\n"
        "  edged models build --size 0.8b --out m --keep-checkpoint\n"
        "  edged models build --size 0.8b --out f32 --vision-precision fp32\n"
        "  bash deploy/llama-peer.sh            # llama-cpp-python and llama.cpp's converter\n"
        "  edged bench engine --model m/vl-int4 --threads 2 --float-vision f32/vl-int4 --against llama.cpp",
    )
    engine.add_argument("--model", type=Path, required=True, metavar="DIR", help="model package")
    engine.add_argument("--threads", type=int, default=0, help="edged's intra-op threads, and og's in its second run (0: all cores)")
    engine.add_argument("--repeats", type=int, default=3,
                        help="timed runs per figure, split between the two loadings of the sides; the best counts")
    engine.add_argument("--image", type=Path, help="picture for the fan-out (default: a 448x448 test pattern)")
    engine.add_argument("--float-vision", type=Path, metavar="DIR",
                        help="a package of the same checkpoint built with --vision-precision fp32")
    engine.add_argument("--against", choices=["llama.cpp"], help="also run this peer on the package's checkpoint")
    engine.add_argument("--checkpoint", type=Path, metavar="DIR",
                        help="the checkpoint the package was built from (default: ../checkpoint beside the package, "
                        "as --keep-checkpoint leaves it)")
    engine.add_argument("--no-contended", action="store_false", dest="contended",
                        help="leave out the decode with one core kept busy")
    engine.add_argument("--json", action="store_true", dest="as_json", help="print one JSON object")
    engine.set_defaults(handler=_engine)
    ops = sub.add_parser(
        "ops", help="where the decoder's time goes, operator by operator",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="onnxruntime's own timing of each operator type in the decoder, for a prefill and for\n"
        "the decode steps after it: what share is int4 matrix products (as fast as the CPU's\n"
        "kernels allow), attention, the DeltaNet layers and the rest. Run it with --threads 1 and\n"
        "with more to see which operators use the extra cores. The profiler slows a prefill by a\n"
        "few percent and a decode step by up to a quarter: read the shares, and time with\n"
        "`edged bench engine`.\n"
        "Then the int4 products of one decode step by weight matrix: the bytes the package stores\n"
        "for each and the rate the step read them at. A decode step reads every weight once, so\n"
        "this is where fewer bytes (--block-size, a smaller model) would pay; at 0.8B the tied\n"
        "lm_head (vocabulary x hidden) takes about 30% of it.\n"
        "A few seconds at 0.8B.",
    )
    ops.add_argument("--model", type=Path, required=True, metavar="DIR", help="model package")
    ops.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    ops.add_argument("--tokens", type=int, default=128, help="prompt tokens to prefill (default 128, at most 256)")
    ops.add_argument("--json", action="store_true", dest="as_json", help="print one JSON object")
    ops.set_defaults(handler=_ops)
    sizes = sub.add_parser(
        "sizes", help="what each model size costs: package, memory, a frame's read and rules, decode",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each vision-language package, in a fresh process of its own: package and vision\n"
        "encoder size, load time and resident memory, a 448x448 frame's read (vision encoder, then\n"
        "its tokens), eight rules on that frame, decode tok/s and the process's peak memory: the\n"
        "figures behind docs/engine.md's table of sizes (`edged bench agent` gives the whole\n"
        "daemon's peak). Under 4 minutes for 0.8B, 2B and 4B together on two cores.",
        epilog="example, the three published sizes with random weights:\n"
        "  for s in 0.8b 2b 4b; do edged models build --size $s --out m$s; done\n"
        "  edged bench sizes --model m0.8b/vl-int4 --model m2b/vl-int4 --model m4b/vl-int4 --threads 2",
    )
    sizes.add_argument("--model", type=Path, action="append", required=True, metavar="DIR",
                       help="a vision-language package; give it once per package")
    sizes.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    sizes.add_argument("--repeats", type=int, default=2, help="timed runs per figure; the best counts")
    sizes.add_argument("--json", action="store_true", dest="as_json", help="print a JSON list")
    sizes.set_defaults(handler=_sizes)
    bus = sub.add_parser("bus", help="the bus against raw pyzmq: publish rate and ask latency",
                         description="Publish 200-byte events through edged's publisher and through a raw pyzmq "
                         "PUB socket, side by side; and the ask round trip with an agent that answers at once.")
    bus.add_argument("--messages", type=int, default=50_000, help="events per side (default 50000)")
    bus.add_argument("--json", action="store_true", dest="as_json", help="print one JSON object")
    bus.set_defaults(handler=_bus)
    capture = sub.add_parser("capture", help="frames/s and CPU per camera, and a still scene's idle cost",
                             description="Frames/s and CPU for the synthetic and GStreamer sources at 640x480 and "
                             "1280x720, and the CPU of a live camera watching a still scene.")
    capture.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    capture.add_argument("--json", action="store_true", dest="as_json", help="print JSON")
    capture.set_defaults(handler=_capture)
    agent = sub.add_parser(
        "agent", help="the whole daemon: capture-to-rules and capture-to-event latency, answer speed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the daemon on a model with a synthetic camera (1 frame/s, 4 rules, a description every\n"
        "10 s), ask it questions at even intervals while the rules run, and report how fresh its rule\n"
        "decisions are, how fast it answers (p50 and p99 round trip) and its peak memory.",
    )
    agent.add_argument("--model", type=Path, default=None, metavar="DIR", help="model package (default: the bundled one)")
    agent.add_argument("--seconds", type=float, default=60.0, help="how long to watch (default 60)")
    agent.add_argument("--asks", type=int, default=10, help="questions asked at even intervals (default 10)")
    agent.add_argument("--threads", type=int, default=0, help="inference threads (0: all cores)")
    agent.add_argument(
        "-s", "--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
        help="run the daemon with this config value, as `edged run --set` takes it (repeatable), e.g. "
        "--set agent.reuse_read_within_s=20 to weigh fresher answers against quicker ones")
    agent.add_argument("--json", action="store_true", dest="as_json", help="print one JSON object")
    agent.set_defaults(handler=_agent)
    integrations = sub.add_parser(
        "integrations", help="the MQTT and HTTP doors: publish rate against raw paho, HTTP ask latency",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Publish detection events through edged's MQTT door and through raw paho to the same\n"
        "broker, side by side (a subscriber in another process counts them); then the OpenAI chat\n"
        "completion round trip through the HTTP door with an agent that answers at once. Starts a\n"
        "private mosquitto unless --broker names one. Under a minute.",
    )
    integrations.add_argument("--messages", type=int, default=50_000, help="events per side (default 50000)")
    integrations.add_argument("--asks", type=int, default=1000, help="HTTP asks (default 1000)")
    integrations.add_argument("--broker", metavar="HOST:PORT", help="an MQTT broker that takes anonymous clients "
                              "(default: a mosquitto started for the run)")
    integrations.add_argument("--json", action="store_true", dest="as_json", help="print one JSON object")
    integrations.set_defaults(handler=_integrations)


def _engine(args: argparse.Namespace) -> int:
    from edged.bench.engine import as_json, format_table, run_engine_bench
    from edged.bench.llama_peer import PeerMissing, converter_dir

    checkpoint = None
    if args.against == "llama.cpp":
        checkpoint = args.checkpoint or args.model.resolve().parent / "checkpoint"
        if not (checkpoint / "config.json").exists():
            print(f"edged bench engine: --against llama.cpp needs the package's checkpoint: {checkpoint} has no "
                  "config.json (give --checkpoint DIR)", file=sys.stderr)
            return 2
    try:
        if checkpoint is not None:
            converter_dir()  # before anything runs: is llama.cpp there at all
        result = run_engine_bench(args.model, threads=args.threads, repeats=args.repeats, image=args.image,
                                  float_vision=args.float_vision, llama_checkpoint=checkpoint,
                                  contended=args.contended, progress=lambda line: print(f"... {line}", file=sys.stderr))
    except PeerMissing as error:
        print(f"edged bench engine: {error}", file=sys.stderr)
        return 1
    print(as_json(result) if args.as_json else format_table(result))
    return 0


def _ops(args: argparse.Namespace) -> int:
    from edged.bench.ops import as_json, format_table, run_ops_bench

    try:
        result = run_ops_bench(args.model, threads=args.threads, prompt_tokens=args.tokens)
    except ValueError as error:
        print(f"edged bench ops: {error}", file=sys.stderr)
        return 2
    print(as_json(result) if args.as_json else format_table(result))
    return 0


def _sizes(args: argparse.Namespace) -> int:
    from edged.bench.sizes import as_json, format_table, run_sizes_bench

    from edged.models.manifest import ManifestError, read_manifest

    for path in args.model:
        try:
            manifest = read_manifest(path)
        except ManifestError as error:
            print(f"edged bench sizes: {error}", file=sys.stderr)
            return 2
        if "image" not in manifest.modalities:
            print(f"edged bench sizes: {path} is a text-only package; give the vision-language one "
                  "(vl-int4 in a --size build)", file=sys.stderr)
            return 2
    try:
        figures = run_sizes_bench(args.model, threads=args.threads, repeats=args.repeats,
                                  progress=lambda line: print(f"... {line}", file=sys.stderr, flush=True))
    except RuntimeError as error:
        print(f"edged bench sizes: {error}", file=sys.stderr)
        return 1
    print(as_json(figures) if args.as_json else format_table(figures))
    return 0


def _bus(args: argparse.Namespace) -> int:
    from edged.bench.bus import as_json, format_table, run_bus_bench

    result = run_bus_bench(messages=args.messages)
    print(as_json(result) if args.as_json else format_table(result))
    return 0


def _capture(args: argparse.Namespace) -> int:
    from edged.bench.capture import as_json, format_table, run_capture_bench

    runs = run_capture_bench(seconds=args.seconds)
    print(as_json(runs) if args.as_json else format_table(runs))
    return 0


def _agent(args: argparse.Namespace) -> int:
    from edged.bench.agent import as_json, format_table, run_agent_bench
    from edged.models.installed import BUNDLED_PACKAGE

    try:
        result = run_agent_bench(args.model or BUNDLED_PACKAGE, seconds=args.seconds, threads=args.threads,
                                 asks=args.asks, config_overrides=args.assignments)
    except RuntimeError as error:
        print(f"edged bench agent: {error}", file=sys.stderr)
        return 1
    print(as_json(result) if args.as_json else format_table(result))
    return 0


def _integrations(args: argparse.Namespace) -> int:
    from edged.bench.integrations import as_json, format_table, run_integrations_bench

    try:
        result = run_integrations_bench(messages=args.messages, asks=args.asks, broker=args.broker)
    except RuntimeError as error:
        print(f"edged bench integrations: {error}", file=sys.stderr)
        return 1
    print(as_json(result) if args.as_json else format_table(result))
    return 0
