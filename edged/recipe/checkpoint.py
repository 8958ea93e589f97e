"""Deterministic random Qwen3.5 checkpoints with a small tokenizer of their own.

``tiny`` is the test model (about 0.4 M parameters, text and vision); ``0.8b``, ``2b`` and
``4b`` have the published Qwen3.5 models' dimensions (text and vision tower), for
benchmarks. No hub is needed: the tokenizer is trained here on generated text, and the
weights are drawn from a seeded generator.

Two initialisation traps are avoided on purpose, or tests built on these models prove
nothing: transformers' default N(0, 0.02) with tied embeddings makes greedy decoding repeat
one token, so matrices are drawn with std 1/sqrt(fan_in) and embeddings with std 0.1; and
the default ``A_log`` makes every DeltaNet head forget within about one token, which would
hide a broken recurrent-state carry, so ``A_log = log U(0.001, 0.05)`` and ``dt_bias = -1``
make the heads remember. Needs the build extra (torch, transformers, tokenizers).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Literal

Size = Literal["tiny", "0.8b", "2b", "4b"]
SEED = 1234

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
ADDED_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]

# Qwen's pre-tokenizer split: contractions, words, single digits, punctuation runs, spaces.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML turns like Qwen3.5's; images as <|vision_start|><|image_pad|><|vision_end|>; the
# answer starts with an empty think block unless enable_thinking is set.
CHAT_TEMPLATE = """\
{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\\n' -}}
{%- if message['content'] is string -%}
{{- message['content'] -}}
{%- else -%}
{%- for part in message['content'] -%}
{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
{%- elif part['type'] == 'text' -%}{{- part['text'] -}}
{%- endif -%}
{%- endfor -%}
{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\\n' -}}
{%- if enable_thinking is defined and enable_thinking -%}{{- '<think>\\n' -}}
{%- else -%}{{- '<think>\\n\\n</think>\\n\\n' -}}
{%- endif -%}
{%- endif -%}
"""

_WORDS = """the a an is are was on in at by of to and or not yes no person people man woman child
dog cat car truck bike bus door window gate yard street road house room garage light dark red
green blue white black grey small large open closed standing sitting walking running parked
moving front back left right near far camera frame image picture scene there here what which
who where when how many one two three four five six seven eight nine ten zero describe answer
question rule event detect box label count see sees seen shows show looking look package
delivery table chair tree grass sky cloud rain snow night day morning evening time""".split()

# The published checkpoints' text_config (Qwen/Qwen3.5-0.8B, -2B, -4B): all tie the embeddings
# and share the rope settings and the 248,320-token vocabulary.
_ROPE = {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
         "mrope_section": [11, 11, 10], "mrope_interleaved": True}
TEXT_DIMENSIONS: dict[Size, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=64, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25,
                         "mrope_section": [3, 3, 2], "mrope_interleaved": True},
    ),
    "0.8b": dict(
        hidden_size=1024, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=8,
        num_key_value_heads=2, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=16,
        linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
        max_position_embeddings=262144, vocab_size=248320,
        rope_parameters=_ROPE,
    ),
    "2b": dict(
        hidden_size=2048, intermediate_size=6144, num_hidden_layers=24, num_attention_heads=8,
        num_key_value_heads=2, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=16,
        linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
        max_position_embeddings=262144, vocab_size=248320, rope_parameters=_ROPE,
    ),
    "4b": dict(
        hidden_size=2560, intermediate_size=9216, num_hidden_layers=32, num_attention_heads=16,
        num_key_value_heads=4, head_dim=256, linear_num_key_heads=16, linear_num_value_heads=32,
        linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
        max_position_embeddings=262144, vocab_size=248320, rope_parameters=_ROPE,
    ),
}
# The tiny tower is the smallest that exercises every vision op; the others are the published
# vision_config (2B and 4B share one tower, projected to their own hidden size).
VISION_DIMENSIONS: dict[Size, dict[str, Any]] = {
    "tiny": dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=2304),
    "0.8b": dict(depth=12, hidden_size=768, intermediate_size=3072, num_heads=12, num_position_embeddings=2304),
    "2b": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, num_position_embeddings=2304),
    "4b": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, num_position_embeddings=2304),
}
IMAGE_PROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "do_resize": True,
    "do_convert_rgb": True,
    # Small images stay small (tests use 64x96 pictures); 896x896 at most.
    "size": {"shortest_edge": 1024, "longest_edge": 802816},
}


def training_text(seed: int = SEED, sentences: int = 6000) -> list[str]:
    """About 270 KB of generated sentences, digits and JSON, always the same for a seed."""
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14)))
        line = words[0].upper() + words[1:] + rng.choice(".?!,:")
        if rng.random() < 0.2:
            line += f" {rng.randint(0, 9999)}"
        if rng.random() < 0.1:
            line = f'{{"label": "{rng.choice(_WORDS)}", "count": {rng.randint(0, 9)}, "box": [{rng.randint(0, 999)}, {rng.randint(0, 999)}]}}'
        lines.append(line)
    return lines


def build_tokenizer(seed: int = SEED) -> Any:
    """A byte-level BPE (Qwen's split, no normaliser) plus the Qwen special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(training_text(seed), trainer)
    tokenizer.add_special_tokens(SPECIAL_TOKENS)
    tokenizer.add_tokens(ADDED_TOKENS)
    return tokenizer


def checkpoint_config(size: Size, tokenizer: Any) -> Any:
    """The transformers config of a random checkpoint of ``size`` with ``tokenizer``'s ids."""
    from transformers import Qwen3_5Config

    token = tokenizer.token_to_id
    text = {"vocab_size": tokenizer.get_vocab_size(), **TEXT_DIMENSIONS[size]}
    text.update(tie_word_embeddings=True, eos_token_id=token("<|im_end|>"), pad_token_id=token("<|endoftext|>"))
    vision = {**VISION_DIMENSIONS[size], "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "out_hidden_size": text["hidden_size"]}
    config = Qwen3_5Config(
        text_config=text, vision_config=vision, tie_word_embeddings=True,
        image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"), vision_end_token_id=token("<|vision_end|>"),
    )
    config.architectures = ["Qwen3_5ForConditionalGeneration"]
    return config


def build_checkpoint(out: Path, size: Size = "tiny", seed: int = SEED) -> Path:
    """Write a Hugging Face checkpoint folder (config, weights, tokenizer) into ``out``."""
    import torch
    from transformers import Qwen3_5ForConditionalGeneration
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 4096, "add_prefix_space": False,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "errors": "replace", "clean_up_tokenization_spaces": False, "split_special_tokens": False,
        "chat_template": CHAT_TEMPLATE,
    }, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(IMAGE_PROCESSOR, indent=2))

    config = checkpoint_config(size, tokenizer)
    torch.manual_seed(seed)
    # The benchmark sizes are made in bfloat16, as the real checkpoints ship: the 4B in float32
    # would need 18 GB before the builder even starts. Values are drawn in float32 either way.
    dtype = torch.float32 if size == "tiny" else torch.bfloat16
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model = Qwen3_5ForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    _initialise(model, torch.Generator().manual_seed(seed))
    model.save_pretrained(out, safe_serialization=True)
    return out


def _initialise(model: Any, generator: Any) -> None:
    import torch

    def drawn(parameter: Any) -> Any:
        return torch.empty(parameter.shape, dtype=torch.float32)

    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("A_log"):
                parameter.copy_(torch.log(drawn(parameter).uniform_(0.001, 0.05, generator=generator)))
            elif name.endswith("dt_bias"):
                parameter.fill_(-1.0)
            elif "embed" in name and parameter.dim() == 2:
                parameter.copy_(drawn(parameter).normal_(0.0, 0.1, generator=generator))
            elif parameter.dim() >= 2:
                fan_in = parameter[0].numel()
                parameter.copy_(drawn(parameter).normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator))
