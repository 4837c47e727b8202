"""Tiny random models and data, made in seconds: for the tests and for ``sensorium compare --smoke``.

A random LM with a word-level tokenizer over a few words, a random ViT, and squares of a few colours
with questions or captions about them exercise every path of training, evaluation and generation
without downloading anything. Each builder seeds torch itself, so the same call makes the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    PhiConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    ViTConfig,
    ViTModel,
)

from .data import Example

WORDS = ("question answer what is the shape color there a an in image yes no red green blue circle "
         "triangle rectangle does contain not of how many").split()
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# A large initialisation makes a random LM sensitive to its inputs, so an injected token that went
# missing changes the generated words.
_LARGE_INIT = 0.3
# Architecture -> (config class, tiny shape): four layers, width 32, the architecture's own quirks kept.
TINY_SHAPES: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    "llama": (LlamaConfig, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=128, initializer_range=_LARGE_INIT)),
    "opt": (OPTConfig, dict(hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4,
                            word_embed_proj_dim=32, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                            pad_token_id=0, init_std=_LARGE_INIT)),
    # OPT-350m's shape: narrower embeddings projected into the layers, post-norm.
    "opt_proj": (OPTConfig, dict(hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4,
                                 word_embed_proj_dim=16, do_layer_norm_before=False, max_position_embeddings=128,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=0, init_std=_LARGE_INIT)),
    "gpt2": (GPT2Config, dict(n_embd=32, n_layer=4, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2,
                              initializer_range=_LARGE_INIT)),
    "qwen2": (Qwen2Config, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                num_key_value_heads=2, max_position_embeddings=128, initializer_range=_LARGE_INIT)),
    "gpt_neox": (GPTNeoXConfig, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                     num_attention_heads=4, max_position_embeddings=128,
                                     initializer_range=_LARGE_INIT)),
    "phi": (PhiConfig, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                            max_position_embeddings=128, initializer_range=_LARGE_INIT)),
    "gemma3": (Gemma3TextConfig, dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      max_position_embeddings=128, initializer_range=_LARGE_INIT, sliding_window=8)),
}
# The tiny ViT: 32-pixel images in 16 patches.
TINY_VIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=32,
                patch_size=8)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}


def _byte_level_bpe(words: Sequence[str]) -> Tokenizer:
    """A tiny byte-level BPE: transformers loads Qwen2 folders with its own byte-level tokenizer class."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([" ".join(words) + " : ?"], trainer)
    return core


def make_tokenizer(with_bos: bool, byte_level: bool = False, words: Sequence[str] = WORDS) -> PreTrainedTokenizerFast:
    """A tokenizer of ``words`` (one token each, unless byte-level), ``:`` and ``?``; ``with_bos`` prepends <s>."""
    if byte_level:
        core = _byte_level_bpe(words)
    else:
        vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, ":", "?", *words])}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    if with_bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_config(arch: str, vocab: int, **shape: Any) -> PretrainedConfig:
    """The tiny configuration of an architecture (see TINY_SHAPES), with ``shape`` written over it."""
    kind, tiny = TINY_SHAPES[arch]
    return kind(vocab_size=vocab, **{**tiny, **shape})


def save_tiny_lm(folder: Path, arch: str = "llama", words: Sequence[str] = WORDS, **shape: Any) -> str:
    """A random causal LM of ``arch`` and its tokenizer, saved in ``folder`` as a Hugging Face model; the folder.

    OPT tokenizers prepend <s> as OPT's do, and Qwen2 gets a byte-level tokenizer, the class transformers
    gives Qwen2 folders.
    """
    tokenizer = make_tokenizer(with_bos=arch.startswith("opt"), byte_level=arch == "qwen2", words=words)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer), **shape), trust_remote_code=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def save_tiny_vit(folder: Path, **shape: Any) -> str:
    """A random ViT image encoder (TINY_VIT, with ``shape`` written over it) saved in ``folder``; the folder."""
    torch.manual_seed(0)
    ViTModel(ViTConfig(**{**TINY_VIT, **shape}), add_pooling_layer=False).save_pretrained(folder)
    return str(folder)


def colour_squares(folder: Path, task: str) -> tuple[list[Example], list[Example]]:
    """(training, test): squares of the four COLOURS at three sizes on white 32-pixel images, written to
    ``folder``; each asks the square's colour, or for a caption task is described by a caption naming it.
    The middle size is the test set, so that no test image is trained on."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for name, rgb in COLOURS.items():
        for size in (8, 16, 24):
            image = Image.new("RGB", (32, 32), (255, 255, 255))
            image.paste(rgb, (4, 4, 4 + size, 4 + size))
            path = folder / f"{name}-{size}.png"
            image.save(path)
            if task == "caption":
                words = f"a {'small' if size < 16 else 'large'} {name} square"
                examples.append(Example(str(path), "", [words], "caption", path.stem))
            else:
                examples.append(Example(str(path), "what color is the shape ?", [name], "other", path.stem))
    test = [e for e in examples if e.media.endswith("-16.png")]
    return [e for e in examples if e not in test], test
