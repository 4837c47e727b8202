"""What a sense was trained to be asked: statistics of an adapter's training questions, by which a composed model
sends a question to the sense trained on questions like it.

Selecting the answer its own sense is surest of lets a confident answer of the wrong kind win: a sound adapter's
one-token digit outscores a picture adapter's colour or direction, whatever the question asks. The question
alone says which sense it needs, and every sense of a composition reads it through the same frozen LM. So
training records where its questions lie in that LM: each question's text alone (no media, no template, after
the LM's BOS) is embedded as the mean of its tokens' last hidden states, and the adapter keeps their centroid
and their spread (the root mean square distance from it). A question then goes to the sense whose centroid is
fewest spreads away; the spread puts a sense asked many kinds of question and one asked a single kind on one
scale. The last hidden states, not the input embeddings, because the LM has read the whole question by then:
"what color does the star turn?" and "how many times does it beep?" differ in more than their words.

The statistics are ``questions.safetensors`` beside the adapter's weights, written atomically and read back
through the same checks as the weights: bounded size, exact keys, shapes and dtypes, finite values, and a
one-line error naming the file.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from .config import QUESTIONS_NAME
from .errors import BadInputError
from .files import regular_file
from .lm import last_positions

QUESTION_SAMPLE = 4096  # questions embedded at most, a seeded sample: more would move the centroid little
EMBED_BATCH = 64
MAX_QUESTIONS_BYTES = 2**20  # a centroid of a few thousand floats and two scalars
MIN_SPREAD = 1e-6  # one question asked over and over has no spread: any other question is then far away


@dataclass(frozen=True)
class QuestionStats:
    """Where an adapter's training questions lie in its frozen LM: their ``centroid`` [width], their ``spread``
    (root mean square distance from the centroid) and how many were embedded (``count``)."""

    centroid: torch.Tensor
    spread: float
    count: int

    def distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[batch] distance of each question embedding from the centroid, in spreads."""
        return (embeddings.float() - self.centroid).norm(dim=-1) / max(self.spread, MIN_SPREAD)

    def save(self, folder: str | Path) -> None:
        """``questions.safetensors`` in ``folder``, written atomically."""
        tensors = {"centroid": self.centroid.float().contiguous(), "spread": torch.tensor(float(self.spread)),
                   "count": torch.tensor(self.count, dtype=torch.int64)}
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
            save_file(tensors, handle.name)
        Path(handle.name).replace(Path(folder) / QUESTIONS_NAME)


@torch.no_grad()
def embed_questions(lm: nn.Module, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str]) -> torch.Tensor:
    """[len(questions), width] float32: each question's last hidden states averaged over its tokens, read by the
    frozen LM as its tokenizer gives it (after BOS, for the LMs trained to see one first) with nothing around it;
    the same for every sense of the LM. An empty question (a caption's) is read as the end-of-text token. Not
    inference mode: a sharded LM keeps what its all-gathers make."""
    device, head = lm.get_input_embeddings().weight.device, lm.get_output_embeddings().weight.device
    rows = []
    for start in range(0, len(questions), EMBED_BATCH):
        texts = tokenizer(list(questions[start:start + EMBED_BATCH])).input_ids
        starts = [int(bool(ids) and ids[0] == tokenizer.bos_token_id) for ids in texts]
        texts = [ids if len(ids) > skip else ids + [tokenizer.eos_token_id] for ids, skip in zip(texts, starts,
                                                                                                   strict=True)]
        width = max(map(len, texts))
        ids = torch.tensor([text + [tokenizer.pad_token_id] * (width - len(text)) for text in texts], device=device)
        mask = torch.tensor([[1] * len(text) + [0] * (width - len(text)) for text in texts], device=device)
        hidden = lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    output_hidden_states=True, logits_to_keep=last_positions(1, head),
                    use_cache=False).hidden_states[-1].float()
        # BOS's state is the same whatever follows it: it says nothing of the question.
        pooled = torch.tensor([[0] * skip + [1] * (len(text) - skip) + [0] * (width - len(text))
                               for text, skip in zip(texts, starts, strict=True)], device=device)
        weights = pooled[..., None].to(hidden.dtype)
        rows.append(((hidden * weights).sum(1) / weights.sum(1)).cpu())
    return torch.cat(rows)


def question_stats(lm: nn.Module, tokenizer: PreTrainedTokenizerBase, questions: Sequence[str],
                   seed: int = 0) -> QuestionStats:
    """The statistics of ``questions`` (those an adapter trained on), from a seeded sample of at most
    ``QUESTION_SAMPLE`` of them."""
    if not questions:
        raise ValueError("no questions to record statistics of")
    sample = random.Random(seed).sample(list(questions), min(len(questions), QUESTION_SAMPLE))
    embeddings = embed_questions(lm, tokenizer, sample)
    centroid = embeddings.mean(0)
    spread = (embeddings - centroid).pow(2).sum(-1).mean().sqrt().item()
    return QuestionStats(centroid, spread, len(sample))


def read_question_stats(folder: str | Path, width: int) -> QuestionStats | None:
    """The adapter folder's ``questions.safetensors`` for an LM of hidden ``width``; None when it has none (adapters
    trained before the statistics existed). A damaged file is a one-line BadInputError naming it."""
    path = Path(folder) / QUESTIONS_NAME
    if not path.exists():
        return None
    regular_file(path, MAX_QUESTIONS_BYTES)
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInputError(f"{path}: not a readable safetensors file ({error})") from error
    if set(tensors) != {"centroid", "spread", "count"}:
        raise BadInputError(f"{path}: question statistics hold tensors {sorted(tensors)}, not centroid, spread "
                            "and count")
    for name, shape in (("centroid", [width]), ("spread", [])):
        tensor = tensors[name]
        if list(tensor.shape) != shape:
            raise BadInputError(f"{path}: tensor '{name}' has shape {list(tensor.shape)}, the LM expects {shape}")
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise BadInputError(f"{path}: tensor '{name}' is {tensor.dtype}: not finite floating point values")
    if tensors["count"].shape or tensors["count"].dtype != torch.int64:
        raise BadInputError(f"{path}: tensor 'count' is {tensors['count'].dtype} of shape "
                            f"{list(tensors['count'].shape)}, not one int64")
    if tensors["spread"] < 0 or tensors["count"] < 1:
        raise BadInputError(f"{path}: spread {tensors['spread'].item()} and count {tensors['count'].item()}: "
                            "a spread is at least 0 and at least one question is counted")
    return QuestionStats(tensors["centroid"].float(), tensors["spread"].item(), int(tensors["count"]))
