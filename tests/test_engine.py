"""The stateful engine gives exactly the tokens that decoding from scratch gives, whatever
path a state took: prefixes, forks, images, saves and restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import onnxruntime_genai as og
import pytest
from safetensors.numpy import load_file, save_file

from conftest import BUNDLED, FLOAT, LOGITS_ATOL, REPO, TINY

from edged.images import write_png

from edged.engine.engine import DECODE_ROOM, ContextFullError, Engine, EngineError, GenerationOptions
from edged.engine.persist import ComputedElsewhere, StateFileError, load_state, read_metadata, save_state
from edged.engine.sampling import SamplingOptions
from edged.engine.state import State
from edged.engine.store import PrefixStore, SessionStore
from edged.engine.token_table import TokenTable, TokenTableRefused, load_token_table

QUESTION = "Is there a person at the door?"


@pytest.fixture(scope="module")
def text_fp32() -> Engine:
    return Engine(TINY / f"text-{FLOAT}")


@pytest.fixture(scope="module")
def vl() -> Engine:
    return Engine(TINY / f"vl-{FLOAT}")


@pytest.fixture(scope="module", params=[f"vl-{FLOAT}", "vl-int4"])
def any_vl(request: pytest.FixtureRequest) -> Engine:
    """Each multimodal tiny package: state handling must be exact at every precision."""
    return Engine(TINY / request.param)


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb = (np.random.default_rng(3).random((64, 96, 3)) * 255).astype(np.uint8)
    return write_png(tmp_path_factory.mktemp("img") / "door.png", rgb)


@pytest.fixture(scope="module")
def second_picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb = (np.random.default_rng(4).random((96, 64, 3)) * 255).astype(np.uint8)
    return write_png(tmp_path_factory.mktemp("img") / "yard.png", rgb)


def greedy(engine: Engine, state: State, n: int = 24) -> list[int]:
    return engine.generate(state, GenerationOptions(max_tokens=n)).run().tokens


def og_tokens(package: Path, ids: list[int], n: int, on_cpu: bool = False) -> list[int]:
    config = og.Config(str(package))
    if on_cpu:
        config.clear_providers()
    model = og.Model(config)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + n, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out


def image_prompt(engine: Engine, question: str, images: int = 1) -> str:
    content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    return engine.chat_prompt([{"role": "user", "content": content}])


def tensors(state: State) -> dict[str, np.ndarray]:
    return {name: value.numpy().copy() for name, value in state.tensors.items()}


# -- from scratch: the references -----------------------------------------------------------


def with_the_decoder_the_engine_runs(package: Path, engine: Engine, copy: Path) -> Path:
    """A copy of ``package`` whose decoder file is the graph the engine runs (graph.py), so
    that og.Generator runs the same operators."""
    import shutil

    from edged.engine.graph import rewritten_decoder

    shutil.copytree(package, copy)
    decoder = json.loads((package / "genai_config.json").read_text())["model"]["decoder"]["filename"]
    (copy / decoder).write_bytes(rewritten_decoder(package / decoder, last_logits=engine.manifest.lm_head != "last",
                                                   cpu_ops=engine.device == "cpu"))
    return copy


@pytest.mark.parametrize("package", [f"text-{FLOAT}", "text-int4", "vl-int4"])
def test_text_prompt_gives_og_generator_tokens(package: str, tmp_path: Path) -> None:
    """og.Generator's tokens, og running the decoder graph the engine runs: the engine's CPU
    rewrites (graph.py: the gated norm, the convolution's SiLU) move int4 logits by a rounding
    of MatMulNBits' 8-bit activations, enough to flip a near tie in 40 tokens. vl-int4: text
    through edged's token table (token_table.py) and og's embedding session."""
    engine = Engine(TINY / package)
    ids = engine.encode(engine.chat_prompt([{"role": "user", "content": QUESTION}]))
    state = engine.new_state()
    engine.extend(state, ids)
    ours = engine.generate(state, GenerationOptions(max_tokens=40)).run()
    theirs = og_tokens(with_the_decoder_the_engine_runs(TINY / package, engine, tmp_path / package), ids, 40)
    assert ours.tokens == theirs[: len(ours.tokens)]
    assert ours.finish_reason == ("eos" if len(theirs) < 40 else "length")
    assert len(set(ours.tokens)) > 5


@pytest.fixture(scope="module")
def cuda_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model built for CUDA as a Jetson gets it: float16 from the embedding to the
    logits, where the CPU packages are float32."""
    from edged.recipe.build import build_random_packages

    out = tmp_path_factory.mktemp("cuda")
    build_random_packages(out, "tiny", target="cuda")
    return out


@pytest.mark.build
@pytest.mark.parametrize("package", ["text-int4", "vl-int4", "vl-fp16"])
def test_a_package_built_for_cuda_gives_og_generator_tokens_on_the_cpu(cuda_packages: Path, package: str) -> None:
    """The engine feeds each part the types it declares and has the decoder give its float16
    logits as float32 (a Cast added to its graph), so a CUDA package runs anywhere; here on
    the CPU, the fallback of a board whose onnxruntime has no CUDA (the same float16 graphs;
    no CPU kernel reads float16 images). vl-int4's text is read from its float16 token table;
    vl-fp16's, with no int4 table, goes through its embedding session, whose output the
    decoder reads as it is (on a GPU, without leaving it). og reads the text packages of the
    same weights: og cannot load a VL package whose encoder has no CPU kernel."""
    engine = Engine(cuda_packages / package, provider="cpu")
    assert engine.manifest.target == "cuda" and engine.execution_provider == "CPUExecutionProvider"
    assert {o.name: o.type for o in engine.decoder.get_outputs()}["logits"] == "tensor(float)"
    if package.startswith("vl"):
        assert (engine.embedding is None) == (package == "vl-int4"), engine.token_table_refused
    ids = engine.encode(engine.chat_prompt([{"role": "user", "content": QUESTION}]))
    state = engine.new_state()
    engine.extend(state, ids)
    assert {value.data_type() for value in state.tensors.values()} == {"tensor(float16)"}
    ours = engine.generate(state, GenerationOptions(max_tokens=30)).run()
    text_package = cuda_packages / ("text-fp16" if package.endswith("fp16") else "text-int4")
    assert ours.tokens == og_tokens(text_package, ids, 30, on_cpu=True)[: len(ours.tokens)]
    assert len(set(ours.tokens)) > 5


@pytest.mark.build
def test_a_package_built_for_cuda_says_on_a_cpu_why_it_reads_no_picture(cuda_packages: Path, picture: Path) -> None:
    """Its float16 encoder's attention has no CPU kernel: a board whose onnxruntime lacks
    CUDA (the CPU wheels installed on a Jetson) is told what to install, not onnxruntime's
    missing-kernel message alone."""
    engine = Engine(cuda_packages / "vl-int4", provider="cpu")
    with pytest.raises(EngineError, match=r"built for cuda and runs on the cpu here.*install onnxruntime's CUDA build"):
        engine.extend_prompt(engine.new_state(), image_prompt(engine, QUESTION), [picture])


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    """transformers on the tiny checkpoint the committed packages were built from."""
    import torch
    from transformers import Qwen3_5ForConditionalGeneration

    from edged.recipe.checkpoint import build_checkpoint

    checkpoint = build_checkpoint(tmp_path_factory.mktemp("checkpoint"))
    return Qwen3_5ForConditionalGeneration.from_pretrained(checkpoint, dtype=torch.float32).eval()


@pytest.mark.build
def test_image_prompt_gives_transformers_tokens_and_logits(vl: Engine, reference, picture: Path, second_picture: Path) -> None:
    import torch

    prompt = image_prompt(vl, "What do both show?", images=2)
    processed = vl._image_processor()(prompt, [picture, second_picture])
    state = vl.new_state()
    first_logits = vl.extend_prompt(state, prompt, [picture, second_picture]).copy()
    assert state.tokens == processed.input_ids
    generation = vl.generate(state, GenerationOptions(max_tokens=12)).run()

    ids = torch.tensor([processed.input_ids + generation.tokens[:-1]])
    image_tokens = (ids == vl.image_token_id).to(torch.int32)
    with torch.no_grad():
        logits = reference(
            input_ids=ids, pixel_values=torch.from_numpy(processed.pixel_values),
            image_grid_thw=torch.from_numpy(processed.image_grid_thw), mm_token_type_ids=image_tokens,
        ).logits[0].numpy()
    prompt_length = len(processed.input_ids)
    np.testing.assert_allclose(first_logits, logits[prompt_length - 1], atol=1e-3, rtol=0)
    assert generation.tokens == [int(t) for t in logits[prompt_length - 1:].argmax(-1)][: len(generation.tokens)]


def test_image_positions_advance_by_the_image_extent_not_its_token_count(vl: Engine, picture: Path) -> None:
    state = vl.new_state()
    vl.extend_prompt(state, image_prompt(vl, "Hi"), [picture])
    image_tokens = state.tokens.count(vl.image_token_id)
    assert image_tokens == 6  # 64x96 pixels: 4x6 patches, merged 2x2
    assert state.next_position == len(state.tokens) - image_tokens + 3  # advances by max(2, 3)


# -- prefixes and forks ---------------------------------------------------------------------


def test_prefix_state_plus_suffix_gives_the_whole_prompt_tokens(text_fp32: Engine) -> None:
    system = text_fp32.encode("<|im_start|>system\nYou watch the front door of a house.<|im_end|>\n")
    question = text_fp32.encode(text_fp32.chat_prompt([{"role": "user", "content": QUESTION}]))
    whole = text_fp32.new_state()
    text_fp32.extend(whole, system + question)
    prefix = text_fp32.new_state()
    text_fp32.extend(prefix, system)
    continued = prefix.fork()
    text_fp32.extend(continued, question)
    # Bit for bit in float32; float16 kernels (CUDA) add the suffix's attention up in another order.
    np.testing.assert_allclose(continued.logits, whole.logits, atol=0 if FLOAT == "fp32" else LOGITS_ATOL, rtol=0)
    assert greedy(text_fp32, continued) == greedy(text_fp32, whole)


@pytest.mark.parametrize("package", [f"vl-{FLOAT}", "vl-int4"])
def test_a_prompt_run_in_pieces_gives_the_tokens_of_one_call(package: str, picture: Path, second_picture: Path) -> None:
    """Long prompts run in prefill_chunk pieces to bound memory; pieces of 5 tokens cut
    through both pictures' tokens here, and must change nothing."""
    whole, pieces = Engine(TINY / package), Engine(TINY / package, prefill_chunk=5)
    prompt = image_prompt(whole, "What do both show?", images=2)
    one, many = whole.new_state(), pieces.new_state()
    whole.extend_prompt(one, prompt, [picture, second_picture])
    pieces.extend_prompt(many, prompt, [picture, second_picture])
    assert pieces.counters.decoder_runs == -(-len(many.tokens) // 5)
    np.testing.assert_allclose(many.logits, one.logits, atol=LOGITS_ATOL, rtol=0)
    assert greedy(pieces, many) == greedy(whole, one)


@pytest.mark.parametrize("package", [f"vl-{FLOAT}", "vl-int4"])
def test_a_read_lets_other_work_in_between_its_pieces_and_ends_as_without_it(package: str, picture: Path) -> None:
    """The daemon answers waiting questions between the pieces of a frame's read (pieces of
    3 tokens here, cutting through the picture's). The read must end exactly as an
    uninterrupted one, and the questions answer as they do alone."""
    engine = Engine(TINY / package, prefill_chunk=3)
    prefix = engine.new_state()
    engine.extend_prompt(prefix, "<|im_start|>system\nYou watch a camera.<|im_end|>\n")
    head = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
    question = "<|im_start|>user\nWhat is a door?<|im_end|>\n<|im_start|>assistant\n"

    def ask() -> list[int]:
        state = prefix.fork()
        engine.extend_prompt(state, question)
        return greedy(engine, state, 8)

    alone_answer = ask()
    alone = prefix.fork()
    engine.extend_prompt(alone, head, [picture])
    answers: list[list[int]] = []
    interrupted = prefix.fork()
    engine.extend_prompt(interrupted, head, [picture], between=lambda: answers.append(ask()))
    assert len(answers) >= 3 and all(answer == alone_answer for answer in answers)
    np.testing.assert_array_equal(interrupted.logits, alone.logits)
    assert interrupted.tokens == alone.tokens and interrupted.next_position == alone.next_position
    expected = tensors(alone)
    for name, value in tensors(interrupted).items():
        np.testing.assert_array_equal(value, expected[name])
    assert greedy(engine, interrupted) == greedy(engine, alone)


@pytest.fixture(scope="module")
def rows_vl(any_vl: Engine) -> Engine:
    """``any_vl``'s package loaded to run forks as the rows of a batch."""
    return Engine(any_vl.package, rows=True)


def test_forks_run_as_one_batch_give_the_logits_of_one_fork_at_a_time(any_vl: Engine, rows_vl: Engine,
                                                                       picture: Path) -> None:
    """Rules on a frame as the rows of one batch (of 3, then 2) instead of one after another:
    rows of different lengths, each read at its own last token, one decoder call a batch."""
    frame = rows_vl.new_state()
    rows_vl.extend_prompt(frame, "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>", [picture])
    before = tensors(frame)
    tails = [rows_vl.encode(f"{when}? Answer yes or no.<|im_end|>\n<|im_start|>assistant\n") for when in
             ("Is a person at the door", "Is it dark", "Is a red car parked in the driveway next to the gate",
              "Is a dog in the yard", "Rain")]
    assert len({len(tail) for tail in tails}) > 2
    one_by_one = rows_vl.fork_logits(frame, tails)
    runs = rows_vl.counters.decoder_runs
    batched = rows_vl.fork_logits(frame, tails, rows=3)
    assert rows_vl.counters.decoder_runs == runs + 2
    for tail, single, row in zip(tails, one_by_one, batched, strict=True):
        np.testing.assert_allclose(row, single, atol=LOGITS_ATOL, rtol=0)
        np.testing.assert_allclose(single, rows_vl.extend(frame.fork(), tail), atol=0, rtol=0)
        assert int(np.argmax(row)) == int(np.argmax(single))
    for name, value in tensors(frame).items():  # the forks leave their parent as it was
        np.testing.assert_array_equal(value, before[name])
    with pytest.raises(EngineError, match="rows=True"):
        any_vl.fork_logits(frame, tails, rows=3)


def test_an_engine_loaded_for_rows_reads_and_decodes_as_one_that_is_not(any_vl: Engine, rows_vl: Engine,
                                                                        picture: Path) -> None:
    """A batch of one computes what it did before: the same logits bit for bit, and decoding
    still writes the KV cache in place (after the first step's room, the same buffer)."""
    def run(engine: Engine) -> tuple[list[int], np.ndarray, int]:
        state = engine.new_state()
        engine.extend_prompt(state, image_prompt(engine, QUESTION), [picture])
        kv = next(name for name in state.tensors if name.startswith("past_key_values."))
        tokens, caches = [], []
        for _ in range(12):
            tokens.append(int(np.argmax(state.logits)))
            engine.extend(state, tokens[-1:])
            if not caches or caches[-1] is not state.tensors[kv]:
                caches.append(state.tensors[kv])
        return tokens, state.logits, len(caches)

    tokens, logits, caches = run(rows_vl)
    assert caches == 1
    plain_tokens, plain_logits, _ = run(any_vl)
    assert tokens == plain_tokens
    np.testing.assert_array_equal(logits, plain_logits)


def test_forks_of_one_image_state_answer_as_from_scratch_in_either_order(any_vl: Engine, picture: Path) -> None:
    head = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
    questions = ["Is there a person?<|im_end|>\n<|im_start|>assistant\n",
                 "How many cars are parked?<|im_end|>\n<|im_start|>assistant\n"]

    def from_scratch(question: str) -> list[int]:
        state = any_vl.new_state()
        any_vl.extend_prompt(state, head + question, [picture])
        return greedy(any_vl, state)

    expected = [from_scratch(q) for q in questions]
    encoded_before = any_vl.counters.images_encoded
    image_state = any_vl.new_state()
    any_vl.extend_prompt(image_state, head, [picture])
    parent_tensors, parent_logits, parent_tokens = tensors(image_state), image_state.logits.copy(), list(image_state.tokens)
    for order in ([0, 1], [1, 0]):
        for index in order:
            branch = image_state.fork()
            any_vl.extend_prompt(branch, questions[index])
            assert greedy(any_vl, branch) == expected[index]
    assert any_vl.counters.images_encoded == encoded_before + 1  # one image encode served both
    assert image_state.tokens == parent_tokens
    np.testing.assert_array_equal(image_state.logits, parent_logits)
    for name, value in tensors(image_state).items():
        np.testing.assert_array_equal(value, parent_tensors[name])


def test_follow_up_continues_the_answer_without_reencoding_the_image(any_vl: Engine, picture: Path) -> None:
    first = image_prompt(any_vl, "Describe the scene.")
    follow_up = "<|im_end|>\n<|im_start|>user\nAnd the door?<|im_end|>\n<|im_start|>assistant\n"
    session = any_vl.new_state()
    any_vl.extend_prompt(session, first, [picture])
    answer = any_vl.generate(session, GenerationOptions(max_tokens=6)).run()
    encoded = any_vl.counters.images_encoded
    any_vl.extend_prompt(session, follow_up)
    continued = greedy(any_vl, session, 8)
    assert any_vl.counters.images_encoded == encoded

    whole = any_vl.new_state()
    processed = any_vl._image_processor()(first, [picture]).input_ids
    any_vl.extend_prompt(whole, first, [picture])
    any_vl.extend(whole, answer.tokens + any_vl.encode(follow_up))
    assert whole.tokens == processed + answer.tokens + any_vl.encode(follow_up)
    assert greedy(any_vl, whole, 8) == continued


def test_decoding_copies_the_kv_cache_once_per_room_not_once_per_token(text_fp32: Engine, monkeypatch) -> None:
    """onnxruntime's concatenation copies the whole KV cache into a new one at every token; a
    step that finds the cache full copies it once into a buffer with DECODE_ROOM more
    positions, which the next steps fill in place. The tokens and logits are the
    concatenation's."""
    def decode(steps: int) -> tuple[list[int], list[ort.OrtValue], np.ndarray]:
        state = text_fp32.new_state()
        text_fp32.extend(state, text_fp32.encode(QUESTION))
        kv = next(name for name in state.tensors if name.startswith("past_key_values."))
        tokens, caches = [], []
        for _ in range(steps):
            tokens.append(int(np.argmax(state.logits)))
            text_fp32.extend(state, tokens[-1:])
            if not caches or caches[-1] is not state.tensors[kv]:
                caches.append(state.tensors[kv])
        assert caches[-1].shape()[2] >= len(state.tokens)
        return tokens, caches, state.logits

    steps = 2 * DECODE_ROOM + 8
    tokens, caches, logits = decode(steps)
    assert len(caches) == -(-steps // (DECODE_ROOM + 1))
    monkeypatch.setattr(text_fp32, "_make_room", lambda state, adding: False)
    concatenated, copies, concatenated_logits = decode(steps)
    assert len(copies) == steps
    assert tokens == concatenated
    np.testing.assert_allclose(logits, concatenated_logits, atol=LOGITS_ATOL, rtol=0)


def test_a_follow_up_written_into_the_room_or_concatenated_gives_the_same_tokens(vl: Engine, picture: Path,
                                                                                 monkeypatch) -> None:
    """After an answer the KV cache has room. On the CPU the follow-up's prompt is written
    into it; on a GPU (``_prompts_in_place`` off: only one-token steps in place have run
    there) the cache is cut to what it holds and concatenated, as before the room."""
    follow_up = "<|im_end|>\n<|im_start|>user\nAnd the door?<|im_end|>\n<|im_start|>assistant\n"
    continued = []
    for in_place in (True, False):
        monkeypatch.setattr(vl, "_prompts_in_place", in_place)
        session = vl.new_state()
        vl.extend_prompt(session, image_prompt(vl, "Describe the scene."), [picture])
        vl.generate(session, GenerationOptions(max_tokens=6)).run()
        kv = next(name for name in session.tensors if name.startswith("past_key_values."))
        room = session.tensors[kv].shape()[2] - len(session.tokens)
        assert room > 0
        vl.extend_prompt(session, follow_up)
        continued.append(greedy(vl, session, 8))
    assert continued[0] == continued[1]


# -- limits, sampling, stops, cancellation, JSON ---------------------------------------------


def test_extend_past_max_length_fails_clearly_and_runs_nothing() -> None:
    engine = Engine(TINY / "text-int4", max_length=16)
    state = engine.new_state()
    engine.extend(state, list(range(10)))
    before = (list(state.tokens), state.logits.copy())
    with pytest.raises(ContextFullError, match="holds 10 tokens and this adds 7: more than max_length 16"):
        engine.extend(state, list(range(7)))
    assert state.tokens == before[0]
    np.testing.assert_array_equal(state.logits, before[1])


def test_max_length_is_capped_at_the_model_context_length() -> None:
    assert Engine(TINY / "text-int4", max_length=8192).max_length == 2048  # the tiny model's context


def test_an_answer_that_fills_the_state_ends_with_reason_length() -> None:
    engine = Engine(TINY / "text-int4", max_length=16)
    state = engine.new_state()
    engine.extend(state, list(range(10)))
    generation = engine.generate(state, GenerationOptions(max_tokens=100)).run()
    assert generation.finish_reason == "length"
    assert len(generation.tokens) == 7 and len(state.tokens) == 16  # the 7th waits, pending
    with pytest.raises(ContextFullError):
        engine.extend(state, [1])


def test_text_package_refuses_images(text_fp32: Engine, picture: Path) -> None:
    with pytest.raises(EngineError, match="text-only package"):
        text_fp32.extend_prompt(text_fp32.new_state(), "<|image_pad|>", [picture])


def test_seeded_sampling_repeats_and_differs_from_greedy(text_fp32: Engine) -> None:
    ids = text_fp32.encode(text_fp32.chat_prompt([{"role": "user", "content": QUESTION}]))
    prefix = text_fp32.new_state()
    text_fp32.extend(prefix, ids)
    sampled = GenerationOptions(max_tokens=16, sampling=SamplingOptions(temperature=1.0, top_k=50, top_p=0.9, seed=7))
    first = text_fp32.generate(prefix.fork(), sampled).run().tokens
    second = text_fp32.generate(prefix.fork(), sampled).run().tokens
    assert first == second
    assert first != greedy(text_fp32, prefix.fork(), 16)


def test_stop_strings_end_the_answer_before_them(text_fp32: Engine) -> None:
    ids = text_fp32.encode(text_fp32.chat_prompt([{"role": "user", "content": QUESTION}]))
    state = text_fp32.new_state()
    text_fp32.extend(state, ids)
    full = text_fp32.generate(state.fork(), GenerationOptions(max_tokens=32)).run().text
    stop = full[10:13]
    streamed = []
    generation = text_fp32.generate(state.fork(), GenerationOptions(max_tokens=32, stop=(stop,)))
    for _, piece in generation:
        streamed.append(piece)
    assert generation.finish_reason == "stop"
    assert generation.text == full[: full.index(stop)]
    assert "".join(streamed) == generation.text


def test_cancel_from_another_thread_stops_within_one_step(text_fp32: Engine) -> None:
    ids = text_fp32.encode(text_fp32.chat_prompt([{"role": "user", "content": QUESTION}]))
    state = text_fp32.new_state()
    text_fp32.extend(state, ids)
    cancel, third_token, resume = threading.Event(), threading.Event(), threading.Event()
    generation = text_fp32.generate(state, GenerationOptions(max_tokens=200), cancel)

    def consume() -> None:  # the bus thread reading the stream, say
        for count, _ in enumerate(generation, 1):
            if count == 3:
                third_token.set()
                resume.wait()

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    assert third_token.wait(10)
    cancel.set()  # while the third token's step is under way
    resume.set()
    worker.join(10)
    assert generation.finish_reason == "cancelled"
    assert len(generation.tokens) == 3


def test_json_schema_output_always_parses_and_validates(vl: Engine, picture: Path) -> None:
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "maxLength": 12},
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
            "box": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000}, "minItems": 4, "maxItems": 4},
        },
        "required": ["label", "count", "box"],
        "additionalProperties": False,
    }
    prompt_state = vl.new_state()
    vl.extend_prompt(prompt_state, image_prompt(vl, "Detect objects as JSON."), [picture])
    for seed in range(6):
        options = GenerationOptions(max_tokens=80, json_schema=schema, sampling=SamplingOptions(temperature=1.0, seed=seed))
        generation = vl.generate(prompt_state.fork(), options).run()
        document = json.loads(generation.text)
        assert set(document) == {"label", "count", "box"}
        assert isinstance(document["label"], str) and len(document["label"]) <= 12
        assert 0 <= document["count"] <= 99
        assert len(document["box"]) == 4 and all(0 <= v <= 1000 for v in document["box"])


# -- saving, restarting, storing ------------------------------------------------------------


CONTINUE_SCRIPT = """
import json, sys
from pathlib import Path
from edged.engine.engine import Engine, GenerationOptions
from edged.engine.persist import load_state
engine = Engine(Path(sys.argv[1]))
state = load_state(Path(sys.argv[2]), engine.fingerprint, engine.arithmetic)
engine.extend_prompt(state, sys.argv[3])
print(json.dumps(engine.generate(state, GenerationOptions(max_tokens=12)).run().tokens))
"""


def test_saved_session_continues_in_a_new_process_as_if_never_interrupted(vl: Engine, picture: Path, tmp_path: Path) -> None:
    follow_up = "<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n"
    session = vl.new_state()
    vl.extend_prompt(session, image_prompt(vl, "What is there?"), [picture])
    vl.generate(session, GenerationOptions(max_tokens=5)).run()
    path = tmp_path / "session.safetensors"
    save_state(session, path)

    uninterrupted = session.fork()
    vl.extend_prompt(uninterrupted, follow_up)
    expected = greedy(vl, uninterrupted, 12)
    result = subprocess.run([sys.executable, "-c", CONTINUE_SCRIPT, str(TINY / f"vl-{FLOAT}"), str(path), follow_up],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected


def test_state_file_of_another_model_is_refused(vl: Engine, tmp_path: Path) -> None:
    state = vl.new_state()
    vl.extend(state, vl.encode("Hello"))
    path = tmp_path / "state.safetensors"
    save_state(state, path)
    other = Engine(TINY / "vl-int4")
    with pytest.raises(StateFileError, match="saved by another model"):
        load_state(path, other.fingerprint, other.arithmetic)


def test_a_prefix_computed_under_other_arithmetic_is_read_again(text_fp32: Engine, tmp_path: Path) -> None:
    """A prefix saved by another onnxruntime or decoder graph (an upgrade, say) is not
    continued: its file is deleted, and the store reads it afresh; a file from before states
    recorded their arithmetic goes the same way. A conversation so saved goes on."""
    assert text_fp32.arithmetic.startswith(f"onnxruntime {ort.__version__}, CPUExecutionProvider, decoder ")
    system = text_fp32.encode("<|im_start|>system\nWatch the gate.<|im_end|>\n")
    state = text_fp32.new_state()
    text_fp32.extend(state, system)
    PrefixStore(tmp_path, text_fp32.fingerprint, text_fp32.arithmetic).put(system, state)
    saved = next((tmp_path / "prefixes").glob("*.safetensors"))
    with pytest.raises(ComputedElsewhere, match="continuing it could give other tokens") as refused:
        load_state(saved, text_fp32.fingerprint, "onnxruntime 9.9.9, CPUExecutionProvider, decoder as packaged")
    assert text_fp32.arithmetic in str(refused.value) and "onnxruntime 9.9.9" in str(refused.value)
    assert PrefixStore(tmp_path, text_fp32.fingerprint, "onnxruntime 9.9.9").get(system) is None
    assert not saved.exists() and not (tmp_path / "refused").exists()

    save_state(state, saved)
    metadata = read_metadata(saved)
    del metadata["arithmetic"]
    save_file(load_file(saved), saved, metadata)
    with pytest.raises(ComputedElsewhere, match="an older edged did not record"):
        load_state(saved, text_fp32.fingerprint, text_fp32.arithmetic)

    SessionStore(tmp_path, text_fp32.fingerprint, text_fp32.arithmetic, budget_bytes=0).put("s", state)
    went_on = SessionStore(tmp_path, text_fp32.fingerprint, "onnxruntime 9.9.9", budget_bytes=1 << 30).get("s")
    assert went_on is not None and went_on.tokens == system and went_on.arithmetic == text_fp32.arithmetic


def test_torn_or_damaged_state_files_are_refused(vl: Engine, tmp_path: Path) -> None:
    state = vl.new_state()
    vl.extend(state, vl.encode("Hello there"))
    path = tmp_path / "state.safetensors"
    size = save_state(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: size // 2])
    with pytest.raises(StateFileError, match="not a readable state file"):
        load_state(path, vl.fingerprint, vl.arithmetic)
    damaged = bytearray(data)
    damaged[-10] ^= 0xFF
    path.write_bytes(bytes(damaged))
    with pytest.raises(StateFileError, match="damaged"):
        load_state(path, vl.fingerprint, vl.arithmetic)


def test_session_store_never_exceeds_its_budget_and_spills_to_disk(text_fp32: Engine, tmp_path: Path) -> None:
    states = {}
    for n in range(6):
        state = text_fp32.new_state()
        text_fp32.extend(state, text_fp32.encode(f"Session number {n} " * (n + 1)))
        states[f"s{n}"] = state
    budget = states["s5"].nbytes * 2
    store = SessionStore(tmp_path, text_fp32.fingerprint, text_fp32.arithmetic, budget)
    for session, state in states.items():
        store.put(session, state)
        assert store.used_bytes <= budget
    assert len(store) < len(states)
    for session, state in states.items():  # spilled ones come back from disk, intact
        restored = store.get(session)
        assert restored.tokens == state.tokens
        np.testing.assert_array_equal(restored.logits, state.logits)
        assert store.used_bytes <= budget
    assert store.drop("s0") and store.get("s0") is None


def test_prefix_store_survives_a_restart(text_fp32: Engine, tmp_path: Path) -> None:
    system = text_fp32.encode("<|im_start|>system\nWatch the door.<|im_end|>\n")
    state = text_fp32.new_state()
    text_fp32.extend(state, system)
    PrefixStore(tmp_path, text_fp32.fingerprint, text_fp32.arithmetic).put(system, state)
    restored = PrefixStore(tmp_path, text_fp32.fingerprint, text_fp32.arithmetic).get(system)
    assert restored is not None and restored.tokens == system
    assert PrefixStore(tmp_path, text_fp32.fingerprint, text_fp32.arithmetic).get(system[:-1]) is None


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])  # on the processor's grid (read directly), and off it
def test_a_camera_frame_array_reads_as_the_same_picture_file(vl: Engine, tmp_path: Path, size) -> None:
    frame = (np.random.default_rng(9).random((*size, 3)) * 255).astype(np.uint8)
    path = write_png(tmp_path / "frame.png", frame)
    prompt = image_prompt(vl, "What is there?")
    from_file, from_array = vl.new_state(), vl.new_state()
    vl.extend_prompt(from_file, prompt, [path])
    vl.extend_prompt(from_array, prompt, [frame])
    np.testing.assert_array_equal(from_array.logits, from_file.logits)


@pytest.mark.parametrize("size", [(64, 64), (384, 512), (96, 160), (32, 1024)])
def test_a_frame_on_the_processors_grid_is_cut_into_patches_as_ort_genai_cuts_it(vl: Engine, size) -> None:
    from edged.engine.image_patches import PatchGrid
    from edged.images import encode_png

    rng = np.random.default_rng(size[0] * size[1])
    # two of one size: ORT GenAI pads the patches of pictures of different sizes to the largest's count
    frames = [(rng.random((*size, 3)) * 255).astype(np.uint8) for _ in range(2)]
    assert all(PatchGrid.of_package(vl.package).takes_as_is(frame) for frame in frames)
    prompt = image_prompt(vl, "What do both show?", images=2)
    direct = vl._process(prompt, frames)  # no PNG: the frames' own pixels
    reference = vl._image_processor()(prompt, [encode_png(frame) for frame in frames])
    assert direct.input_ids == reference.input_ids
    # A CUDA package's processor gives float16, which the engine casts its patches to.
    np.testing.assert_array_equal(direct.pixel_values.astype(reference.pixel_values.dtype), reference.pixel_values)
    np.testing.assert_array_equal(direct.image_grid_thw, reference.image_grid_thw)


def test_repetition_penalty_discourages_tokens_already_said(text_fp32: Engine) -> None:
    state = text_fp32.new_state()
    text_fp32.extend(state, text_fp32.encode(text_fp32.chat_prompt([{"role": "user", "content": QUESTION}])))
    plain = text_fp32.generate(state.fork(), GenerationOptions(max_tokens=32)).run().tokens
    penalised = text_fp32.generate(state.fork(), GenerationOptions(
        max_tokens=32, sampling=SamplingOptions(repetition_penalty=3.0))).run().tokens
    repeats = lambda tokens: len(tokens) - len(set(tokens))  # noqa: E731
    assert repeats(penalised) < repeats(plain)


RELEASE_SCRIPT = """
import numpy as np
from edged.engine.memory import release_free_memory

def rss_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:")) / 1024

# 100 MB in pieces small enough for the heap, as a run's activations are; the last one stays,
# so the freed pieces sit below it where glibc does not give them back by itself.
pieces = [np.ones(16_000, dtype=np.float32) for _ in range(1600)]
survivor = np.ones(16_000, dtype=np.float32)
del pieces
held = rss_mb()
assert release_free_memory()
print(held - rss_mb())
"""


def test_memory_freed_after_a_run_goes_back_to_the_system() -> None:
    result = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT], capture_output=True, text=True, check=True)
    assert float(result.stdout) > 80


MAPPED_MB = """
import ctypes

class MallocInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallocInfo

def mapped_mb():
    '''glibc's buffers with a mapping of their own, in MiB'''
    return mallinfo2().hblkhd / 2**20
"""

LARGE_BUFFERS_SCRIPT = MAPPED_MB + """
import sys
import numpy as np
from edged.engine.engine import Engine

if sys.argv[1] != "-":
    Engine(sys.argv[1])
# A big buffer freed, as after a frame's read: glibc then serves buffers up to its size from
# the heap, where one freed between buffers still held stays the process's.
big = np.ones(8 << 20, dtype=np.uint8)
del big
before = mapped_mb()
state = np.ones(1 << 20, dtype=np.uint8)  # a DeltaNet layer's state at 0.8B
held = mapped_mb()
del state
print(held - before, held - mapped_mb())
"""


def test_an_engine_gives_each_large_buffer_a_mapping_of_its_own_returned_when_freed() -> None:
    """States of 1 MiB and the vision encoder's activations (memory.allocate_large_buffers_apart):
    a state dropped between states kept is memory given back, not a hole in the heap."""
    def mapped_and_returned_mb(package: str) -> list[float]:
        result = subprocess.run([sys.executable, "-c", LARGE_BUFFERS_SCRIPT, package], capture_output=True,
                                text=True, check=True)
        return [float(figure) for figure in result.stdout.split()]

    assert mapped_and_returned_mb("-") == [0.0, 0.0]  # glibc's own threshold: from the heap
    mapped, returned = mapped_and_returned_mb(str(BUNDLED / "vl-int4"))
    assert mapped >= 1.0 and returned == mapped


ENCODER_MEMORY_SCRIPT = MAPPED_MB + """
import sys
import numpy as np
import onnxruntime as ort
from edged.engine.engine import Engine

engine = Engine(sys.argv[1], threads=2)
frame = engine._process("<|vision_start|><|image_pad|><|vision_end|>", [np.full((448, 448, 3), 90, np.uint8)])
side = 64  # a picture of 64 x 64 patches: activations of hundreds of MB, even for the tiny encoder
pixels = np.resize(frame.pixel_values, (side * side, frame.pixel_values.shape[1]))
grid = np.array([[1, side, side]], dtype=np.int64)
before = mapped_mb()
features = [engine._encode_images(pixels, grid) for _ in range(2)]
kept = mapped_mb() - before - sum(f.nbytes for f in features) / 2**20
plain = ort.InferenceSession(str(engine.package / engine._vision_file), providers=["CPUExecutionProvider"])
expected = plain.run(None, {"pixel_values": pixels, "image_grid_thw": grid})[0]
print(kept, all(np.array_equal(f, expected) for f in features))
"""


def test_the_vision_encoder_hands_back_its_activations_after_each_picture_and_gives_the_same_features() -> None:
    """Its calls reuse their activations' memory from an arena (memory.reuse_activations_within_each_run),
    which must shrink when each call ends: a daemon holds no picture's activations between frames."""
    result = subprocess.run([sys.executable, "-c", ENCODER_MEMORY_SCRIPT, str(BUNDLED / "vl-int4")],
                            capture_output=True, text=True, check=True)
    kept_mb, same_features = result.stdout.split()
    assert float(kept_mb) < 4.0  # the arena's first chunk (1 MiB) may stay; without shrinking, 480 MB do
    assert same_features == "True"


def test_a_decoder_whose_logits_are_not_a_matrix_product_is_refused_by_the_rewrite(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from edged.engine.graph import GraphError, rewritten_decoder

    graph = helper.make_graph(
        [helper.make_node("Identity", ["hidden"], ["logits"])], "decoder",
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "sequence_length", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "sequence_length", 8])],
    )
    onnx.save(helper.make_model(graph, ir_version=10), tmp_path / "model.onnx")
    with pytest.raises(GraphError, match="do not come from a matrix product"):
        rewritten_decoder(tmp_path / "model.onnx", last_logits=True)


def gated_norms_graph(path: Path, heads: int = 3, size: int = 8) -> None:
    """GatedRMSNorm as the ORT GenAI builder writes it (SiLU gate, the scale a weight), one
    with the sigmoid gate, and one whose scale is an input: a norm the rewrite cannot size,
    which it must leave alone. Random weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.random.default_rng(9).standard_normal(size).astype(np.float32), "norm.w")
    norm = lambda inputs, output, **extra: helper.make_node(  # noqa: E731
        "GatedRMSNorm", inputs, [output], domain="com.microsoft", name=output, **extra)
    rows = lambda name, width: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, "L", width])  # noqa: E731
    graph = helper.make_graph(
        [norm(["x", "norm.w", "gate"], "silu", epsilon=1e-6), norm(["x", "norm.w", "gate"], "sigmoid", activation="sigmoid"),
         norm(["x", "scale", "gate"], "unsized")],
        "norms", [rows("x", heads * size), rows("gate", heads * size),
                  helper.make_tensor_value_info("scale", TensorProto.FLOAT, [size])],
        [rows(name, heads * size) for name in ("silu", "sigmoid", "unsized")], [scale])
    onnx.save(helper.make_model(graph, ir_version=10,
                                opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]),
              path)


def test_the_cpu_rewrite_of_the_gated_norm_computes_what_the_kernel_computes(tmp_path: Path) -> None:
    """graph.py --cpu-ops on prompts of several lengths: the kernel's results, and the one
    norm it cannot rewrite left as it is."""
    import onnx

    from edged.engine.graph import rewritten_decoder

    gated_norms_graph(tmp_path / "model.onnx")
    rewritten = rewritten_decoder(tmp_path / "model.onnx", cpu_ops=True)
    assert [n.name for n in onnx.load_from_string(rewritten).graph.node if n.domain == "com.microsoft"] == ["unsized"]
    kernels = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(rewritten, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(10)
    for length in (5, 1, 64):
        feeds = {"x": rng.standard_normal((1, length, 24)).astype(np.float32) * 0.1,
                 "gate": rng.standard_normal((1, length, 24)).astype(np.float32) * 3,
                 "scale": rng.standard_normal(8).astype(np.float32)}
        for name, want, have in zip(("silu", "sigmoid", "unsized"), kernels.run(None, feeds), ours.run(None, feeds)):
            np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_cpu_rewrite_of_the_short_convolution_keeps_the_kernels_output_and_state(tmp_path: Path) -> None:
    """graph.py --cpu-ops on CausalConvWithState as the builder writes it (SiLU, a past state):
    the kernel's outputs on prompts and decode steps, the state handed on bit for bit, and a
    convolution with no activation left as it is."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edged.engine.graph import rewritten_decoder

    channels, taps = 12, 4
    rng = np.random.default_rng(11)
    weights = [numpy_helper.from_array(rng.standard_normal((channels, 1, taps)).astype(np.float32), "conv.w"),
               numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "conv.b")]
    conv = lambda output, activation: helper.make_node(  # noqa: E731
        "CausalConvWithState", ["x", "conv.w", "conv.b", "past"], [output, f"{output}.present"],
        domain="com.microsoft", name=output, ndim=1, activation=activation)
    states = [helper.make_tensor_value_info(f"{name}.present", TensorProto.FLOAT, [1, channels, taps - 1])
              for name in ("silu", "plain")]
    graph = helper.make_graph(
        [conv("silu", "silu"), conv("plain", "none")], "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, "L"]),
         helper.make_tensor_value_info("past", TensorProto.FLOAT, [1, channels, taps - 1])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, "L"]) for name in ("silu", "plain")]
        + states, weights)
    onnx.save(helper.make_model(graph, ir_version=10,
                                opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]),
              tmp_path / "model.onnx")
    rewritten = rewritten_decoder(tmp_path / "model.onnx", cpu_ops=True)
    activations = {n.name: helper.get_attribute_value(next(a for a in n.attribute if a.name == "activation"))
                   for n in onnx.load_from_string(rewritten).graph.node if n.op_type == "CausalConvWithState"}
    assert activations == {"silu": b"none", "plain": b"none"}
    kernels = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ours = ort.InferenceSession(rewritten, providers=["CPUExecutionProvider"])
    for length in (5, 1, 64):
        feeds = {"x": rng.standard_normal((1, channels, length)).astype(np.float32) * 2,
                 "past": rng.standard_normal((1, channels, taps - 1)).astype(np.float32)}
        want, have = kernels.run(None, feeds), ours.run(None, feeds)
        np.testing.assert_allclose(have[0], want[0], rtol=1e-5, atol=1e-6)  # another logistic: the last bits
        for index in (1, 2, 3):  # the plain convolution, and both states handed on, bit for bit
            assert np.array_equal(have[index], want[index])


@pytest.mark.parametrize("size", [(387, 517), (120, 160), (20, 30), (1080, 1920)])
def test_a_frame_is_fit_to_the_size_the_processor_would_give_it(vl: Engine, size) -> None:
    from edged.engine.image_patches import PatchGrid
    from edged.images import encode_png

    frame = (np.random.default_rng(size[0]).random((*size, 3)) * 255).astype(np.uint8)
    fitted = vl.fit_to_grid(frame)
    assert PatchGrid.of_package(vl.package).takes_as_is(fitted)
    chosen = vl._image_processor()(image_prompt(vl, "Hi"), [encode_png(frame)]).image_grid_thw[0]
    assert tuple(fitted.shape[:2]) == (chosen[1] * 16, chosen[2] * 16)  # the processor's own choice of size


def check_the_token_table_against_its_session(model: Path, float_type: type[np.floating]) -> TokenTable:
    table = load_token_table(model)
    assert table.layout.float_type == np.dtype(float_type).name
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    every_token = np.arange(table.layout.vocabulary, dtype=np.int64)
    ids = np.stack([every_token, every_token[::-1]])  # a batch of two rows, each with one image pad
    features = np.random.default_rng(5).standard_normal((2, table.layout.hidden)).astype(float_type)
    expected = session.run(None, {"input_ids": ids, "image_features": features})[0]
    embeds = table.embed(ids, features)
    assert embeds.dtype == expected.dtype == float_type
    assert np.array_equal(embeds.view(np.uint8), expected.view(np.uint8))
    return table


def test_the_token_table_gives_the_embedding_sessions_rows_bit_for_bit() -> None:
    table = check_the_token_table_against_its_session(BUNDLED / "vl-int4" / "embedding" / "model.onnx", np.float32)
    with pytest.raises(EngineError, match="4 image pads for 2 rows"):  # where the session fails too
        table.embed(np.array([[table.layout.image_token_id] * 4]), np.zeros((2, table.layout.hidden), np.float32))
    with pytest.raises(EngineError, match="outside the vocabulary"):
        table.embed(np.array([[table.layout.vocabulary]]))


@pytest.mark.build
def test_a_cuda_packages_float16_token_table_gives_its_sessions_rows_bit_for_bit(cuda_packages: Path) -> None:
    """Read from the table, a decode step on a GPU runs no embedding session, and the table's
    weights (136 MiB at 0.8B) take no device memory, which a Jetson shares with the system."""
    check_the_token_table_against_its_session(cuda_packages / "vl-int4" / "embedding" / "model.onnx", np.float16)


def test_an_embedding_that_is_not_an_int4_table_runs_as_its_session() -> None:
    with pytest.raises(TokenTableRefused, match="int4 table"):
        load_token_table(BUNDLED / "vl-fp32" / "embedding" / "model.onnx")
    engine = Engine(BUNDLED / "vl-fp32")
    assert engine.embedding is not None and "int4 table" in engine.token_table_refused


MAPPING_SCRIPT = """
import sys
import numpy as np
from edged.engine.engine import Engine, GenerationOptions

engine = Engine(sys.argv[1])
state = engine.new_state()
frame = (np.random.default_rng(1).random((64, 64, 3)) * 255).astype(np.uint8)
engine.extend_prompt(state, engine.chat_prompt([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]), [frame])
engine.generate(state, GenerationOptions(max_tokens=16)).run()
print(sum(sys.argv[2] in line for line in open("/proc/self/maps")))
"""


def test_an_engine_that_reads_a_frame_and_answers_never_maps_the_token_table() -> None:
    """Its pages would count in the daemon's RSS (token_table.py)."""
    table = BUNDLED / "vl-int4" / "embedding" / "model.onnx.data"
    result = subprocess.run([sys.executable, "-c", MAPPING_SCRIPT, str(BUNDLED / "vl-int4"), str(table.resolve())],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "0"


FILE_PAGES_SCRIPT = """
import ctypes, mmap, sys
from pathlib import Path
from edged.engine.memory import release_file_pages

folder = Path(sys.argv[1])
def resident_kib(mapped):
    start = f"{mapped:x}-"
    lines = Path("/proc/self/smaps").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(start))
    return next(int(line.split()[1]) for line in lines[at:] if line.startswith("Rss:"))

maps = {}
for name in ("read", "written"):
    with open(folder / name, "rb") as file:
        maps[name] = mmap.mmap(file.fileno(), 0, prot=mmap.PROT_READ | mmap.PROT_WRITE, flags=mmap.MAP_PRIVATE)
assert sum(maps["read"][::4096]) == 0  # read: every page resident
maps["written"][:4096] = b"x" * 4096  # one page written: this mapping is private memory now
sum(maps["written"][::4096])
address = {name: ctypes.addressof(ctypes.c_char.from_buffer(mapped)) for name, mapped in maps.items()}
before = {name: resident_kib(address[name]) for name in maps}
released = release_file_pages(folder)
after = {name: resident_kib(address[name]) for name in maps}
print(released, before["read"], after["read"], before["written"], after["written"],
      maps["read"][:3] == bytes(3), bytes(maps["written"][:3]))
"""


def test_file_pages_read_once_are_released_and_written_ones_kept(tmp_path: Path) -> None:
    (tmp_path / "read").write_bytes(bytes(8 << 20))
    (tmp_path / "written").write_bytes(bytes(8 << 20))
    result = subprocess.run([sys.executable, "-c", FILE_PAGES_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                            check=True)
    released, read_before, read_after, written_before, written_after, read_intact, written = result.stdout.split()
    assert int(read_before) >= 8 << 10 and int(read_after) == 0  # released, and reads as before
    assert read_intact == "True"
    assert int(released) == 8
    assert int(written_after) == int(written_before) >= 8 << 10  # a mapping with a written page is left alone
    assert written == "b'xxx'"


HUGE_PAGES_SCRIPT = """
import ctypes, json, mmap, sys
from pathlib import Path
from edged.engine.memory import weights_on_huge_pages

PAGE, MIB = mmap.PAGESIZE, 1 << 20
libc = ctypes.CDLL(None)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
# [guard | weights, 10 MiB, all written | guard | sparse, 8 MiB, one page written | guard]: the guards
# keep the kernel from merging either with its neighbours or with each other
sizes = [PAGE, 10 * MIB, PAGE, 8 * MIB, PAGE]
region = mmap.mmap(-1, sum(sizes), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
base = ctypes.addressof(ctypes.c_char.from_buffer(region))
offsets = [sum(sizes[:i]) for i in range(len(sizes))]
for i in (0, 2, 4):
    assert libc.mprotect(base + offsets[i], sizes[i], 0) == 0  # PROT_NONE
weights, sparse = offsets[1], offsets[3]
pattern = bytes(range(251)) * (sizes[1] // 251) + bytes(sizes[1] % 251)
region[weights:weights + sizes[1]] = pattern
region[sparse] = 1

def smaps_kib(offset, size):
    # [Rss, AnonHugePages] of the mappings from base + offset on for size bytes: madvise
    # splits a mapping where its advice changes
    totals, inside = [0, 0], False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and ":" not in head[0]:
            inside = base + offset <= int(head[0].split("-")[0], 16) < base + offset + size
        elif inside and head[0] in ("Rss:", "AnonHugePages:"):
            totals[head[0] == "AnonHugePages:"] += int(head[1])
    return totals

before = [smaps_kib(weights, sizes[1]), smaps_kib(sparse, sizes[3])]
moved = weights_on_huge_pages(Path(sys.argv[1]))
after = [smaps_kib(weights, sizes[1]), smaps_kib(sparse, sizes[3])]
again = weights_on_huge_pages(Path(sys.argv[1]))
print(json.dumps([moved, again, before, after, region[weights:weights + sizes[1]] == pattern]))
"""


def _huge_pages_run(thp: Path) -> list:
    """MiB moved, MiB moved by a second call, then [Rss, AnonHugePages] in KiB of the written and
    the sparse mapping before and after, and whether the written one reads as it was written."""
    result = subprocess.run([sys.executable, "-c", HUGE_PAGES_SCRIPT, str(thp)], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout)


def test_loaded_weights_move_onto_huge_pages_and_nothing_else_does(tmp_path: Path) -> None:
    """Needs Linux 6.1 or later with transparent huge pages not ``never`` (CI's machines):
    memory.weights_on_huge_pages takes a fully resident anonymous mapping onto huge pages,
    its contents and RSS unchanged, and leaves a mostly unused one (a thread's stack) alone."""
    thp = Path("/sys/kernel/mm/transparent_hugepage")
    assert "[never]" not in (thp / "enabled").read_text(), "this test needs transparent huge pages"
    huge_kib = int((thp / "hpage_pmd_size").read_text()) >> 10
    moved, again, before, after, intact = _huge_pages_run(thp)
    (weights_rss, weights_huge), (sparse_rss, sparse_huge) = after
    assert intact
    assert weights_huge >= 10 * 1024 - huge_kib  # every whole huge page inside the 10 MiB
    assert moved >= weights_huge >> 10 and again == 0  # the interpreter has resident mappings too
    assert weights_rss == before[0][0] == 10 * 1024  # nothing added to RSS
    assert (sparse_rss, sparse_huge) == (before[1][0], 0)

    never = tmp_path / "thp"
    never.mkdir()
    (never / "enabled").write_text("always madvise [never]\n")
    (never / "hpage_pmd_size").write_text(f"{huge_kib << 10}\n")
    moved, again, before, after, intact = _huge_pages_run(never)
    assert moved == 0 and after == before and intact


def test_stop_runs_ends_reads_with_cancelled_and_leaves_text_and_other_engines_working(picture: Path) -> None:
    """A stopping daemon tells its engine to stop runs: the vision encoder is one call with no
    piece to stop between (on a slow board or under emulation, longer than the stop may take),
    and a thread still inside it as the interpreter exits aborts the process."""
    from edged.engine.errors import Cancelled

    stopping, other = Engine(TINY / "vl-int4"), Engine(TINY / "vl-int4")
    stopping.stop_runs()
    with pytest.raises(Cancelled):
        stopping.extend_prompt(stopping.new_state(), image_prompt(stopping, "Hi"), [picture])
    assert stopping.counters.images_encoded == 0
    text = stopping.new_state()
    stopping.extend_prompt(text, "Hello")  # what is left to do as it stops (saving sessions) still runs
    assert len(text.tokens) > 0
    read = other.new_state()
    other.extend_prompt(read, image_prompt(other, "Hi"), [picture])
    assert other.counters.images_encoded == 1
