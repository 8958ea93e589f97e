"""The model recipe is right: its packages compute what transformers computes on the same
checkpoint, and the committed tiny model is exactly what the recipe builds.

Needs the build extra (torch, transformers, mobius-onnx), which CI installs; marked `build`, so
only a run on an interpreter PyPI serves no torch for leaves them out (.ci/run runs them on the other)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import onnxruntime_genai as og
import pytest

from conftest import TINY

from edged.images import write_png

pytestmark = pytest.mark.build

PROMPT = "Is there a person at the door?"


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint and its packages, built from scratch by the recipe."""
    from edged.recipe.build import build_random_packages

    out = tmp_path_factory.mktemp("tiny")
    build_random_packages(out, "tiny", progress=lambda _: None, keep_checkpoint=True)
    return out


@pytest.fixture(scope="module")
def reference(rebuilt: Path):
    import torch
    from transformers import Qwen3_5ForConditionalGeneration

    return Qwen3_5ForConditionalGeneration.from_pretrained(rebuilt / "checkpoint", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rgb = (np.random.default_rng(7).random((64, 96, 3)) * 255).astype(np.uint8)
    return write_png(tmp_path_factory.mktemp("img") / "picture.png", rgb)


def chat(tokenizer: og.Tokenizer, content) -> str:
    return tokenizer.apply_chat_template(json.dumps([{"role": "user", "content": content}]), add_generation_prompt=True)


def og_greedy(package: Path, max_new: int = 24, image: Path | None = None) -> tuple[list[int], list[int], np.ndarray]:
    """Prompt ids, greedy tokens and the logits before each token, through og.Generator."""
    model = og.Model(str(package))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    multimodal = (package / "embedding").is_dir()
    if image is None and multimodal:
        inputs = model.create_multimodal_processor()(chat(tokenizer, PROMPT), images=None)
        ids = [int(i) for i in inputs["input_ids"].as_numpy()[0]]
        params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
        generator = og.Generator(model, params)
        generator.set_inputs(inputs)
    elif image is None:
        ids = [int(i) for i in tokenizer.encode(chat(tokenizer, PROMPT))]
        params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
    else:
        processor = model.create_multimodal_processor()
        inputs = processor(chat(tokenizer, [{"type": "image"}, {"type": "text", "text": "What is there?"}]),
                           images=og.Images.open(str(image)))
        ids = [int(i) for i in inputs["input_ids"].as_numpy()[0]]
        params.set_search_options(max_length=len(ids) + max_new, do_sample=False)
        generator = og.Generator(model, params)
        generator.set_inputs(inputs)
    tokens, logits = [], []
    while not generator.is_done():
        logits.append(generator.get_logits()[0, -1].copy())
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return ids, tokens, np.stack(logits)


def test_text_fp32_gives_transformers_tokens_and_logits(rebuilt: Path, reference) -> None:
    import torch

    ids, tokens, logits = og_greedy(rebuilt / "text-fp32", max_new=32)
    prompt = torch.tensor([ids])
    no_images = torch.zeros_like(prompt, dtype=torch.int32)
    with torch.no_grad():
        generated = reference.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                                       mm_token_type_ids=no_images, max_new_tokens=len(tokens), do_sample=False)
        assert generated[0, len(ids):].tolist() == tokens
        full = torch.tensor([ids + tokens[:-1]])
        expected = reference(input_ids=full, mm_token_type_ids=torch.zeros_like(full, dtype=torch.int32)).logits[0]
    assert len(set(tokens)) > len(tokens) // 3, "greedy decoding should not repeat one token"
    np.testing.assert_allclose(logits, expected[len(ids) - 1:].numpy(), atol=1e-3, rtol=0)


def test_vision_encoder_and_embedding_match_transformers(rebuilt: Path, reference, picture: Path) -> None:
    import torch

    package = rebuilt / "vl-fp32"
    model = og.Model(str(package))
    tokenizer = og.Tokenizer(model)
    inputs = model.create_multimodal_processor()(
        chat(tokenizer, [{"type": "image"}, {"type": "text", "text": "What is there?"}]),
        images=og.Images.open(str(picture)),
    )
    pixels, grid = inputs["pixel_values"].as_numpy(), inputs["image_grid_thw"].as_numpy()
    ids = inputs["input_ids"].as_numpy().astype(np.int64)
    assert grid.tolist() == [[1, 4, 6]]  # 64x96 at patch 16: 4x6 patches, merged 2x2 into 6 tokens

    vision = ort.InferenceSession(str(package / "vision_encoder/model.onnx"))
    features = vision.run(None, {"pixel_values": pixels, "image_grid_thw": grid})[0]
    embedding = ort.InferenceSession(str(package / "embedding/model.onnx"))
    embeds = embedding.run(None, {"input_ids": ids, "image_features": features})[0]

    with torch.no_grad():
        expected_features = reference.model.get_image_features(torch.from_numpy(pixels), torch.from_numpy(grid)).pooler_output
        expected_features = torch.cat(list(expected_features)) if isinstance(expected_features, (list, tuple)) else expected_features
        tokens = torch.from_numpy(ids)
        expected_embeds = reference.model.get_input_embeddings()(tokens)
        image_positions = (tokens == reference.config.image_token_id).unsqueeze(-1).expand_as(expected_embeds)
        expected_embeds = expected_embeds.masked_scatter(image_positions, expected_features)
    assert int((tokens == reference.config.image_token_id).sum()) == features.shape[0] == 6
    np.testing.assert_allclose(features, expected_features.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(embeds, expected_embeds.numpy(), atol=1e-4, rtol=0)


def test_int4_package_loads_and_generates(rebuilt: Path) -> None:
    _, tokens, logits = og_greedy(rebuilt / "text-int4", max_new=16)
    assert len(tokens) >= 1
    assert np.isfinite(logits).all()


@pytest.mark.parametrize("package", ["text-fp32", "text-int4", "vl-fp32", "vl-int4", "text-int4-b64"])
def test_committed_tiny_package_is_what_the_recipe_builds(rebuilt: Path, picture: Path, package: str) -> None:
    image = picture if package.startswith("vl") else None
    assert og_greedy(TINY / package, image=image)[1] == og_greedy(rebuilt / package, image=image)[1]
    committed = json.loads((TINY / package / "edged-model.json").read_text())
    fresh = json.loads((rebuilt / package / "edged-model.json").read_text())
    assert committed["fingerprint"] == fresh["fingerprint"], (
        "edged/models/tiny is stale: rebuild it with `edged models build --tiny --out edged/models/tiny`"
    )


def test_decoder_computes_last_position_logits_unless_asked_for_all(rebuilt: Path, tmp_path: Path) -> None:
    from edged.recipe.build import BuildOptions, build_package

    def logits_shape(package: Path) -> list:
        session = ort.InferenceSession(str(package / "model.onnx"))
        return next(o.shape for o in session.get_outputs() if o.name == "logits")

    every = build_package(rebuilt / "checkpoint", tmp_path / "all", BuildOptions(precision="fp32", text_only=True, all_logits=True),
                          progress=lambda _: None)
    assert every.lm_head == "all"
    assert logits_shape(tmp_path / "all")[1] == "sequence_length"
    assert json.loads((rebuilt / "text-fp32/edged-model.json").read_text())["lm_head"] == "last"
    assert logits_shape(rebuilt / "text-fp32")[1] == 1

    # The engine applies the lm_head to the last position of either kind of package, and
    # gives og.Generator's tokens and logits on the one og runs with logits everywhere.
    from edged.engine.engine import Engine

    ids, og_tokens, og_logits = og_greedy(tmp_path / "all")
    for package in (tmp_path / "all", rebuilt / "text-fp32"):
        engine = Engine(package)
        assert next(o.shape for o in engine.decoder.get_outputs() if o.name == "logits")[1] == 1
        state = engine.new_state()
        tokens, logits, current = [], [], engine.extend(state, ids)
        for _ in og_tokens:
            logits.append(current.copy())
            tokens.append(int(np.argmax(current)))
            current = engine.extend(state, tokens[-1:])
        assert tokens == og_tokens
        np.testing.assert_allclose(np.stack(logits), og_logits, atol=1e-4, rtol=0)


def test_int4_multimodal_package_embeds_text_exactly_as_the_text_package(rebuilt: Path) -> None:
    # Its embedding shares the decoder's int4 token table rather than a float32 copy 8x larger.
    text_ids, text_tokens, text_logits = og_greedy(rebuilt / "text-int4")
    vl_ids, vl_tokens, vl_logits = og_greedy(rebuilt / "vl-int4")
    assert vl_ids == text_ids
    assert vl_tokens == text_tokens
    np.testing.assert_allclose(vl_logits, text_logits, atol=1e-5, rtol=0)
    table = (rebuilt / "vl-int4/embedding/model.onnx.data").stat().st_size
    assert table < (rebuilt / "vl-fp32/embedding/model.onnx.data").stat().st_size / 4


def test_int4_weights_in_larger_blocks_build_a_smaller_package_that_reads_text_and_pictures(
        rebuilt: Path, tmp_path: Path) -> None:
    """`--block-size 64`: every int4 matrix, the token table the embedding shares included,
    keeps one scale per 64 weights instead of 32, and the manifest says so."""
    import onnx

    from edged.engine.engine import Engine, GenerationOptions
    from edged.engine.prompt_format import ANSWER, USER_IMAGE
    from edged.recipe.build import BuildOptions, build_package

    def blocks(model: Path) -> set[tuple[str, int]]:
        graph = onnx.load(str(model), load_external_data=False).graph
        return {(node.op_type, onnx.helper.get_attribute_value(attribute)) for node in graph.node
                for attribute in node.attribute if attribute.name == "block_size"}

    built = {kind: build_package(rebuilt / "checkpoint", tmp_path / kind, BuildOptions(text_only=kind == "text",
                                                                                     block_size=64),
                                 progress=lambda _: None) for kind in ("text", "vl")}
    assert built["vl"].block_size == built["text"].block_size == 64
    assert json.loads((rebuilt / "vl-int4/edged-model.json").read_text())["block_size"] == 32
    assert json.loads((rebuilt / "vl-fp32/edged-model.json").read_text())["block_size"] is None
    assert blocks(tmp_path / "vl/decoder/model.onnx") == {("MatMulNBits", 64)}
    assert blocks(tmp_path / "vl/embedding/model.onnx") == {("GatherBlockQuantized", 64)}
    assert blocks(rebuilt / "vl-int4/decoder/model.onnx") == {("MatMulNBits", 32)}
    decoder_bytes = [(package / "decoder/model.onnx.data").stat().st_size for package in (tmp_path / "vl", rebuilt / "vl-int4")]
    assert decoder_bytes[0] < decoder_bytes[1]

    # The embedding reads the decoder's table in its blocks: the text it embeds is the text package's.
    text_ids, text_tokens, text_logits = og_greedy(tmp_path / "text")
    vl_ids, vl_tokens, vl_logits = og_greedy(tmp_path / "vl")
    assert (vl_ids, vl_tokens) == (text_ids, text_tokens)
    np.testing.assert_allclose(vl_logits, text_logits, atol=1e-5, rtol=0)
    # And the engine reads a picture with it, and answers.
    engine = Engine(tmp_path / "vl")
    state = engine.new_state()
    rgb = (np.random.default_rng(7).random((64, 96, 3)) * 255).astype(np.uint8)
    engine.extend_prompt(state, USER_IMAGE + "What is there?" + ANSWER, [engine.fit_to_grid(rgb)])
    assert len(engine.generate(state, GenerationOptions(max_tokens=4)).run().tokens) >= 1


@pytest.mark.parametrize(("size", "billions"), [("0.8b", 0.8), ("2b", 2.0), ("4b", 4.0)])
def test_a_random_benchmark_model_is_as_large_as_the_model_it_is_named_after(size: str, billions: float) -> None:
    # The benchmark sizes stand in for the published checkpoints in every figure of
    # docs/engine.md: their parameter count (text and vision) must be the named one, within
    # the rounding of the name. Counted on the meta device: nothing is allocated.
    import torch
    from transformers import Qwen3_5ForConditionalGeneration

    from edged.recipe.checkpoint import build_tokenizer, checkpoint_config

    with torch.device("meta"):
        model = Qwen3_5ForConditionalGeneration(checkpoint_config(size, build_tokenizer()))
    parameters = sum(p.numel() for p in model.parameters()) / 1e9
    assert billions <= parameters < billions * 1.15, parameters
