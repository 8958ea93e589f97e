"""``edged schema``, ``watch``, ``ask``, ``status``, ``snapshot`` and ``keys``: the bus from a shell."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edged.bus.bus_settings import client_endpoint

RAW = argparse.RawDescriptionHelpFormatter
CONNECT_TIMEOUT_S = 1.0
"""How long a command waits for the daemon to answer its connection before saying there is none."""
REQUEST_TIMEOUT_S = 30.0


def _client_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("connection (defaults from the config's [bus] table)")
    group.add_argument("--endpoint", metavar="URL", help="the daemon's socket (default: [bus] control, or events for watch)")
    group.add_argument("--server-key", type=Path, metavar="FILE", help="with CURVE: the daemon's public key (NAME.key)")
    group.add_argument("--key", type=Path, metavar="FILE", help="with CURVE: this client's secret key (NAME.key_secret)")
    group.add_argument("--timeout", type=float, metavar="S",
                       help=f"seconds to wait for an answer (default {REQUEST_TIMEOUT_S:g}); for watch, for the next "
                       "event (default: for ever). With no daemon at the endpoint, commands fail after "
                       f"{CONNECT_TIMEOUT_S:g} s whatever this says")
    return options


def add_commands(commands: Any, config_options: argparse.ArgumentParser) -> None:
    client = _client_options()
    schema = commands.add_parser("schema", help="print the JSON Schema of every bus event, request and reply",
                                 description="Print the JSON Schema of the event envelope, every event kind, every "
                                 "request and the reply (see docs/bus.md).")
    schema.set_defaults(handler=_schema)

    watch = commands.add_parser(
        "watch", parents=[config_options, client], formatter_class=RAW, help="print events as they arrive",
        description="Print the daemon's events as they arrive, and any gap in their sequence numbers.",
        epilog="examples:\n  edged watch                      everything\n"
        "  edged watch edged.rule.front     one camera's rule events\n  edged watch --json | jq .data",
    )
    watch.add_argument("topics", nargs="*", metavar="TOPIC", help="topic prefixes (default: all)")
    watch.add_argument("--json", action="store_true", dest="as_json", help="one JSON envelope per line")
    watch.add_argument("--count", type=int, help="stop after this many events")
    watch.set_defaults(handler=_watch)

    ask = commands.add_parser("ask", parents=[config_options, client], help="ask the daemon a question, streamed",
                              description="Ask about a camera's newest frame; the answer streams as it is generated.")
    ask.add_argument("question")
    ask.add_argument("--camera", help="whose newest frame (default: the daemon's first camera)")
    ask.add_argument("--frame", type=int, metavar="SEQ",
                     help="ask about this recent frame (an event's provenance.frame_seq) instead of the newest")
    ask.add_argument("--session", help="continue this conversation (the image is not read again)")
    ask.set_defaults(handler=_ask)

    status = commands.add_parser("status", parents=[config_options, client], help="the running daemon's status",
                                 description="Everything an operator needs: cameras, model, queue, speed, drops.")
    status.add_argument("--json", action="store_true", dest="as_json")
    status.set_defaults(handler=_status)

    snapshot = commands.add_parser(
        "snapshot", parents=[config_options, client], formatter_class=RAW,
        help="save what the daemon sees: a camera's frame with boxes and rule states drawn",
        description="Save the newest frame the model has seen from a camera, with the last detection's boxes "
        "and each rule's state and probability drawn on it. The format follows OUT's suffix (.jpg, .jpeg, .png).",
        epilog="examples:\n  edged snapshot --camera front front.jpg\n  edged snapshot --camera door /tmp/door.png",
    )
    snapshot.add_argument("out", type=Path, metavar="OUT", help="the picture to write (.jpg, .jpeg or .png)")
    snapshot.add_argument("--camera", required=True, help="which camera")
    snapshot.set_defaults(handler=_snapshot)

    keys = commands.add_parser("keys", help="CURVE keys for the bus")
    keys_commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", title="commands")
    keys.set_defaults(handler=lambda args: (keys.print_help(sys.stderr), 2)[1])
    generate = keys_commands.add_parser(
        "generate", formatter_class=RAW, help="write a CURVE keypair",
        description="Write NAME.key (public: give it out) and NAME.key_secret (mode 0600: keep it) into DIR.",
        epilog="examples:\n  edged keys generate /etc/edged/keys --name server\n"
        "  edged keys generate ./keys --name camera-app   # then copy camera-app.key into [bus] curve_allow",
    )
    generate.add_argument("directory", type=Path, metavar="DIR")
    generate.add_argument("--name", default="edged", help="file name stem (default: edged)")
    generate.set_defaults(handler=_keys_generate)


def _schema(args: argparse.Namespace) -> int:
    from edged.bus.schema import all_schemas

    print(json.dumps(all_schemas(), indent=2))
    return 0


def _bus_config(args: argparse.Namespace):
    """The [bus] table as the daemon would read it."""
    from edged.commands.options import load_for_command

    return load_for_command(args).settings.bus


def _watch(args: argparse.Namespace) -> int:
    from edged.client import Subscriber

    bus = _bus_config(args)
    endpoint = args.endpoint or client_endpoint(bus.events)
    count = 0
    try:
        events = Subscriber(endpoint, args.topics or ["edged."], args.server_key, args.key,
                            connect_timeout=CONNECT_TIMEOUT_S)
    except (ConnectionError, ValueError, OSError) as error:
        print(f"edged watch: {error}", file=sys.stderr)
        return 1
    with events:
        try:
            while True:
                received = events.receive(args.timeout)
                if received is None:
                    print(f"edged watch: no event within {args.timeout:g} s", file=sys.stderr)
                    return 1
                if received.missed:
                    print(f"# missed {received.missed} event(s) on {received.topic}", file=sys.stderr)
                event = received.event
                if args.as_json:
                    print(event.model_dump_json(), flush=True)
                else:
                    data = json.dumps(event.data.model_dump(mode="json", exclude_defaults=True), separators=(", ", ": "))
                    print(f"{received.topic} #{event.seq} {data}", flush=True)
                count += 1
                if args.count is not None and count >= args.count:
                    break
        except KeyboardInterrupt:
            pass
    return 0


def _with_client(args: argparse.Namespace, work: Any) -> int:
    """Run ``work(client)`` against the daemon; its exit status, or 1 after saying why."""
    from edged.client import BusError, Client

    bus = _bus_config(args)
    timeout = REQUEST_TIMEOUT_S if args.timeout is None else args.timeout
    try:
        with Client(args.endpoint or client_endpoint(bus.control), timeout, args.server_key, args.key,
                    connect_timeout=min(CONNECT_TIMEOUT_S, timeout)) as client:
            return work(client)
    except (BusError, TimeoutError, ConnectionError, ValueError, OSError) as error:
        print(f"edged {args.command}: {error}", file=sys.stderr)
        return 1


def _ask(args: argparse.Namespace) -> int:
    def ask(client) -> int:
        for piece in client.ask(args.question, camera=args.camera, session=args.session, frame_seq=args.frame):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
        return 0

    return _with_client(args, ask)


def _status(args: argparse.Namespace) -> int:
    def show(client) -> int:
        status = client.status()
        if args.as_json:
            print(status.model_dump_json(indent=2))
            return 0
        print(f"{status.detail or 'running'}; up {status.uptime_s:.0f} s; model {status.model or '-'}"
              + (f" on {status.execution_provider}" if status.execution_provider else ""))
        dropped = ", ".join(f"{kind} {n}" for kind, n in sorted(status.jobs_dropped.items())) or "none"
        print(f"queue {status.queue_depth}, busy refusals {status.requests_busy}, jobs dropped: {dropped}")
        if status.inference_s:
            spent = sorted(status.inference_s.items(), key=lambda item: -item[1])
            print("inference time: " + ", ".join(f"{kind} {seconds:.1f} s" for kind, seconds in spent))
        speed = [f"{name} {value}" for name, value in (("tokens/s", status.tokens_per_s), ("TTFT ms", status.ttft_ms),
                                                       ("frame to event ms", status.frame_to_event_ms)) if value is not None]
        if speed:
            print("last: " + ", ".join(speed))
        for name, camera in status.cameras.items():
            print(f"camera {name}: {camera.state}" + (f" ({camera.last_error})" if camera.last_error else ""))
            for rule in status.rules.get(name, []):
                p = "-" if rule.probability is None else f"{rule.probability:.2f}"
                print(f"  rule {rule.id} v{rule.version}: {'active' if rule.active else 'inactive'}, p={p}, "
                      f"{rule.evaluations} evaluations")
        return 0

    return _with_client(args, show)


def _snapshot(args: argparse.Namespace) -> int:
    import base64

    from edged.files import write_atomically

    suffix = args.out.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        print(f"edged snapshot: {args.out}: name it .jpg, .jpeg or .png", file=sys.stderr)
        return 2

    def save(client) -> int:
        picture = client.snapshot(args.camera, "png" if suffix == ".png" else "jpeg")
        write_atomically(args.out, base64.b64decode(picture.image))
        print(f"wrote {args.out}: camera {picture.camera}, frame {picture.frame_seq}, "
              f"{picture.width}x{picture.height}, {len(picture.objects)} boxes, {len(picture.rules)} rules")
        return 0

    return _with_client(args, save)


def _keys_generate(args: argparse.Namespace) -> int:
    from edged.bus.security import generate_keys

    public, secret = generate_keys(args.directory, args.name)
    print(f"public key: {public}\nsecret key: {secret} (mode 0600; keep it on this machine)")
    return 0
