"""``edged capture test``: open a camera as the daemon would and report what it delivers."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edged.capture.sources.grammar import SOURCE_FORMS


def add_commands(commands: Any, config_options: argparse.ArgumentParser) -> None:
    capture = commands.add_parser("capture", help="check a camera before deploying it")
    sub = capture.add_subparsers(dest="capture_command", metavar="COMMAND", title="commands")
    capture.set_defaults(handler=lambda args: (capture.print_help(sys.stderr), 2)[1])
    test = sub.add_parser(
        "test", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="read frames from a source and report resolution, frames/s, drops and gating",
        description="Open a camera source exactly as the daemon would (same masks, FPS cap, change gate\n"
        "and resize), read N frames, and report what came out. Exit 0 with every frame asked\n"
        "for (or a whole file), 1 with fewer: a source that fails before its first frame is\n"
        "reported at once, not retried until --timeout.",
        epilog="examples:\n  edged capture test synthetic\n  edged capture test v4l2:/dev/video0 --frames 100 --save /tmp/frames\n"
        "  edged capture test 'rtsp://user:pass@192.0.2.10/stream1' --json\n"
        "  edged capture test file:clip.mp4 --fps 2 --gate 0.05",
    )
    test.add_argument("source", help=", ".join(SOURCE_FORMS))
    test.add_argument("--frames", type=int, default=50, help="frames to read from the source (default 50)")
    test.add_argument("--fps", type=float, default=1000.0, help="FPS cap towards the model (default: none)")
    test.add_argument("--gate", type=float, default=0.02, help="change-gate threshold, 0-1 (default 0.02)")
    test.add_argument("--width", type=int)
    test.add_argument("--height", type=int)
    test.add_argument("--save", type=Path, metavar="DIR", help="write up to 5 passed frames here as PNG")
    test.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds")
    test.add_argument("--json", action="store_true", dest="as_json",
                      help="one JSON object: frames, width, height, fps, drops, passed_gate")
    test.set_defaults(handler=_test)


def _test(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edged.capture.camera import CameraCapture
    from edged.capture.camera_settings import CaptureConfig
    from edged.capture.sources import redact
    from edged.images import write_png

    try:
        config = CaptureConfig(source=args.source, fps=args.fps, gate_threshold=args.gate, width=args.width,
                              height=args.height, loop=False, realtime=True)
    except ValidationError as error:
        print(f"edged capture test: {error.errors()[0]['msg']}", file=sys.stderr)
        return 2
    camera = CameraCapture("test", config)
    camera.start()
    started = time.monotonic()
    saved = 0
    while camera.frames_read < args.frames and time.monotonic() - started < args.timeout:
        if camera.state == "ended" or (camera.reconnects and not camera.frames_read):
            break  # a file that ended, or a source that failed before its first frame: nothing more to learn
        frame = camera.mailbox.take(timeout=0.2)
        if frame is None:
            continue
        if args.save and saved < 5:
            args.save.mkdir(parents=True, exist_ok=True)
            write_png(args.save / f"frame-{frame.seq:05d}.png", frame.rgb)
            saved += 1
    elapsed = time.monotonic() - started
    status = camera.status()
    camera.stop()
    source_size = camera.source_size
    report = {
        "source": redact(args.source), "frames": camera.frames_read,
        "width": source_size[0] if source_size else None, "height": source_size[1] if source_size else None,
        "fps": round(camera.frames_read / elapsed, 1) if elapsed > 0 else 0.0, "drops": status.drops,
        "passed_gate": camera.pipeline.passed, "held_by_fps_cap": camera.pipeline.skipped_fps,
        "held_by_gate": camera.pipeline.skipped_gate, "state": status.state, "last_error": status.last_error,
    }
    if args.as_json:
        print(json.dumps(report))
    elif not report["frames"]:
        print(f"{report['source']}: no frames in {elapsed:.1f} s; the source is {report['state']}"
              + (f" ({report['last_error']})" if report["last_error"] else ""))
    else:
        print(f"{report['source']}: {report['frames']} frames of {report['width']}x{report['height']} at "
              f"{report['fps']} frames/s; {report['passed_gate']} passed the gate "
              f"({report['held_by_gate']} unchanged, {report['held_by_fps_cap']} over the FPS cap); "
              f"{report['drops']} dropped unread; camera {report['state']}"
              + (f" ({report['last_error']})" if report["last_error"] else ""))
        if saved:
            print(f"saved {saved} frames in {args.save}")
    return 0 if camera.frames_read >= args.frames or (camera.frames_read and status.state == "ended") else 1
