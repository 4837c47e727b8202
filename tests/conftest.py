"""Shared fixtures: tiny randomly initialised models and a tiny tokenizer, made in the test itself."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
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
    PreTrainedTokenizerFast,
    Qwen2Config,
    ViTConfig,
    ViTModel,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Converted packaged weights and feature caches of a test run never touch the user's cache.
os.environ["SENSORIUM_CACHE"] = tempfile.mkdtemp(prefix="sensorium-test-cache-")

WORDS = ("question answer what is the shape color there a an in image yes no red green blue circle "
         "triangle rectangle does contain not of how many").split()
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]


def _byte_level_bpe() -> Tokenizer:
    """A tiny byte-level BPE: transformers loads Qwen2 folders with its own byte-level tokenizer class."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([" ".join(WORDS) + " : ?"], trainer)
    return core


def make_tokenizer(with_bos: bool, byte_level: bool = False) -> PreTrainedTokenizerFast:
    if byte_level:
        core = _byte_level_bpe()
    else:
        vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, ":", "?", *WORDS])}
        core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    if with_bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def tiny_config(arch: str, vocab: int):
    if arch == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           initializer_range=0.3)
    if arch == "opt":
        return OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4,
                         word_embed_proj_dim=32, max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, init_std=0.3)
    if arch == "opt_proj":  # OPT-350m's shape: narrower embeddings projected into the layers, post-norm
        return OPTConfig(vocab_size=vocab, hidden_size=32, ffn_dim=64, num_hidden_layers=4, num_attention_heads=4,
                         word_embed_proj_dim=16, do_layer_norm_before=False, max_position_embeddings=128,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, init_std=0.3)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=128, bos_token_id=1,
                          eos_token_id=2, initializer_range=0.3)
    if arch == "qwen2":
        return Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           initializer_range=0.3)
    if arch == "gpt_neox":
        return GPTNeoXConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, max_position_embeddings=128, initializer_range=0.3)
    if arch == "phi":
        return PhiConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=128, initializer_range=0.3)
    if arch == "gemma3":
        return Gemma3TextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                max_position_embeddings=128, initializer_range=0.3, sliding_window=8)
    raise ValueError(arch)


def read_split(out: Path, kind: str, split: str) -> dict:
    """A generated benchmark's ``{kind}_{split}.json`` (captions, questions, annotations or plans)."""
    return json.loads((out / f"{kind}_{split}.json").read_text())


def qa_by_media(out: Path, split: str) -> dict[int, list[tuple[str, str, str]]]:
    """A generated split's (question, answer, type) triples by media id, joined from its two VQA files."""
    answers = {a["question_id"]: a for a in read_split(out, "annotations", split)["annotations"]}
    joined: dict[int, list[tuple[str, str, str]]] = {}
    for q in read_split(out, "questions", split)["questions"]:
        a = answers[q["question_id"]]
        joined.setdefault(q["image_id"], []).append((q["question"], a["multiple_choice_answer"], a["answer_type"]))
    return joined


def file_bytes(folder: Path) -> dict[Path, bytes]:
    """Every file under a folder by its relative path: two folders are equal when their files are byte-identical."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from more threads, and on a busy machine spinning threads slow them 100-fold.

    The e-PALM reference outputs were recorded with one thread too: another split of a reduction may round
    differently.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lm_folder(tmp_path_factory):
    """tiny_lm_folder(arch) -> folder with a random causal LM and a word-level tokenizer.

    A large initialisation makes the random LM sensitive to its inputs, so an injected token that
    went missing would change the generated words.
    """
    made = {}

    def make(arch: str):
        if arch not in made:
            folder = tmp_path_factory.mktemp(f"lm-{arch}")
            tokenizer = make_tokenizer(with_bos=arch.startswith("opt"), byte_level=arch == "qwen2")
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tokenizer)))
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            made[arch] = folder
        return str(made[arch])

    return make


@pytest.fixture(scope="session")
def tiny_vit_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vit")
    torch.manual_seed(0)
    config = ViTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return str(folder)


def save_steered_adapter(config, seed: int, folder: Path) -> str:
    """Save a new adapter whose strong random connector and prompt make the media and the adapter visibly
    change the words; its folder."""
    from sensorium import PerceptualLM

    torch.manual_seed(seed)
    model = PerceptualLM(config)
    with torch.no_grad():
        model.connector.linear.weight.normal_(0, 2.0)
        model.prompt.normal_(0, 1.0)
    model.save_pretrained(folder)
    return str(folder)


def tiny_training_recipe(model: dict, manifest: Path, out: Path, max_new_tokens: int):
    """Two training steps on a JSONL manifest, evaluated on the same manifest."""
    from sensorium.recipe import Recipe

    return Recipe.from_dict({
        "model": model,
        "data": {"train": {"format": "jsonl", "path": str(manifest)},
                 "eval": {"format": "jsonl", "path": str(manifest)}},
        "training": {"batch_size": 2, "max_steps": 2, "warmup_steps": 1, "mixed_precision": "no",
                     "cache_workers": 0},
        "generation": {"max_new_tokens": max_new_tokens}, "out": str(out),
    })


@pytest.fixture(scope="session")
def tiny_adapter_folders(tiny_lm_folder, tiny_vit_folder, tmp_path_factory) -> dict[str, str]:
    """Two saved adapters over the same tiny LM and ViT: "shapes" answers questions, "captions" captions."""
    from sensorium import AdapterConfig

    folders = {}
    for seed, (name, task) in enumerate([("shapes", "vqa"), ("captions", "caption")], start=1):
        config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=3,
                               inject_layers=[1, 2, 3], task=task)
        folders[name] = save_steered_adapter(config, seed, tmp_path_factory.mktemp(f"adapter-{name}"))
    return folders


@pytest.fixture
def image(tmp_path) -> str:
    """A small blue PNG."""
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "blue.png")
    return str(tmp_path / "blue.png")


def one_line_error(capsys) -> str:
    """The CLI's error: the last line on stderr (progress bars may come before it), whole on that one line."""
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("sensorium: error: "), err
    return err


def save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, folder: Path, **settings) -> str:
    """An untrained adapter over the tiny Llama and ViT (2 blocks into layers 2 and 3), saved; its folder."""
    from sensorium import AdapterConfig, PerceptualLM

    config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=2, inject_layers=[2, 3],
                           **settings)
    PerceptualLM(config).save_pretrained(folder)
    return str(folder)
