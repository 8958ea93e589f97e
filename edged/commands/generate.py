"""``edged generate``: one prompt through a model, the answer streamed as it comes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

GENERATE_EPILOG = """\
examples:
  edged generate "Describe a busy street."
  edged generate --image door.jpg "Is anyone at the door?"
  edged generate --model /var/lib/edged/models/qwen3.5-0.8b-int4-cpu --image yard.png \\
      --json-schema detections.json "List the objects you see."
  edged generate --raw "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n" --json"""


def add_commands(commands: Any, config_options: argparse.ArgumentParser) -> None:
    generate = commands.add_parser(
        "generate", parents=[config_options], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run one prompt (and picture) through a model and stream the answer",
        description="Run one prompt through a model package and print the answer as it streams, to try a\n"
        "model on a picture before deploying it. The prompt goes through the model's chat\n"
        "template unless --raw is given. Without --model, the model [model] path chooses.",
        epilog=GENERATE_EPILOG,
    )
    generate.add_argument("prompt", help="the question or instruction")
    generate.add_argument("--model", type=Path, metavar="DIR", help="model package (default: as [model] path chooses)")
    generate.add_argument("--image", type=Path, action="append", default=[], metavar="FILE",
                          help="a picture to ask about (PNG or JPEG; repeatable)")
    generate.add_argument("--max-tokens", type=_at_least_one, default=256, metavar="N", help="longest answer (default 256)")
    generate.add_argument("--json-schema", type=Path, metavar="FILE", help="constrain the answer to JSON valid against this schema")
    generate.add_argument("--raw", action="store_true", help="feed the prompt's tokens as they are, no chat template")
    generate.add_argument("--think", action="store_true", help="let the model think first (Qwen3.5 thinking mode)")
    generate.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default); try 0.7")
    generate.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0: all)")
    generate.add_argument("--top-p", type=float, default=1.0, help="sample among the likeliest tokens summing to p")
    generate.add_argument("--seed", type=int, help="make sampling repeatable")
    generate.add_argument("--repetition-penalty", type=float, default=1.0, help="above 1 discourages repeats")
    generate.add_argument("--stop", action="append", default=[], metavar="TEXT", help="end the answer before TEXT (repeatable)")
    generate.add_argument("--json", action="store_true", dest="as_json",
                          help="print one JSON object at the end (text, tokens, prompt_tokens, ttft_ms, tok_per_s)")
    generate.set_defaults(handler=_generate)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _read_picture(path: Path) -> Any:
    """The picture at ``path`` as an RGB array; ValueError naming the file when it is not one."""
    import cv2
    import numpy as np

    # OpenCV's own warnings about a truncated file off: it is reported below, in words.
    # (cv2.setLogLevel in OpenCV 4, which a venv on Debian's numpy 1.x gets; cv2.utils.logging in 5.)
    opencv_logging = getattr(cv2.utils, "logging", None)
    if opencv_logging is not None:
        opencv_logging.setLogLevel(opencv_logging.LOG_LEVEL_ERROR)
    else:
        cv2.setLogLevel(2)  # LOG_LEVEL_ERROR
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror})") from None
    if not data:
        raise ValueError(f"{path}: an empty file, not a picture")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: not a picture OpenCV can decode (PNG or JPEG, whole)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _generate(args: argparse.Namespace) -> int:
    from edged.commands.options import settings_and_model
    from edged.engine.engine import Engine, EngineError, GenerationOptions
    from edged.engine.sampling import SamplingOptions
    from edged.models.manifest import ManifestError

    settings, package = settings_and_model(args, args.model)
    try:
        pictures = [_read_picture(image) for image in args.image]
    except ValueError as error:
        print(f"edged generate: {error}", file=sys.stderr)
        return 1
    schema = None
    if args.json_schema:
        try:
            schema = json.loads(args.json_schema.read_text())
        except (OSError, ValueError) as error:
            print(f"edged generate: {args.json_schema}: not a JSON schema ({error})", file=sys.stderr)
            return 1
    try:
        options = GenerationOptions(
            max_tokens=args.max_tokens, stop=tuple(args.stop), json_schema=schema,
            sampling=SamplingOptions(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                     seed=args.seed, repetition_penalty=args.repetition_penalty),
        )
        engine = Engine(package, threads=settings.model.threads, max_length=settings.model.max_length,
                        spin=settings.model.spin_choice)
    except (ValueError, ManifestError) as error:
        print(f"edged generate: {error}", file=sys.stderr)
        return 1
    if args.raw:
        prompt = args.prompt
    else:
        content: Any = args.prompt
        if args.image:
            content = [{"type": "image"} for _ in args.image] + [{"type": "text", "text": args.prompt}]
        prompt = engine.chat_prompt([{"role": "user", "content": content}], enable_thinking=args.think)
    state = engine.new_state()
    started = time.perf_counter()
    first_token_at = None
    try:
        engine.extend_prompt(state, prompt, pictures)
        prompt_tokens = state.length
        generation = engine.generate(state, options)
        for _, piece in generation:
            if first_token_at is None:
                first_token_at = time.perf_counter()
            if not args.as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except EngineError as error:
        print(f"\nedged generate: {error}", file=sys.stderr)
        return 1
    finished = time.perf_counter()
    first_token_at = first_token_at or finished
    decode_seconds = finished - first_token_at
    if args.as_json:
        print(json.dumps({
            "text": generation.text,
            "tokens": generation.tokens,
            "prompt_tokens": prompt_tokens,
            "finish_reason": generation.finish_reason,
            "ttft_ms": round((first_token_at - started) * 1000, 1),
            "tok_per_s": round((len(generation.tokens) - 1) / decode_seconds, 1) if decode_seconds > 0 else None,
            "model": engine.manifest.name,
        }))
    else:
        print()
    return 0
