"""PerceptualLM: frozen encoder -> trainable connector -> slot injection into a frozen LM -> generate."""

from __future__ import annotations

import itertools
import tempfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .cache import FeatureCache, stored_features
from .config import PAPER_ADDED_TOKENS, QUESTIONS_NAME, WEIGHTS_NAME, AdapterConfig, Decoding
from .connectors import build_connector
from .decoding import CompiledDecoding, batch_bucket, padded_rows
from .encoders import Encoder, load_encoder
from .errors import BadInputError
from .injection import FrontInjector, SlotInjector
from .layout import EncoderFacts, encoder_tokens, plan
from .lm import check_lm, hold_weights, last_positions, lm_facts, load_lm, loading_dtype, weight_format
from .routing import QuestionStats, read_question_stats
from .schema import BOUNDS

# generate() arguments that say how decoding runs or watch it, not what it decodes (a server's stop when nobody
# waits any more, a benchmark's clock, its choice of KV cache, a sharded LM's processes stepping together until all
# are done): passed to generate() as they are, but ``compiled`` (a ``decoding.CompiledDecoding``), which the model
# turns into generate()'s own options.
RUNTIME_ARGUMENTS = ("stopping_criteria", "logits_processor", "cache_implementation", "compile_config",
                     "disable_compile", "synced_gpus", "compiled")


def encoder_facts(encoder: Encoder) -> EncoderFacts:
    """What the layout needs to know of a loaded encoder."""
    return EncoderFacts(encoder.name, encoder.num_blocks, encoder.dim, encoder.tokens, encoder.patch_grid,
                        encoder.num_tokens)


def aggregate_time(features: torch.Tensor, temporal: str) -> torch.Tensor:
    """Per-frame features [batch, blocks, frames, dim] as the connector reads them (see config.TEMPORAL):
    ``mean`` gives exactly an image's [batch, blocks, dim]; ``frames`` keeps them; ``change`` gives
    [batch, blocks, 2, dim], the mean and the last frame minus the first."""
    if temporal == "mean":
        return features.mean(dim=2)
    if temporal == "change":
        return torch.stack([features.mean(dim=2), features[:, :, -1] - features[:, :, 0]], dim=2)
    return features


class PrefixedLM(nn.Module):
    """A frozen causal LM whose every sequence starts with learned columns: the sequence machinery of eP-ALM.

    Input layout, identical in training and generation: ``[pads][bos?][learned prefix][question tokens][answer
    tokens]``. A subclass says what the prefix holds and which of its columns the injection layers overwrite
    (``perceive``, ``injector``, ``slot_index``): one adapter's soft prompt and slot (``PerceptualLM``), or several
    senses' in turn (``compose.ComposedLM``). Padding comes first, as in any left-padded batch, so the prefix lies
    a sample's own text length before its end: an LM with sliding window attention (Gemma3) sees it from every
    text token however much the batch pads; a row's slot is then ``slot_index`` after its padding, and positions
    come from the attention mask.

    Subclasses set ``config`` (its template, task and decoding settings are the model's), ``lm``, ``tokenizer``,
    ``bos``, ``slot_index``, ``prefix_length`` (columns before a row's text) and ``injector`` (None without
    injection layers).
    """

    config: AdapterConfig
    bos: list[int]
    bos_index = 0  # BOS's column in the prefix
    slot_index: int
    prefix_length: int
    injector: SlotInjector | None
    # How the text is tokenized: our layout puts BOS before the learned prefix and the answer after a space; the
    # paper's (PaperLM) lets the tokenizer add BOS to the template and joins the answer to ``</a>``.
    template_bos = False
    answer_separator = " "

    def perceive(self, features) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The learned prefix [batch or 1, prefix_length - len(bos), width] and the injection layers' tokens."""
        raise NotImplementedError

    def learned_prefix(self) -> torch.Tensor:
        """The prefix when it does not depend on the media (injecting connectors only)."""
        raise NotImplementedError

    def encode(self, media: list[Any]) -> torch.Tensor:
        """The features of media (file paths, or media already read), as the feature cache stores them."""
        raise NotImplementedError

    def features_of(self, paths: list[str], batch_size: int, workers: int,
                    skip_bad: bool) -> tuple[torch.Tensor, dict[str, int], list[str]]:
        """Cached features of files: (features, row of each readable file, one line per unreadable file)."""
        raise NotImplementedError

    def ask(self, media: list[Any], questions: list[str], **options) -> list[str]:
        """Answers about images, videos or sounds: file paths, or media already read (see ``encode``)."""
        self._require_task("vqa", "caption")
        return self.generate(self.encode(media), questions, **options)

    def caption(self, media: list[Any], **options) -> list[str]:
        """Captions of images, videos or sounds: file paths, or media already read (see ``encode``)."""
        self._require_task("caption", "ask")
        return self.generate(self.encode(media), [""] * len(media), **options)

    def _require_task(self, task: str, instead: str) -> None:
        if not self.config.does(task):
            raise ValueError(f"this adapter was trained for {self.config.task}, not {task}: use '{instead}'")

    @staticmethod
    def _leading_bos(tokenizer) -> list[int]:
        """Keep the BOS token that the LM was trained to see first (OPT, Llama) at column 0."""
        ids = tokenizer("a").input_ids
        bos = tokenizer.bos_token_id
        return [bos] if bos is not None and ids and ids[0] == bos else []

    # ---- counting -------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameters, frozen LM and encoder included in the total."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        return trainable, sum(p.numel() for p in self.parameters())

    def train(self, mode: bool = True) -> PrefixedLM:
        # Only the connector trains; the frozen LM keeps dropout off (unless ``lm_dropout``: the official
        # training ran it in train mode) and the encoder stays in eval.
        super().train(mode)
        self.lm.train(mode and self.config.lm_dropout)
        return self

    def _injecting(self, layer_tokens: torch.Tensor | None, mask: torch.Tensor) -> AbstractContextManager:
        if layer_tokens is None:
            return nullcontext()
        return self.injector.injecting(layer_tokens, self.slot_columns(mask))

    # ---- inputs -----------------------------------------------------------------------------
    def _token_ids(self, texts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of the whole layout; soft-prompt and slot columns hold pad ids."""
        device = self.lm.get_input_embeddings().weight.device
        width = max(len(ids) for ids in texts)
        pad = self.tokenizer.pad_token_id
        prefix = [pad] * self.prefix_length
        prefix[self.bos_index:self.bos_index + len(self.bos)] = self.bos
        ids = torch.tensor([[pad] * (width - len(t)) + prefix + t for t in texts], device=device)
        mask = torch.tensor([[0] * (width - len(t)) + [1] * (len(prefix) + len(t)) for t in texts], device=device)
        return ids, mask

    @staticmethod
    def _leading_pads(mask: torch.Tensor) -> torch.Tensor:
        """Padding columns before each row's content, [batch]: the layout pads on the left only."""
        return (mask.cumsum(-1) == 0).sum(-1)

    def slot_columns(self, mask: torch.Tensor) -> torch.Tensor:
        """Column of each row's first slot column, [batch]."""
        return self._leading_pads(mask) + self.slot_index

    def _with_learned_prefix(self, embeds: torch.Tensor, pads: torch.Tensor,
                             learned: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings with learned vectors ([batch or 1, prompt + slot, width]) written into their columns,
        which start after each row's ``pads`` (and BOS).

        Without ``learned``: an injecting connector's soft prompt and slot embedding.
        """
        batch = embeds.shape[0]
        learned = self.learned_prefix()[None] if learned is None else learned
        if learned.shape[0] not in (1, batch):  # beam search / sampling expand the batch
            learned = learned.repeat_interleave(batch // learned.shape[0], dim=0)
        if len(pads) != batch:
            pads = pads.repeat_interleave(batch // len(pads))
        offsets = torch.tensor(self.learned_columns(), device=embeds.device)
        columns = pads.to(embeds.device)[:, None] + offsets
        rows = torch.arange(batch, device=embeds.device)[:, None].expand_as(columns)
        # Out of place (index_put, not index_put_): autograd needs the embeddings as they were.
        return embeds.index_put((rows, columns), learned.to(embeds.dtype).expand(batch, -1, -1))

    def learned_columns(self) -> list[int]:
        """Where each learned vector goes in a row's prefix (after its padding), in ``perceive``'s order: here
        every column but BOS, in order."""
        bos = range(self.bos_index, self.bos_index + len(self.bos))
        return [column for column in range(self.prefix_length) if column not in bos]

    def _embed(self, texts: list[list[int]], learned: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs_embeds and attention mask for token lists, left-padded, each after the learned prefix."""
        ids, mask = self._token_ids(texts)
        return self._with_learned_prefix(self.lm.get_input_embeddings()(ids), self._leading_pads(mask), learned), mask

    def prompt_ids(self, questions: list[str], contexts: list[str] | None = None) -> list[list[int]]:
        """Token ids of the template around each question, after its context text where one is given (the
        text oracle states what the medium shows there)."""
        texts = [self.config.prompt_text(q) for q in tokenizable(questions, "question")]
        if contexts is not None:
            texts = [f"{context} {text}" if context else text
                     for context, text in zip(tokenizable(contexts, "context"), texts, strict=True)]
        return self.tokenizer(texts, add_special_tokens=self.template_bos).input_ids

    def target_ids(self, targets: list[str]) -> list[list[int]]:
        texts = [self.answer_separator + target.strip() for target in tokenizable(targets, "answer")]
        ids = self.tokenizer(texts, add_special_tokens=False).input_ids
        return [t + [self.tokenizer.eos_token_id] for t in ids]

    def check_context(self, ids: list[list[int]], new_tokens: int = 0) -> None:
        """Refuse inputs the LM cannot read: the learned prefix, the longest text and the tokens still to generate
        must fit its positions. Past them a model fails or degrades, after a forward over all of it (minutes for a
        1 MB question)."""
        context = getattr(self.lm.config, "max_position_embeddings", None)
        longest = max(map(len, ids))
        if context is not None and self.prefix_length + longest + new_tokens > context:
            raise BadInputError(f"an input of {longest:,} tokens, after {self.prefix_length} prefix columns and "
                                f"with {new_tokens:,} new tokens to generate, does not fit the LM's {context:,} "
                                "positions: shorten the question")

    def positions(self, mask: torch.Tensor) -> torch.Tensor:
        """Position ids of the layout: each column's index in its row's content (padding gets 0). Generation passes
        them on, and transformers continues them one per new token."""
        return (mask.cumsum(-1) - 1).clamp(min=0)

    # ---- train ------------------------------------------------------------------------------
    def _target_logits(self, features: torch.Tensor, questions: list[str], targets: list[str],
                       contexts: list[str] | None, whole_text: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits where each labelled token is predicted, [batch, span, vocab], and those tokens as labels (-100
        left of a shorter row): the target's tokens, or with ``whole_text`` every text token, the template's and
        the question's too."""
        prompts, answers = self.prompt_ids(questions, contexts), self.target_ids(targets)
        self.check_context([p + a for p, a in zip(prompts, answers, strict=True)])
        learned, layer_tokens = self.perceive(features)
        texts = [p + a for p, a in zip(prompts, answers, strict=True)]
        embeds, mask = self._embed(texts, learned)
        labelled = texts if whole_text else answers
        span = max(len(a) for a in labelled)
        labels = torch.tensor([[-100] * (span - len(a)) + a for a in labelled], device=embeds.device)
        with self._injecting(layer_tokens, mask):
            # Logits only where a target token is predicted: the LM head over every position would
            # cost more than the rest of the step for a short answer.
            logits = self.lm(
                inputs_embeds=embeds, attention_mask=mask, position_ids=self.positions(mask),
                logits_to_keep=self.last_positions(span + 1), use_cache=False,
            ).logits[:, :-1]
        return logits.float(), labels

    def last_positions(self, count: int) -> torch.Tensor:
        """``logits_to_keep`` for the last ``count`` positions, where the LM head reads them (see lm.py)."""
        return last_positions(count, self.lm.get_output_embeddings().weight.device)

    def loss_units(self, questions: list[str], targets: list[str], contexts: list[str] | None = None) -> int:
        """What the training loss averages over (``config.loss``): the answers' tokens, or the samples."""
        if self.config.loss == "text":
            return len(questions)
        return sum(len(ids) for ids in self.target_ids(targets))

    def forward(self, features: torch.Tensor, questions: list[str], targets: list[str],
                contexts: list[str] | None = None) -> torch.Tensor:
        """The training loss (``config.loss``): the cross-entropy of the answers' tokens, averaged over them
        (question tokens carry none), or the official eP-ALM loss, every text token's cross-entropy summed per
        sample and averaged over the samples."""
        whole_text = self.config.loss == "text"
        logits, labels = self._target_logits(features, questions, targets, contexts, whole_text)
        total = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
        return total / self.loss_units(questions, targets, contexts)

    @torch.inference_mode()
    def log_likelihood(self, features: torch.Tensor, questions: list[str], targets: list[str],
                       contexts: list[str] | None = None) -> torch.Tensor:
        """[batch] log-probability of each whole target (its end-of-text token included) given its input: how
        sure the model is of an answer, comparable between models that read the same question."""
        logits, labels = self._target_logits(features, questions, targets, contexts)
        token_losses = nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        return -token_losses.sum(-1)

    # ---- generate ---------------------------------------------------------------------------
    def generation_options(self, questions: list[str], **overrides) -> dict:
        """generate() options shared by the cached and the uncached path: the model's own (greedy or beam search,
        its tokenizer's pad and end tokens), then the decoding options (``Decoding``, each within its bound) of the
        adapter for the task the questions ask (see ``AdapterConfig.task_of``), then the call's. A call may pass
        back options this method gave it: the model's own are its own whatever they say. ``RUNTIME_ARGUMENTS`` pass
        through."""
        own = {"pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": self.tokenizer.eos_token_id,
               "logits_to_keep": self.last_positions(1)}
        runtime = {key: overrides.pop(key) for key in RUNTIME_ARGUMENTS if key in overrides}
        defaults = self.config.generation_defaults(self.config.task_of(questions))
        decoding = {key: value for key, value in {**defaults, **overrides}.items() if key not in own}
        return {"do_sample": False, **own, **Decoding.checked(decoding), **runtime}

    def _decode(self, tokens: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    @torch.inference_mode()
    def generate(self, features: torch.Tensor, questions: list[str], contexts: list[str] | None = None,
                 **options) -> list[str]:
        """Answers (captions when the questions are empty) decoded by generate() with the KV cache on."""
        ids, options = self.prompt_ids(questions, contexts), self.generation_options(questions, **options)
        self.check_context(ids, options["max_new_tokens"])
        if options.get("use_cache") is False:
            if contexts is not None:
                raise ValueError("decoding with use_cache: false takes no context text")
            return self.generate_uncached(features, questions, **options)
        learned, layer_tokens = self.perceive(features)
        embeds, mask = self._embed(ids, learned)
        return self._generate_embedded(embeds, mask, layer_tokens, options)

    def _generate_embedded(self, embeds: torch.Tensor, mask: torch.Tensor, layer_tokens: torch.Tensor | None,
                           options: dict[str, Any]) -> list[str]:
        """Answers to a batch embedded by ``_embed``, decoded by generate() with ``options``; with ``compiled``
        among them (a ``CompiledDecoding``), by a compiled decode step in the batch's and cache's shape buckets
        (decoding.py), the batch padded with copies of its last row whose answers are dropped. transformers compiles
        the steps of greedy and sampled decoding only: beam search runs as without ``compiled``."""
        compiled: CompiledDecoding | None = options.get("compiled")
        options = {key: value for key, value in options.items() if key != "compiled"}
        if compiled is None or options.get("num_beams", 1) > 1:
            with self._injecting(layer_tokens, mask):
                return self._decode(self.lm.generate(inputs_embeds=embeds, attention_mask=mask,
                                                     position_ids=self.positions(mask), **options))
        rows, bucket = len(embeds), batch_bucket(len(embeds))
        embeds, mask = padded_rows(embeds, bucket), padded_rows(mask, bucket)
        layer_tokens = None if layer_tokens is None else padded_rows(layer_tokens, bucket)
        context = getattr(self.lm.config, "max_position_embeddings", None)
        options = {**options, **compiled.generate_options(embeds.shape[1] + options["max_new_tokens"], context)}
        with self._injecting(layer_tokens, mask), compiled.compiling():
            tokens = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, position_ids=self.positions(mask),
                                      **options)
        return self._decode(tokens[:rows])

    @torch.inference_mode()
    def generate_uncached(self, features: torch.Tensor, questions: list[str], **options) -> list[str]:
        """The same decoding with the KV cache off: every new token recomputes the whole sequence.

        This is what the public eP-ALM code does; it is the reference that cached generation must
        match token for token, and the baseline the benchmarks measure. It feeds token ids (with the
        learned prefix written in by a hook on the embedding layer), because transformers keeps a cache
        for ``inputs_embeds`` generation even when asked not to.
        """
        prompts = self.prompt_ids(questions)
        options = {**self.generation_options(questions, **options), "use_cache": False}
        options.pop("compiled", None)  # recomputing every step leaves no cached decode step to compile
        self.check_context(prompts, options["max_new_tokens"])
        ids, mask = self._token_ids(prompts)
        learned, layer_tokens = self.perceive(features)
        pads = self._leading_pads(mask)  # new tokens join on the right: every step keeps the same padding
        hook = self.lm.get_input_embeddings().register_forward_hook(
            lambda module, args, output: self._with_learned_prefix(output, pads, learned))
        try:
            with self._injecting(layer_tokens, mask):
                output = self.lm.generate(input_ids=ids, attention_mask=mask, position_ids=self.positions(mask),
                                          **options)
        finally:
            hook.remove()
        return self._decode(output[:, ids.shape[1]:])


class PerceptualLM(PrefixedLM):
    """A frozen causal LM that sees through a frozen encoder, taught by a tiny trainable connector.

    Its learned prefix is ``[soft prompt][slot x k]``. The connector decides what the k slot columns hold: for
    injecting connectors (eP-ALM) a learned slot embedding at the input, overwritten inside each injection
    layer by that layer's tokens (k = 1, one per video frame with ``temporal: frames``, two with ``change``,
    or the pooled patch tokens of ``epalm-patches``); for input connectors (LiMBeR, LLaVA, MAPL) the mapped
    tokens themselves, written into the input embeddings.
    """

    def __init__(self, config: AdapterConfig, lm=None, tokenizer=None, encoder: Encoder | None = None):
        super().__init__()
        self.config = config
        if lm is None:
            lm, tokenizer = load_lm(config.lm)
        check_lm(lm, config.lm)
        self.lm, self.tokenizer = lm, tokenizer
        self.encoder = encoder or load_encoder(config.encoder, image_size=config.image_size,
                                               num_frames=config.num_frames, tokens=encoder_tokens(config))
        self.encoder.freeze()
        self.layout = plan(config, encoder_facts(self.encoder), lm_facts(lm))
        self.connector = build_connector(config.connector, self.layout.setup, config.connector_options)
        self.slot_count = self.connector.columns
        # Start the learned input vectors among real token embeddings, as the embedding layer outputs
        # them: the right scale for any LM, Gemma's sqrt(hidden) embedding scaling included, because
        # the prefix replaces that layer's output and never passes through it again.
        embeddings = lm.get_input_embeddings()
        generator = torch.Generator().manual_seed(0)
        picks = torch.randint(0, embeddings.weight.shape[0], (config.prompt_length + 1,), generator=generator)
        with torch.no_grad():
            start = embeddings(picks.to(embeddings.weight.device)).float().cpu()
        self.prompt = nn.Parameter(start[:-1].clone())
        width = self.prompt.shape[-1]
        self.prompt_mlp = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width)) \
            if config.prompt_mlp else None
        # One vector, repeated in every slot column until the first injection layer overwrites them;
        # input connectors fill the slot themselves.
        layers = list(self.layout.layers)
        self.slot_embedding = nn.Parameter(start[-1].clone()) if layers else None
        self.bos = self._leading_bos(tokenizer)
        self._order_prefix(config.column_order)
        self.injector = SlotInjector(lm, layers, range(self.slot_count)) if layers else None
        self.questions: QuestionStats | None = None  # what it was trained to be asked (routing.py), once recorded

    def _order_prefix(self, order: list[str]) -> None:
        """Columns of the prefix in ``order`` (see config.PREFIX_PARTS): where BOS, the soft prompt and the slot
        start, and how many columns come before a row's text."""
        widths = {"bos": len(self.bos), "prompt": self.config.prompt_length, "slot": self.slot_count}
        starts = dict(zip(order, itertools.accumulate((widths[part] for part in order), initial=0), strict=False))
        self.bos_index, self.prompt_index, self.slot_index = starts["bos"], starts["prompt"], starts["slot"]
        self.prefix_length = sum(widths.values())

    def learned_columns(self) -> list[int]:
        """The soft prompt's columns, then the slot's: ``learned_prefix``'s order, whatever the columns' order."""
        return [*range(self.prompt_index, self.prompt_index + self.config.prompt_length),
                *range(self.slot_index, self.slot_index + self.slot_count)]

    @property
    def batch_layout(self) -> tuple:
        """What adapters sharing one generate() call must agree on: placement, injection layers, prefix columns."""
        return (self.config.layout, self.layout.placement, self.layout.layers, self.bos_index, self.slot_index,
                self.slot_count)

    # ---- encode -> map ----------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, media: list[Any]) -> torch.Tensor:
        """Encoder tokens as the feature cache stores them for this model.

        [batch, encoder blocks, (frames,) dim] for [CLS] tokens; [batch, chosen blocks, 1 + patches, dim]
        (bfloat16) for patch tokens. ``media`` are file paths, read by the encoder (images, videos, sounds),
        or media it has already read.
        """
        loaded = [self.encoder.load(item) if isinstance(item, (str, Path)) else item for item in media]
        device = next(self.encoder.parameters()).device
        return stored_features(self.encoder, self.encoder(self.encoder.preprocess(loaded).to(device)),
                               self.layout.stored_blocks)

    def features_of(self, paths: list[str], batch_size: int, workers: int,
                    skip_bad: bool) -> tuple[torch.Tensor, dict[str, int], list[str]]:
        cache = FeatureCache(self.encoder, blocks=self.layout.stored_blocks)
        return cache.features(paths, batch_size, workers, skip_bad)

    def map_features(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder tokens (as ``encode`` gives them) -> the connector's LM-width tokens.

        Injecting connectors: [batch, layers, width], or [batch, layers, k, width] with k slot columns;
        input connectors: [batch, k, width]. Per-frame features are first aggregated over time (see
        ``aggregate_time``).
        """
        chosen = features[:, self.layout.feature_rows].to(self.prompt.device, self.prompt.dtype)
        if self.config.encoder_norm:
            chosen = self.encoder.final_norm()(chosen)
        if self.encoder.num_tokens is not None:
            chosen = aggregate_time(chosen, self.config.temporal)
        return self.connector(chosen)

    def perceive(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the features become: the learned input prefix and the injection layers' tokens.

        The prefix is [batch or 1, prompt + slot columns, embedding width]: the soft prompt, then the slot
        embedding (injecting connectors, whose layer tokens come second) or the mapped tokens themselves
        (input connectors, which have no layer tokens).
        """
        mapped = self.map_features(features)
        if self.injector is None:
            prompt = self.soft_prompt().expand(len(mapped), -1, -1)
            return torch.cat([prompt, mapped.to(prompt.dtype)], dim=1), None
        return self.learned_prefix()[None], mapped

    def soft_prompt(self) -> torch.Tensor:
        """The soft prompt's vectors [prompt length, width]: the trained ones, or what the prompt MLP makes of them."""
        return self.prompt if self.prompt_mlp is None else self.prompt_mlp(self.prompt)

    def learned_prefix(self) -> torch.Tensor:
        """Injecting connectors: the soft prompt and the slot embedding in each slot column, [prompt + slot, width]."""
        return torch.cat([self.soft_prompt(), self.slot_embedding.expand(self.slot_count, -1)])

    # ---- save / load ------------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().float().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str | Path = "adapter weights") -> None:
        """Copy trained tensors into the model, all or nothing, once each has been checked.

        Names alone are not enough: ``copy_`` broadcasts, so a [1, 32] tensor saved for a [32, 32] weight
        (or a scalar for the prompt) would load as a different model. Every tensor must have its
        parameter's exact shape, a floating dtype and finite values; ``source`` (the file) names the culprit.
        """
        self.check_adapter_state(state, source)
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def check_adapter_state(self, state: dict[str, torch.Tensor], source: str | Path = "adapter weights") -> None:
        """Raise BadInputError naming ``source`` and the tensor unless ``state`` fits this model exactly."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        if set(state) != set(params):
            raise BadInputError(f"{source}: adapter weights do not match the model: missing "
                                f"{sorted(set(params) - set(state))}, unexpected {sorted(set(state) - set(params))}")
        for name, tensor in state.items():
            check_tensor(tensor, list(params[name].shape), name, source)

    def save_pretrained(self, folder: str | Path) -> None:
        """adapter_config.json + adapter.safetensors (a few MB), and questions.safetensors once the question
        statistics are recorded (an earlier adapter's left in the folder is removed); each written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
            save_file(self.adapter_state(), handle.name)
        Path(handle.name).replace(folder / WEIGHTS_NAME)
        if self.questions is None:
            (folder / QUESTIONS_NAME).unlink(missing_ok=True)
        else:
            self.questions.save(folder)

    def read_questions(self, folder: str | Path) -> None:
        """The question statistics of the adapter folder, checked against this LM's width, where it has them."""
        self.questions = read_question_stats(folder, self.lm.config.get_text_config().hidden_size)

    @classmethod
    def from_pretrained(cls, folder: str | Path, lm=None, tokenizer=None, encoder=None) -> PerceptualLM:
        folder = Path(folder)
        model = build_model(AdapterConfig.load(folder), lm=lm, tokenizer=tokenizer, encoder=encoder)
        weights = folder / WEIGHTS_NAME
        model.load_adapter_state(read_weights(weights), weights)
        model.read_questions(folder)
        return model


class PaperLM(PerceptualLM):
    """eP-ALM's official sequence and injection (``layout: paper``), as the authors' code computes them.

    Columns: ``[visual][soft prompt][BOS text][pads]`` in training, as the official code pads (on the right), and
    ``[visual][soft prompt][pads][BOS text]`` in generation, where new tokens must follow the text. The visual
    column exists from the first injection layer on, its row open to every column (``FrontInjector``); the soft
    prompt comes before BOS without a position, and the text's positions start at 0. The template is
    ``{question}?</a>`` with ``</a>`` an added token, and the answer follows it without a space.
    """

    template_bos = True  # the tokenizer's BOS starts the text (OPT's and Llama's add one)
    answer_separator = ""

    def __init__(self, config: AdapterConfig, lm=None, tokenizer=None, encoder: Encoder | None = None):
        super().__init__(config, lm, tokenizer, encoder)
        add_template_tokens(self.tokenizer, self.lm, [t for t in PAPER_ADDED_TOKENS if t in config.template])
        self.slot_embedding = None  # the visual token does not exist before the first injection layer
        self.bos = []  # BOS belongs to the text, after the soft prompt
        self.slot_index = 0
        self.prefix_length = 1 + config.prompt_length
        self.injector = FrontInjector(self.lm, list(self.layout.layers), self.prefix_length,
                                      open_row=config.visual_row == "open")

    def learned_prefix(self) -> torch.Tensor:
        return self.soft_prompt()

    def _token_ids(self, texts: list[list[int]], right: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask: the visual and prompt columns (pad ids), then each text padded on the
        ``right`` as in official training, or on the left for generation."""
        device = self.lm.get_input_embeddings().weight.device
        width, pad = max(len(ids) for ids in texts), self.tokenizer.pad_token_id
        ids, mask = [], []
        for text in texts:
            fill = width - len(text)
            ids.append([pad] * self.prefix_length + (text + [pad] * fill if right else [pad] * fill + text))
            seen = [1] * len(text) + [0] * fill if right else [0] * fill + [1] * len(text)
            mask.append([1] * self.prefix_length + seen)
        return torch.tensor(ids, device=device), torch.tensor(mask, device=device)

    def _with_learned_prefix(self, embeds: torch.Tensor, pads: torch.Tensor,
                             learned: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings with the soft prompt in its columns, right after the visual column."""
        learned = self.learned_prefix()[None] if learned is None else learned
        prompt = learned.to(embeds.dtype).expand(embeds.shape[0], -1, -1)
        return torch.cat([embeds[:, :1], prompt, embeds[:, self.prefix_length:]], dim=1)

    def positions(self, mask: torch.Tensor) -> torch.Tensor:
        """The official positions: none for the visual and prompt columns (0 here; the injector drops absolute
        ones), the text counted from 0 over its own mask, padding at -1 as OPT computes it (its position table
        starts 2 rows early) and at 0 on other LMs, whose tables start at 0."""
        text = mask[:, self.prefix_length:]
        padding = -1 if self.lm.config.model_type == "opt" else 0
        text_positions = torch.where(text.bool(), text.cumsum(-1) - 1, padding)
        return torch.cat([torch.zeros_like(mask[:, :self.prefix_length]), text_positions], dim=-1)

    def sequence_logits(self, features: torch.Tensor, texts: list[list[int]]) -> torch.Tensor:
        """Logits at every column of the right-padded official sequence of ``texts`` (token ids, BOS included),
        [batch, 1 + prompt + longest text, vocab]: what the official forward returns."""
        learned, layer_tokens = self.perceive(features)
        ids, mask = self._token_ids(texts, right=True)
        embeds = self._with_learned_prefix(self.lm.get_input_embeddings()(ids), self._leading_pads(mask), learned)
        with self._injecting(layer_tokens, mask):
            return self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=self.positions(mask),
                           use_cache=False).logits

    def _target_logits(self, features: torch.Tensor, questions: list[str], targets: list[str],
                       contexts: list[str] | None, whole_text: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """As the official training computes them: the right-padded sequence, each text token after the first
        predicted from the column before it (``whole_text``), or the target's tokens only."""
        prompts, answers = self.prompt_ids(questions, contexts), self.target_ids(targets)
        texts = [p + a for p, a in zip(prompts, answers, strict=True)]
        logits = self.sequence_logits(features, texts)
        labelled = [range(1, len(t)) if whole_text else range(len(t) - len(a), len(t))
                    for t, a in zip(texts, answers, strict=True)]
        span = max(len(columns) for columns in labelled)
        # Each row's labelled columns, right-aligned as the other layout gives them; -1 marks none (label -100).
        columns = torch.tensor([[-1] * (span - len(c)) + list(c) for c in labelled], device=logits.device)
        tokens = torch.tensor([[0] * (span - len(c)) + [t[i] for i in c] for t, c in zip(texts, labelled,
                                                                                           strict=True)],
                              device=logits.device)
        rows = torch.arange(len(texts), device=logits.device)[:, None]
        predicted = logits[rows, (self.prefix_length + columns - 1).clamp(min=0)]
        return predicted.float(), tokens.masked_fill(columns < 0, -100)


def check_tensor(tensor: torch.Tensor, expected: list[int], name: str, source: str | Path) -> None:
    """Raise BadInputError naming ``source`` and ``name`` unless ``tensor`` can be the parameter of shape ``expected``:
    its exact shape (``copy_`` would broadcast another), a floating dtype and finite values."""
    if list(tensor.shape) != expected:
        raise BadInputError(f"{source}: tensor '{name}' has shape {list(tensor.shape)}, the model expects {expected}")
    if not tensor.is_floating_point():
        raise BadInputError(f"{source}: tensor '{name}' is {tensor.dtype}, not floating point")
    if not torch.isfinite(tensor).all():
        raise BadInputError(f"{source}: tensor '{name}' holds NaN or infinite values")


def add_template_tokens(tokenizer, lm: nn.Module, tokens: list[str]) -> None:
    """Add the tokens a template needs (``</a>``) as special tokens of the tokenizer. An id past the LM's embedding
    rows gets a new row holding the mean embedding, the same on every load; OPT's ``</a>`` falls in the rows OPT
    pads its vocabulary with, so the official checkpoints read the row they were trained with."""
    missing = [token for token in tokens if token not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    rows = lm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            weight = lm.get_input_embeddings().weight
            weight[rows:] = weight[:rows].mean(dim=0)


def build_model(config: AdapterConfig, lm=None, tokenizer=None, encoder: Encoder | None = None) -> PerceptualLM:
    """The model of an adapter config, in its layout (config.LAYOUTS)."""
    kind = PaperLM if config.layout == "paper" else PerceptualLM
    return kind(config, lm=lm, tokenizer=tokenizer, encoder=encoder)


def tokenizable(texts: list[str], what: str) -> list[str]:
    """``texts`` once each is text a tokenizer takes, or a one-line BadInputError naming the first that is not: one
    longer than any question (see schema.BOUNDS), or one holding a lone surrogate (what Python makes of a byte that
    is not UTF-8 in a command-line argument, or of an unpaired escape such as \\ud800 in a JSON file)."""
    longest = BOUNDS["question_chars"].high
    for text in texts:
        if len(text) > longest:
            raise BadInputError(f"a {what} of {len(text):,} characters: at most {longest:,} are read")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            raise BadInputError(f"{what} {text!r:.80}: not valid text (character {error.start + 1} is a lone "
                                "surrogate: a byte that is not UTF-8, or an unpaired escape such as \\ud800)") \
                from None
    return texts


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter.safetensors, or a one-line error naming the file when it is missing or damaged
    (truncated, overwritten, a header that does not parse)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter weights missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInputError(f"{path}: not a readable safetensors file ({error})") from error


@torch.inference_mode()
def generate_mixed(samples: list[tuple[PerceptualLM, torch.Tensor, str]], **options) -> list[str]:
    """One generate() call for samples of different adapters over one shared frozen LM.

    Each sample is (adapter, its encoder tokens as ``encode`` gives them, question); each brings its own
    soft prompt, slot embedding and connector. Adapters must share the LM object and the layout (same
    placement, injection layers and slot columns), which holds for adapters trained on the same base LM
    with the same prompt length and connector layout; ``options`` apply to the whole batch. Samples all of
    one model may be of any ``PrefixedLM`` (a composed model's requests, batched by the server): that model
    generates them.
    """
    lead = samples[0][0]
    questions = [question for _, _, question in samples]
    if all(model is lead for model, _, _ in samples):
        return lead.generate(torch.stack([features for _, features, _ in samples]), questions, **options)
    for model, _, _ in samples:
        if model.lm is not lead.lm or model.batch_layout != lead.batch_layout:
            raise ValueError("generate_mixed needs adapters sharing one LM, placement, injection layers, prompt "
                             "length and slot width")
    if lead.generation_options(questions, **options).get("use_cache") is False:  # recomputed: one call each
        return [model.generate(features[None], [question], **options)[0] for model, features, question in samples]
    prompts, options = [model.prompt_ids([question])[0] for model, _, question in samples], \
        lead.generation_options(questions, **options)
    lead.check_context(prompts, options["max_new_tokens"])
    ids, mask = lead._token_ids(prompts)
    learned, tokens = zip(*(model.perceive(features[None]) for model, features, _ in samples), strict=True)
    embeds = lead._with_learned_prefix(lead.lm.get_input_embeddings()(ids), lead._leading_pads(mask),
                                       torch.cat(learned))
    return lead._generate_embedded(embeds, mask, None if lead.injector is None else torch.cat(tokens), options)


def load(folder: str | Path, weights: str = "float32", device_map: str | dict | None = None) -> PerceptualLM:
    """Rebuild a trained model from an adapter folder.

    ``weights`` is how the frozen LM holds its weights: one of ``config.WEIGHT_FORMATS``, or ``auto``, the fastest
    on the device (``lm.weight_format``); the adapter stays float32, and int8 is quantised from float32 once the
    model is built. ``device_map`` places the LM as in transformers (``"auto"``: spread over the visible GPUs, then
    CPU RAM); the encoder and the adapter then sit with the LM's input embeddings, where generation starts.
    """
    device = "cuda" if device_map is not None and torch.cuda.is_available() else "cpu"
    config = AdapterConfig.load(folder)
    weights = weight_format(weights, device, captions=config.does("caption"))
    lm, tokenizer = load_lm(config.lm, loading_dtype(weights), device_map)
    model = PerceptualLM.from_pretrained(folder, lm=lm, tokenizer=tokenizer)
    if weights == "int8":
        hold_weights(lm, weights)
    if device_map is not None:
        device = lm.get_input_embeddings().weight.device
        model.encoder.to(device)
        model.connector.to(device)
        for parameter in (model.prompt, model.slot_embedding):
            if parameter is not None:
                parameter.data = parameter.data.to(device)
    return model
