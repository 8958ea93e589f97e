"""The stateful engine: a model package run with onnxruntime, its state handled as a value.

ORT GenAI's Generator keeps one snapshot slot, cannot move a state between generators, and
its multimodal pipeline ignores snapshots; so the engine drives the package's ONNX parts
itself. One decoder call per extend: the state's tensors are bound as inputs without a copy,
the outputs ORT allocates become the new state, and only the last position's logits come
back to Python. ORT GenAI still provides the tokenizer, the chat template and the image
processor, and is the reference the tests compare tokens against.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import structlog
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OrtFail
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as OrtNotImplemented

from edged.engine.cores import FREE_ENOUGH, free_cores, usable_cores
from edged.engine.errors import Cancelled, ContextFullError, EngineError
from edged.engine.generation import Generation, GenerationOptions
from edged.engine.memory import (
    TRIM_AFTER_TOKENS,
    allocate_large_buffers_apart,
    release_file_pages,
    release_free_memory,
    reuse_activations_within_each_run,
    weights_on_huge_pages,
)
from edged.engine.positions import prompt_positions, text_positions
from edged.engine.image_patches import PatchGrid
from edged.engine.processor import ImageProcessor, ProcessedPrompt
from edged.engine.state import State, is_kv_cache
from edged.engine.token_table import TokenTable, TokenTableRefused, load_token_table
from edged.images import encode_png
from edged.models.manifest import Manifest, read_manifest

__all__ = ["ContextFullError", "Engine", "EngineCounters", "EngineError", "Generation", "GenerationOptions", "Image"]

log = structlog.get_logger()

READ_PIECE = 64
"""Tokens per piece of a prompt with images: a 448 x 448 frame's 200 image tokens are read in
4 pieces, between which a question can be answered. Measured at 0.8B: a frame read in pieces
of 64 took as long as in one piece of 256 (4.0-4.1 s either way)."""

DECODE_ROOM = 64
"""Positions of room a KV cache is given when a step of decoding finds it full: the next
steps write their keys and values in place (GroupQueryAttention's shared-buffer mode)
instead of onnxruntime copying the whole cache into a new one at every token. At 0.8B a
token's keys and values take 24 KB in float32, so the room is at most 1.5 MB a state."""

Image = bytes | str | Path | np.ndarray
"""An encoded picture (PNG, JPEG), a path to one, or an H x W x 3 uint8 RGB frame."""


@dataclass
class EngineCounters:
    """What the engine has done since it started, for status and for tests."""

    images_encoded: int = 0
    tokens_run: int = 0
    """Tokens through the decoder: prompts, and each generated token as it is read back."""
    tokens_generated: int = 0
    decoder_runs: int = 0


class Engine:
    """A loaded model package. Owned by one thread; ``cancel`` events may come from any."""

    def __init__(self, package: Path, threads: int = 0, provider: str | None = None, max_length: int = 2048,
                 prefill_chunk: int = 256, profile_decoder: Path | None = None, spin: bool | None = None,
                 rows: bool = False) -> None:
        """``provider`` is "cpu" or "cuda"; by default the package's target, when present.
        ``spin``: whether idle intra-op threads spin rather than sleep; by default they spin
        only when every core is free as the engine loads (cores.py).
        Prompts longer than ``prefill_chunk`` tokens run in pieces of that many: the same
        result as one call, with the activations of one piece held at a time.
        ``profile_decoder`` makes onnxruntime time each operator of every decoder run, into a
        file named after it that ``self.decoder.end_profiling()`` closes and names.
        ``rows``: load the decoder so that ``fork_logits`` can run forks as the rows of one
        batch (graph.py ``--rows``). Off by default: on a CPU one fork after another is faster
        (docs/engine.md), and on a GPU the batch has not run yet."""
        import onnxruntime_genai as og

        self.package = Path(package)
        self.manifest: Manifest = read_manifest(self.package)
        if provider is None:
            cuda = "CUDAExecutionProvider" in ort.get_available_providers()
            provider = "cuda" if self.manifest.target == "cuda" and cuda else "cpu"
            if self.manifest.target == "cuda" and not cuda:
                log.warning("a CUDA package runs on the CPU: this onnxruntime has no CUDAExecutionProvider "
                            "(on a Jetson, install the GPU builds: deploy/install.sh --wheels DIR)",
                            package=self.manifest.name)
        self.fingerprint = self.manifest.fingerprint
        self.prefill_chunk = prefill_chunk
        self.rows = rows
        self.read_piece = min(READ_PIECE, prefill_chunk)
        config = json.loads((self.package / "genai_config.json").read_text())["model"]
        context = int(config.get("context_length") or max_length)
        if max_length > context:  # past it the rotary tables end: the decoder would fail mid-answer
            log.warning("max_length capped at the model's context length", asked=max_length, context_length=context)
        self.max_length = min(max_length, context)
        self.counters = EngineCounters()
        self._threads = threads
        self.free_cores: float | None = None
        """Cores' worth of CPU time found free as the engine loaded, when ``spin`` was measured."""
        if spin is None:
            self.free_cores = round(free_cores(), 2)
            spin = self.free_cores >= FREE_ENOUGH * usable_cores()
        self.spin = spin
        self._providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
        self.device = "cuda" if provider == "cuda" else "cpu"
        """Where the state's tensors live: onnxruntime's name of the decoder's device."""
        allocate_large_buffers_apart()
        self.decoder, decoder_graph = self._decoder(config["decoder"]["filename"], profile_decoder)
        self.execution_provider = self.decoder.get_providers()[0]
        """The provider that runs the decoder, as onnxruntime reports it."""
        self.arithmetic = f"onnxruntime {ort.__version__}, {self.execution_provider}, decoder {decoder_graph}"
        """What a state's numbers depend on beside the package. Another onnxruntime's kernels,
        another provider or another rewrite of the decoder (graph.py) can move them in their
        last bits, and a state saved under one and continued under another could then give
        other tokens than reading its tokens afresh: saved states record it, and a prefix
        saved under another is read again (store.py). The thread count is not part of it: one
        thread and two give the same logits bit for bit (0.8B, a 348-token prompt and 8 steps)."""
        if provider == "cuda" and self.execution_provider != "CUDAExecutionProvider":
            log.warning("CUDA requested but the decoder runs on the CPU: onnxruntime could not load its CUDA "
                        "provider (CUDA or cuDNN libraries missing or of another version? its log says which)",
                        package=self.manifest.name, provider=self.execution_provider)
        self.tokenizer = og.Tokenizer(str(self.package))
        self.eos_token_ids = frozenset(int(t) for t in self.tokenizer.eos_token_ids)
        self.multimodal = "embedding" in config
        self.embedding: ort.InferenceSession | None = None
        self._table: TokenTable | None = None
        self.token_table_refused: str | None = None
        """Why the embedding runs as a session rather than as a table read from its file."""
        if self.multimodal:
            self._table, self.embedding = self._embedding(config["embedding"]["filename"])
        self._vision_file = config["vision"]["filename"] if "vision" in config else None
        self._vision: ort.InferenceSession | None = None
        self._pixels_dtype: type[np.floating] = np.float32
        self._vision_run = ort.RunOptions()
        """Shared by every vision encoder run, so that ``stop_runs`` can end the one in progress."""
        self._processor: ImageProcessor | None = None
        self._patch_grid = PatchGrid.of_package(self.package) if self._vision_file else None
        self.image_token_id = int(config.get("image_token_id", -1))
        self._merge = int(config.get("vision", {}).get("spatial_merge_size", 2))
        self._head_size = int(config["decoder"]["head_size"])
        self._hidden = int(config["decoder"]["hidden_size"])
        self._state_inputs = [i for i in self.decoder.get_inputs() if i.name.startswith(("past.", "past_key_values."))]
        # A CUDA package computes in float16 end to end; the engine's own arrays follow each
        # part's declared input types, and logits always come back as float32.
        inputs = {i.name: i for i in self.decoder.get_inputs()}
        self._embeds_dtype = _numpy_type(inputs["inputs_embeds"]) if "inputs_embeds" in inputs else np.float32
        embedding_inputs = {i.name: i for i in self.embedding.get_inputs()} if self.embedding is not None else {}
        self._features_dtype = (_numpy_type(embedding_inputs["image_features"]) if embedding_inputs
                                else self._embeds_dtype)
        self._embeds_stay = (self.embedding is not None
                             and self.embedding.get_outputs()[0].type == inputs["inputs_embeds"].type)
        """Whether text's embeddings go from the embedding session to the decoder as they are:
        on a GPU they stay on it, rather than being copied out and back in at each step."""
        self._outputs = [o.name for o in self.decoder.get_outputs()]
        logits = {o.name: o for o in self.decoder.get_outputs()}["logits"]
        self._logits_row: int | None = (logits.shape[2] if logits.type == "tensor(float)" and len(logits.shape) == 3
                                        and logits.shape[1] == 1 and isinstance(logits.shape[2], int) else None)
        """The vocabulary size, when the decoder gives float32 logits of one position: they are
        then written straight into the array the state keeps (on a GPU, the one copy out)."""
        self._fixed_size_outputs = {name for name in self._outputs if name.endswith((".conv", ".recurrent"))}
        self._past_of = {name: _past_name(name) for name in self._outputs if name != "logits"}
        self._kv_outputs = {name for name, past in self._past_of.items() if is_kv_cache(past)}
        self._kv_inputs = [self._past_of[name] for name in self._kv_outputs]
        self._prompts_in_place = self.device == "cpu"
        """Whether a prompt of several tokens, too, is written into a KV cache's room. On the
        CPU the engine's tests run it; on CUDA only one-token steps in place have run (on an
        H200: og.Generator's tokens at 0.8B), so prompts there keep the concatenation."""
        self._empty = {i.name: self._zeros(i) for i in self._state_inputs}
        release_file_pages(self.package)
        self.huge_page_mib = weights_on_huge_pages() if self.device == "cpu" else 0
        """MiB of loaded weights moved onto huge pages (memory.py): decoding 0.8B on two cores
        went 1.02 to 1.14 times as fast (docs/engine.md)."""

    # -- states ----------------------------------------------------------------------------

    def new_state(self) -> State:
        """The model before it has read anything."""
        return State(fingerprint=self.fingerprint, arithmetic=self.arithmetic, tensors=dict(self._empty))

    def extend(self, state: State, tokens: Sequence[int]) -> np.ndarray:
        """Run ``tokens`` (after any pending ones) through the model; the next-token logits."""
        ids = [*state.pending, *(int(t) for t in tokens)]
        if not ids:
            if state.logits is None:
                raise EngineError("nothing to run: the state is empty")
            return state.logits
        self._check_room(state, len(ids) - len(state.pending))
        positions = text_positions(state.next_position, len(ids))
        self._run(state, ids, positions, embeds=self._embed_text(ids) if self.multimodal else None)
        state.next_position += len(ids)
        return state.logits  # type: ignore[return-value]

    def extend_prompt(self, state: State, text: str, images: Sequence[Image] = (),
                      between: Callable[[], None] | None = None) -> np.ndarray:
        """Run a piece of prompt text; each image pad in it stands for the next of ``images``.
        A prompt with images runs in pieces of ``read_piece`` tokens, whether or not
        ``between`` is given; ``between`` is called after the vision encoder and after each
        piece but the last, and may run anything on other states (a waiting question): the
        result is the same as without it."""
        if not images:
            return self.extend(state, self.encode(text))
        if not self.multimodal or self._vision_file is None:
            raise EngineError(f"{self.manifest.name} is a text-only package: it cannot read images")
        prompt = self._process(text, images)
        ids = [*state.pending, *prompt.input_ids]
        self._check_room(state, len(prompt.input_ids))
        features = self._encode_images(prompt.pixel_values, prompt.image_grid_thw)
        positions, next_position = prompt_positions(
            ids, self.image_token_id, prompt.image_grid_thw, state.next_position, self._merge
        )
        embeds = self._embed(ids, features)
        if between is not None:
            between()
        self._run(state, ids, positions, embeds, piece=self.read_piece, between=between)
        state.next_position = next_position
        return state.logits  # type: ignore[return-value]

    def fork_logits(self, state: State, continuations: Sequence[Sequence[int]], rows: int = 1) -> list[np.ndarray]:
        """The next-token logits after each continuation of ``state``: for each, what
        ``extend`` on a fork of the state gives; the forks themselves are not kept.

        ``rows`` > 1 runs up to that many continuations in one decoder call, as the rows of a
        batch, on an engine loaded with ``rows``. The logits agree with one fork at a time to
        the last bits of a float (the batch's attention is another kernel); in an int4 model,
        whose matrix kernels round activations to 8 bits, that can move them further (up to
        0.58 at 0.8B, docs/engine.md). On a CPU the batch loses: the matrix kernels take no
        less time a token for 8 rows than for one, and the rows are padded to the longest."""
        if rows > 1 and not self.rows:
            raise EngineError("fork_logits(rows=N) takes an engine loaded with rows=True")
        if rows <= 1:
            return [self.extend(state.fork(), continuation).copy() for continuation in continuations]
        logits: list[np.ndarray] = []
        for start in range(0, len(continuations), rows):
            logits += self._run_rows(state, continuations[start:start + rows])
        return logits

    def fit_to_grid(self, rgb: np.ndarray) -> np.ndarray:
        """A frame resized to the size the image processor would give it, so extend_prompt
        reads it directly (no image file, no resize of the processor's own; image_patches.py).
        The token count is the processor's; the resampling is OpenCV's. As it is when the
        package has no such processor, or the frame is on the grid already."""
        return self._patch_grid.fit(rgb) if self._patch_grid is not None else rgb

    def generate(self, state: State, options: GenerationOptions = GenerationOptions(),
                 cancel: threading.Event | None = None) -> Generation:
        """Tokens continuing ``state``, which follows along; iterate the result to stream them."""
        return Generation(self, state, options, cancel)

    # -- text ------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text)]

    def decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(np.asarray(tokens, dtype=np.int32))

    def chat_prompt(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    enable_thinking: bool = False) -> str:
        """Messages through the model's chat template; thinking stays off unless asked for."""
        template = self._chat_template()
        switch = "{%- set enable_thinking = " + ("true" if enable_thinking else "false") + " -%}\n"
        return self.tokenizer.apply_chat_template(
            json.dumps(messages), template_str=switch + template if template else None,
            add_generation_prompt=add_generation_prompt,
        )

    # -- the model's parts -------------------------------------------------------------------

    def _decoder(self, filename: str, profile: Path | None) -> tuple[ort.InferenceSession, str]:
        """The package's decoder, rewritten (graph.py) to compute only the last position's
        logits, the only ones ever read; in a package built for CUDA, to give them as
        float32; on the CPU to run the scalar logistics of the gated norm and the short
        convolution as vectorized operators; and for ``rows``, to take a batch of rows. A
        graph the first rewrites do not know runs as it is; one that cannot take rows fails
        the load. With the session, which graph it runs: "as packaged", or the rewritten
        graph's digest (for ``arithmetic``)."""
        rewrites = [*(["--last-logits"] if self.manifest.lm_head != "last" else []),
                    *(["--float32-logits"] if self.manifest.target == "cuda" else []),
                    *(["--cpu-ops"] if self.device == "cpu" else []),
                    *(["--rows"] if self.rows else [])]
        if not rewrites:
            return self._session(filename, profile=profile), "as packaged"
        path = self.package / filename
        rewrite = subprocess.run([sys.executable, "-m", "edged.engine.graph", str(path), *rewrites], capture_output=True)
        if rewrite.returncode != 0:
            said = rewrite.stderr.decode(errors="replace").strip().splitlines()
            if self.rows:
                raise EngineError(f"the decoder cannot take rows: {said[-1] if said else rewrite.returncode}")
            log.warning("running the decoder as the package gives it", rewrites=rewrites,
                        reason=said[-1] if said else f"the rewrite exited with status {rewrite.returncode}")
            return self._session(filename, profile=profile), "as packaged"
        digest = hashlib.sha256(rewrite.stdout).hexdigest()[:16]
        return self._session(rewrite.stdout, folder=path.parent, profile=profile), f"rewritten {digest}"

    def _embedding(self, filename: str) -> tuple[TokenTable | None, ort.InferenceSession | None]:
        """The token table read from its file (token_table.py), or else the embedding session."""
        try:
            return load_token_table(self.package / filename), None
        except TokenTableRefused as refused:
            self.token_table_refused = str(refused)
            return None, self._session(filename)

    def _session(self, model: str | bytes, folder: Path | None = None, profile: Path | None = None,
                 reuse_within_run: ort.RunOptions | None = None) -> ort.InferenceSession:
        """A part of the package: a file in it, or a graph in memory whose weights are in
        ``folder``. ``reuse_within_run``: the run options of every call, for a part whose
        calls should reuse their activations' memory (memory.py)."""
        options = ort.SessionOptions()
        if profile is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile)
        options.intra_op_num_threads = self._threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spin else "0")
        options.inter_op_num_threads = 1
        # Without the arena a long prompt's activations go back to the allocator when the
        # call ends, instead of staying reserved for the life of the process (-25 MB at 0.8B).
        options.enable_cpu_mem_arena = False
        if reuse_within_run is not None:
            reuse_activations_within_each_run(options, reuse_within_run)
        if isinstance(model, str):
            return ort.InferenceSession(str(self.package / model), options, providers=self._providers)
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        return ort.InferenceSession(model, options, providers=self._providers)

    def _zeros(self, arg: ort.NodeArg) -> ort.OrtValue:
        shape = [1 if d == "batch_size" else 0 if "sequence" in str(d) else self._head_size if isinstance(d, str) else d
                 for d in arg.shape]
        return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=_numpy_type(arg)), self.device)

    def _chat_template(self) -> str | None:
        path = self.package / "chat_template.jinja"
        if path.exists():
            return path.read_text()
        config = json.loads((self.package / "tokenizer_config.json").read_text())
        template = config.get("chat_template")
        return template if isinstance(template, str) else None

    def _process(self, text: str, images: Sequence[Image]) -> ProcessedPrompt:
        """Token ids and patches: frames the processor would take as they are, directly
        (image_patches.py); any other picture through ORT GenAI's processor."""
        grid = self._patch_grid
        if grid is not None and all(isinstance(image, np.ndarray) and grid.takes_as_is(image) for image in images):
            ids = self.encode(text)
            if ids.count(self.image_token_id) != len(images):
                raise EngineError(f"the prompt has {ids.count(self.image_token_id)} image pads for {len(images)} pictures")
            pieces = [grid.patches(image) for image in images]  # type: ignore[arg-type]
            grids = np.concatenate([thw for _, thw in pieces])
            return ProcessedPrompt(grid.expand(ids, self.image_token_id, grids),
                                   np.concatenate([pixels for pixels, _ in pieces]), grids)
        encoded = [encode_png(image) if isinstance(image, np.ndarray) else image for image in images]
        return self._image_processor()(text, encoded)

    def _image_processor(self) -> ImageProcessor:
        if self._processor is None:
            self._processor = ImageProcessor(self.package)
        return self._processor

    def _encode_images(self, pixels: np.ndarray | None, grid: np.ndarray | None) -> np.ndarray:
        if self._vision is None:
            try:
                self._vision = self._session(self._vision_file, reuse_within_run=self._vision_run)  # type: ignore[arg-type]
            except (OrtFail, OrtNotImplemented) as error:
                if self.manifest.target == self.device:
                    raise
                # A CUDA package on a CPU: its float16 encoder's attention has no CPU kernel.
                raise EngineError(
                    f"{self.manifest.name} is built for {self.manifest.target} and runs on the {self.device} here, "
                    f"where its vision encoder does not load ({str(error).strip()}); install "
                    f"onnxruntime's {self.manifest.target.upper()} build (on a Jetson: deploy/install.sh --wheels DIR) "
                    f"or use a package built for {self.device}"
                ) from None
            self._pixels_dtype = _numpy_type(self._vision.get_inputs()[0])
            release_file_pages(self.package)
            if self.device == "cpu":
                self.huge_page_mib += weights_on_huge_pages()
        try:
            pixels = pixels.astype(self._pixels_dtype, copy=False)  # type: ignore[union-attr]
            features = self._vision.run(None, {"pixel_values": pixels, "image_grid_thw": grid}, self._vision_run)[0]
        except Exception:
            if self._vision_run.terminate:
                raise Cancelled() from None
            raise
        self.counters.images_encoded += len(grid)  # type: ignore[arg-type]
        return features

    def stop_runs(self) -> None:
        """End a vision encoder run in progress, and refuse later ones, with ``Cancelled``:
        for a daemon that stops. The encoder is one call, seconds long on a slow board (under
        emulation, longer than the stop may take), with no piece to stop between; a thread
        still inside it when the interpreter exits aborts the process."""
        self._vision_run.terminate = True

    def _embed_text(self, ids: Sequence[int]) -> np.ndarray | ort.OrtValue:
        """The embeddings of text; left where the embedding session computed them when it
        runs as one (its table not a 4-bit one that token_table.py reads, as in a float16
        package), so that on a GPU they never leave it. Only a prompt of one piece: ``_run``
        cuts longer ones."""
        if not self._embeds_stay or len(ids) > self.prefill_chunk:
            return self._embed(ids, None)
        binding = self.embedding.io_binding()  # type: ignore[union-attr]
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
        binding.bind_cpu_input("image_features", np.zeros((0, self._hidden), dtype=self._features_dtype))
        binding.bind_output(self.embedding.get_outputs()[0].name, self.device)  # type: ignore[union-attr]
        self.embedding.run_with_iobinding(binding)  # type: ignore[union-attr]
        return binding.get_outputs()[0]

    def _embed(self, ids: Sequence[int], features: np.ndarray | None) -> np.ndarray:
        return self._embed_rows(np.asarray([ids], dtype=np.int64), features)

    def _embed_rows(self, ids: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        if features is None:
            features = np.zeros((0, self._hidden), dtype=self._features_dtype)
        if self._table is not None:
            embeds = self._table.embed(ids, features)
        else:
            feeds = {"input_ids": ids, "image_features": features.astype(self._features_dtype, copy=False)}
            embeds = self.embedding.run(None, feeds)[0]  # type: ignore[union-attr]
        return embeds.astype(self._embeds_dtype, copy=False)

    def _check_room(self, state: State, adding: int) -> None:
        if state.length + adding > self.max_length:
            raise ContextFullError(
                f"the state holds {state.length} tokens and this adds {adding}: more than "
                f"max_length {self.max_length} ([model] max_length); nothing was run"
            )

    def _run(self, state: State, ids: list[int], positions: np.ndarray, embeds: np.ndarray | ort.OrtValue | None,
             piece: int | None = None, between: Callable[[], None] | None = None) -> None:
        """``ids`` on top of ``state``, in pieces of at most ``piece`` (by default
        ``prefill_chunk``) tokens, with ``between`` called between two pieces. Embeddings
        given as an OrtValue are of one piece."""
        piece = piece or self.prefill_chunk
        for start in range(0, len(ids), piece):
            if start and between is not None:
                between()
            end = start + piece
            self._run_once(state, ids[start:end], np.ascontiguousarray(positions[:, :, start:end]),
                           embeds if embeds is None or len(ids) <= piece else embeds[:, start:end])
        if len(ids) >= TRIM_AFTER_TOKENS:
            release_free_memory()

    def _run_rows(self, state: State, continuations: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Forks of ``state`` as the rows of one batch, one decoder call for all: a row shorter
        than the longest is padded at its end, which the attention mask leaves out, and is
        read at its own last token (the graph's ``--rows`` rewrite). What the padding does to
        a row's state comes after that token, and the rows' states are not kept."""
        rows = [[*state.pending, *(int(t) for t in continuation)] for continuation in continuations]
        if not all(rows):
            raise EngineError("nothing to run: a continuation is empty")
        width, count = max(map(len, rows)), len(rows)
        self._check_room(state, width - len(state.pending))
        used = len(state.tokens)
        ids = np.asarray([row + row[-1:] * (width - len(row)) for row in rows], dtype=np.int64)
        mask = np.zeros((count, used + width), dtype=np.int64)
        for index, row in enumerate(rows):
            mask[index, :used + len(row)] = 1
        feeds = {"attention_mask": mask,
                 "position_ids": np.ascontiguousarray(np.broadcast_to(
                     np.arange(state.next_position, state.next_position + width), (3, count, width)))}
        if self.multimodal:
            feeds["inputs_embeds"] = self._embed_rows(ids)
        else:
            feeds["input_ids"] = ids
        feeds.update((name, np.repeat(value, count, axis=0)) for name, value in state.arrays().items())
        binding = self.decoder.io_binding()
        for name, value in feeds.items():  # the arrays outlive the run: onnxruntime may read them in place
            binding.bind_cpu_input(name, value)
        for name in self._past_of:
            binding.bind_output(name, self.device)
        logits = self._bind_logits(binding, count)
        self.decoder.run_with_iobinding(binding)
        if logits is None:
            logits = _float32(binding.get_outputs()[-1].numpy())  # bound last
        self.counters.decoder_runs += 1
        self.counters.tokens_run += sum(map(len, rows))
        return [row[-1].copy() for row in logits]

    def _make_room(self, state: State, adding: int) -> bool:
        """Whether this call writes the KV caches in place: the state owns them and they have
        room for ``adding`` tokens, or they are copied here into buffers that have (with
        ``DECODE_ROOM`` more for a step of decoding). A prompt on caches that the state fills
        exactly grows them as before, by onnxruntime's own copy into new ones (on a GPU, on
        the device: how a fork reads its rule); so does a prompt on a GPU
        (``_prompts_in_place``), its caches first cut to what they hold."""
        names = self._kv_inputs
        if not names:
            return False
        used = len(state.tokens)
        capacity = state.tensors[names[0]].shape()[2]
        in_place = adding == 1 or self._prompts_in_place
        if in_place and capacity >= used + adding and state.owned.issuperset(names):
            return True
        if not in_place or (capacity == used and adding > 1):
            if capacity != used:
                self._copy_kv(state, used)
            return False
        self._copy_kv(state, used + adding + (DECODE_ROOM if adding == 1 else 0))
        return True

    def _copy_kv(self, state: State, size: int) -> None:
        """The state's KV caches copied into buffers of ``size`` positions, which it owns."""
        used = len(state.tokens)
        for name in self._kv_inputs:
            held = state.tensors[name].numpy()[:, :, :used]
            buffer = np.zeros((*held.shape[:2], size, held.shape[3]), dtype=held.dtype)
            buffer[:, :, :used] = held
            state.tensors[name] = ort.OrtValue.ortvalue_from_numpy(buffer, self.device)
            state.owned.add(name)

    def _run_once(self, state: State, ids: list[int], positions: np.ndarray,
                  embeds: np.ndarray | ort.OrtValue | None) -> None:
        """One decoder call: ``ids`` on top of ``state``, whose tensors it replaces, or
        updates in place where the state owns them and they have room."""
        kv_in_place = self._make_room(state, len(ids))
        past_of = self._past_of
        # One-token steps update owned DeltaNet states in place (saves a 1 MiB write and read
        # per layer and step at 0.8B); KV caches with room take the new tokens in place.
        in_place = {name for name in self._fixed_size_outputs if len(ids) == 1 and past_of[name] in state.owned}
        if kv_in_place:
            in_place |= self._kv_outputs
        all_in_place = len(in_place) == len(past_of)
        binding = self._reusable_binding(state) if all_in_place else None
        if binding is None:
            binding = self.decoder.io_binding()
            for name, value in state.tensors.items():
                binding.bind_ortvalue_input(name, value)
            for name in past_of:
                if name in in_place:
                    binding.bind_ortvalue_output(name, state.tensors[past_of[name]])
                else:
                    binding.bind_output(name, self.device)
            # A step that updates every tensor in place leaves them all where they are
            # bound: the next step binds its inputs and logits only (at 0.8B, 4 of 100).
            state.step_binding = (binding, tuple(state.tensors.values())) if all_in_place else None
        total = len(state.tokens) + len(ids)
        feeds = {"attention_mask": np.ones((1, total), dtype=np.int64), "position_ids": positions}
        if isinstance(embeds, ort.OrtValue):
            binding.bind_ortvalue_input("inputs_embeds", embeds)
        elif embeds is not None:
            feeds["inputs_embeds"] = embeds
        else:
            feeds["input_ids"] = np.asarray([ids], dtype=np.int64)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        logits = self._bind_logits(binding, 1)
        self.decoder.run_with_iobinding(binding)
        if logits is None or not all_in_place:
            outputs = dict(zip([*past_of, "logits"], binding.get_outputs(), strict=True))  # the order bound
            computed = outputs.pop("logits")
            # Written in place, a tensor keeps its own OrtValue: the one get_outputs gives anew
            # would not keep alive the numpy buffer that a KV cache given room lives in.
            state.tensors = {past_of[name]: state.tensors[past_of[name]] if name in in_place else value
                             for name, value in outputs.items()}
            state.owned = set(state.tensors)
        state.logits = logits[0, -1] if logits is not None else _float32(computed.numpy()[0, -1])
        state.tokens.extend(ids)
        state.pending = []
        self.counters.decoder_runs += 1
        self.counters.tokens_run += len(ids)

    def _bind_logits(self, binding: ort.IOBinding, rows: int) -> np.ndarray | None:
        """The logits bound as the last output: float32 logits of one position straight into
        the array returned; any others where the decoder computes them (None returned)."""
        if self._logits_row is None:
            binding.bind_output("logits", self.device)
            return None
        logits = np.empty((rows, 1, self._logits_row), dtype=np.float32)
        binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        return logits

    @staticmethod
    def _reusable_binding(state: State) -> ort.IOBinding | None:
        """The binding of the state's last step, if it bound the tensors the state has now."""
        if state.step_binding is None:
            return None
        binding, bound = state.step_binding
        tensors = state.tensors.values()
        if len(bound) != len(tensors) or any(a is not b for a, b in zip(bound, tensors)):
            return None
        return binding


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _numpy_type(arg: ort.NodeArg) -> type[np.floating]:
    """The numpy type of a float input: float32 on the CPU, float16 in a CUDA package."""
    try:
        return _NUMPY_TYPES[arg.type]
    except KeyError:
        raise EngineError(f"the model's input {arg.name} is {arg.type}: the engine feeds float or float16") from None


def _float32(logits: np.ndarray) -> np.ndarray:
    """Logits as float32 (a view when they are already), whatever the decoder computes in."""
    return logits.astype(np.float32, copy=False)


def _past_name(present: str) -> str:
    """present.{i}.conv -> past.{i}.conv; present.{i}.key -> past_key_values.{i}.key."""
    _, index, kind = present.split(".")
    return f"past_key_values.{index}.{kind}" if kind in ("key", "value") else f"past.{index}.{kind}"
