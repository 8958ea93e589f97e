"""``edged models``: build, verify, list and pull model packages."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from edged.commands.options import load_for_command
from edged.models.manifest import BLOCK_SIZES, DEFAULT_BLOCK_SIZE

BUILD_EXTRA_HINT = "the build tools are not installed: pip install 'edged[build]' (a workstation, not a device)"

MODELS_DESCRIPTION = """\
Model packages: a Qwen3.5 checkpoint turned into ONNX parts that a device runs (decoder,
vision encoder, embedding, tokenizer), described by edged-model.json with every file's
hash. Build them on a workstation, copy or pull them onto the device."""

BUILD_EPILOG = """\
examples:
  edged models build Qwen/Qwen3.5-0.8B --out qwen3.5-0.8b-int4-cpu
  edged models build ./Qwen3.5-2B --out pkg --precision int4 --target cuda
  edged models build Qwen/Qwen3.5-0.8B --out fast --block-size 128   # faster, coarser int4
  edged models build --tiny --out tiny          # the random test model: 5 small packages
  edged models build --size 0.8b --out bench    # random weights at 0.8B's size (7 GB RAM)
  edged models build --size 4b --out bench4b    # at 4B's (24 GB RAM, 11 minutes on 2 cores)
  edged models build --size 0.8b --target cuda --out bench-cuda   # for a Jetson (float16)"""


def add_commands(commands: Any, config_options: argparse.ArgumentParser) -> None:
    """Register ``edged models ...`` on the top-level subparsers."""
    formatter = argparse.RawDescriptionHelpFormatter
    models = commands.add_parser(
        "models", help="build, verify, list and pull model packages", description=MODELS_DESCRIPTION,
        formatter_class=formatter,
    )
    sub = models.add_subparsers(dest="models_command", metavar="COMMAND", title="commands")
    models.set_defaults(handler=lambda args: _usage(models))

    build = sub.add_parser(
        "build", help="build a package from a checkpoint (needs the build extra)", formatter_class=formatter,
        description="Build a model package from a Qwen3.5 checkpoint: a local folder or a Hugging Face\n"
        "hub id. The decoder comes from the ONNX Runtime GenAI builder, the vision encoder and\n"
        "embedding from mobius-onnx. Needs `pip install 'edged[build]'`.",
        epilog=BUILD_EPILOG,
    )
    build.add_argument("source", nargs="?", help="checkpoint folder or hub id, e.g. Qwen/Qwen3.5-0.8B")
    build.add_argument("--out", type=Path, required=True, metavar="DIR", help="package folder to write (replaced)")
    build.add_argument("--precision", choices=["int4", "fp16", "fp32"], help="decoder weights (default int4)")
    build.add_argument("--target", choices=["cpu", "cuda"],
                       help="execution provider (default cpu); with --tiny/--size too: the same packages, for it")
    build.add_argument("--text-only", action="store_true", help="leave out the vision encoder")
    build.add_argument("--all-logits", action="store_true",
                       help="compute logits at every prompt position (default: the last only, ~30%% faster prefill)")
    build.add_argument("--vision-precision", choices=["int8", "fp32"],
                       help="vision encoder weights on a CPU (default int8 with int4: 0.77x the encode time, "
                       "a quarter of the size, image features at cosine 0.998 of fp32)")
    build.add_argument("--block-size", type=int, choices=BLOCK_SIZES, default=DEFAULT_BLOCK_SIZE,
                       metavar="{" + ",".join(map(str, BLOCK_SIZES)) + "}",
                       help="int4 weights: how many share one scale (default 32, as ORT GenAI's builder and "
                       "llama.cpp's Q4_0; 128: at 0.8B on 2 cores 1.3x the decode and prompt speed and 130 MiB "
                       "less memory, each weight rounded a fifth further off: check answers on your model)")
    build.add_argument("--name", help="package name (default: from SOURCE, precision and target)")
    build.add_argument("--tiny", action="store_true", help="build the random tiny test model instead of SOURCE")
    build.add_argument("--size", choices=["tiny", "0.8b", "2b", "4b"],
                       help="a random model with this size's published dimensions instead of SOURCE")
    build.add_argument("--keep-checkpoint", action="store_true", help="with --tiny/--size: keep the checkpoint in OUT")
    build.set_defaults(handler=_build)

    verify = sub.add_parser(
        "verify", help="check every file of a package against its manifest",
        description="Check every file of a package against edged-model.json: each missing file, or one\n"
        "whose size or sha256 differs, is named. Exit 0 when intact, 1 otherwise.", formatter_class=formatter,
    )
    verify.add_argument("path", type=Path, help="package folder")
    verify.set_defaults(handler=_verify)

    listing = sub.add_parser(
        "list", parents=[config_options], help="installed packages, their size and RAM, and what 'auto' picks",
        description="List the packages installed in [model] models_dir with their size and the RAM\n"
        "each needs, and mark the one [model] path picks ('auto': the largest that fits the\n"
        "available memory, less [model] headroom_mb).", formatter_class=formatter,
    )
    listing.add_argument("--memory-mb", type=int, metavar="N",
                         help="pretend N MiB are available (what would 'auto' pick on another board?)")
    listing.add_argument("--catalog", action="store_true", help="list the catalog of known packages instead")
    listing.set_defaults(handler=_list)

    pull = sub.add_parser(
        "pull", parents=[config_options], help="download, verify and install a prebuilt package",
        description="Install a package into [model] models_dir: a catalog name, an http(s) URL of a\n"
        "package folder, hf://OWNER/REPO, or a package folder on this machine. The download\n"
        "resumes where it stopped; nothing is installed unless every file verifies.",
        formatter_class=formatter,
    )
    pull.add_argument("spec", metavar="NAME|URL|DIR", help="what to install")
    pull.add_argument("--models-dir", type=Path, metavar="DIR", help="install here instead of [model] models_dir")
    pull.set_defaults(handler=_pull)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _build(args: argparse.Namespace) -> int:
    size = "tiny" if args.tiny else args.size
    if (size is None) == (args.source is None):
        print("edged models build: give a SOURCE checkpoint, or --tiny / --size for a random model", file=sys.stderr)
        return 2
    try:
        from edged.recipe.build import BuildError, BuildOptions, build_package, build_random_packages, fetch_checkpoint
    except ImportError:
        print(f"edged models build: {BUILD_EXTRA_HINT}", file=sys.stderr)
        return 1
    try:
        if size is not None:
            fixed = [flag for flag, given in (("--precision", args.precision), ("--text-only", args.text_only),
                                              ("--name", args.name)) if given]
            if fixed:
                print(f"edged models build: {', '.join(fixed)} choose how SOURCE is built; a random model's "
                      "packages are a fixed set (text and vision-language, see models/README.md)", file=sys.stderr)
                return 2
            manifests = build_random_packages(args.out, size, _progress, keep_checkpoint=args.keep_checkpoint,
                                              all_logits=args.all_logits, vision_precision=args.vision_precision,
                                              target=args.target or "cpu",
                                              block_size=args.block_size)
            for manifest in manifests:
                print(f"{manifest.name}: {manifest.size_bytes / 1e6:.1f} MB, fingerprint {manifest.fingerprint[:16]}")
            return 0
        options = BuildOptions(precision=args.precision or "int4", target=args.target or "cpu", text_only=args.text_only,
                               all_logits=args.all_logits, source_label=args.source,
                               vision_precision=args.vision_precision, block_size=args.block_size)
        options = replace(options, name=args.name or f"{Path(args.source.rstrip('/')).name.lower()}-"
                                                     f"{'text-' if args.text_only else ''}{options.weights}-{options.target}")
        checkpoint = fetch_checkpoint(args.source, _progress)
        manifest = build_package(checkpoint, args.out, options, _progress)
    except ImportError as error:
        print(f"edged models build: {BUILD_EXTRA_HINT} ({error})", file=sys.stderr)
        return 1
    except BuildError as error:
        print(f"edged models build: {error}", file=sys.stderr)
        return 1
    print(f"{manifest.name}: {args.out} ({manifest.size_bytes / 1e6:.1f} MB, fingerprint {manifest.fingerprint[:16]})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edged.models.manifest import read_manifest, verify_package

    problems = verify_package(args.path)
    for problem in problems:
        print(f"{args.path}: {problem}" if not problem.startswith(str(args.path)) else problem, file=sys.stderr)
    if problems:
        return 1
    manifest = read_manifest(args.path)
    print(f"{args.path}: {manifest.name}: all {len(manifest.files)} files match (fingerprint {manifest.fingerprint[:16]})")
    return 0


def _list(args: argparse.Namespace) -> int:
    from edged.models.catalog import catalog
    from edged.models.installed import (
        BUNDLED_PACKAGE,
        ModelSelectionError,
        available_memory_mb,
        choose_model,
        installed_packages,
    )

    config = load_for_command(args).settings.model
    if args.catalog:
        installed = {p.manifest.name for p in installed_packages(config.models_dir, config.max_length)}
        print(f"{'NAME':<26} {'SOURCE':<20} {'SIZE':>8} {'MIN RAM':>9} INSTALLED")
        for entry in catalog():
            print(f"{entry.name:<26} {entry.source:<20} {entry.size_mb:>5} MB {entry.min_ram_mb:>5} MiB "
                  f"{'yes' if entry.name in installed else ''}")
        return 0
    available = args.memory_mb if args.memory_mb is not None else available_memory_mb()
    packages = installed_packages(config.models_dir, config.max_length, config.rules_per_batch)
    try:
        choice = choose_model(config, available_mb=available)
        chosen, why = choice.path.resolve(), choice.reason
    except ModelSelectionError as error:
        chosen, why = None, str(error)
    batches = f" and rules {config.rules_per_batch} to a batch" if config.rules_per_batch > 1 else ""
    print(f"{config.models_dir}: {len(packages)} package(s); RAM for {config.max_length}-token states{batches}, "
          f"{available} MiB available, {config.headroom_mb} MiB headroom")
    if packages:
        print(f"  {'NAME':<32} {'PRECISION':<9} {'TARGET':<6} {'SIZE':>9} {'RAM':>10}")
        for package in packages:
            mark = "*" if package.path.resolve() == chosen else " "
            manifest = package.manifest
            print(f"{mark} {manifest.name:<32} {manifest.weights:<9} {manifest.target:<6} "
                  f"{manifest.size_bytes / 1e6:>6.1f} MB {package.ram_mb:>6} MiB")
    print(f"  bundled: {BUNDLED_PACKAGE} (the tiny test model)" + (" *" if chosen == BUNDLED_PACKAGE.resolve() else ""))
    print(f'[model] path = "{config.path}": ' + (f"{chosen} ({why})" if chosen else why))
    return 0 if chosen else 1


def _pull(args: argparse.Namespace) -> int:
    from edged.models.pull import PullError, pull

    models_dir = args.models_dir or load_for_command(args).settings.model.models_dir
    try:
        result = pull(args.spec, models_dir, _progress)
    except PullError as error:
        print(f"edged models pull: {error}", file=sys.stderr)
        return 1
    state = "already installed, intact" if result.already_installed else "installed"
    print(f"{result.manifest.name}: {state} in {result.path} ({result.manifest.size_bytes / 1e6:.1f} MB)")
    return 0
