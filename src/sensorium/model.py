"""PerceptualLM: frozen encoder -> trainable connector -> slot injection into a frozen LM -> generate."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .config import WEIGHTS_NAME, AdapterConfig
from .connectors import build_connector
from .encoders import Encoder, load_encoder
from .injection import SlotInjector, decoder_layers, paper_layer_range, spread_blocks
from .lm import check_lm, load_lm


class PerceptualLM(nn.Module):
    """A frozen causal LM that sees through a frozen encoder, taught by a tiny trainable connector.

    Input layout, identical in training and generation:
    ``[bos?][soft prompt][slot x k][pads][question tokens][answer tokens]``. The slot is one column
    (k = 1), or one column per video frame with ``temporal: frames``. The soft prompt and the slot
    sit at fixed columns for every sample, so the slot index is one integer; padding goes between
    the slot and the text and positions come from the attention mask.
    """

    def __init__(self, config: AdapterConfig, lm=None, tokenizer=None, encoder: Encoder | None = None):
        super().__init__()
        self.config = config
        if lm is None:
            lm, tokenizer = load_lm(config.lm)
        check_lm(lm, config.lm)
        self.lm, self.tokenizer = lm, tokenizer
        self.encoder = encoder or load_encoder(config.encoder, image_size=config.image_size,
                                               num_frames=config.num_frames)
        self.encoder.freeze()
        self.slot_count = self._slot_count(config, self.encoder)
        if config.encoder_blocks is None and config.num_blocks > self.encoder.num_blocks:
            raise ValueError(f"num_blocks={config.num_blocks} but encoder '{config.encoder}' has only "
                             f"{self.encoder.num_blocks} blocks")
        self.blocks = config.encoder_blocks or list(
            range(self.encoder.num_blocks - config.num_blocks, self.encoder.num_blocks)
        )
        if not self.blocks or min(self.blocks) < 0 or max(self.blocks) >= self.encoder.num_blocks:
            raise ValueError(f"encoder blocks {self.blocks} out of range 0..{self.encoder.num_blocks - 1}")
        num_layers = len(decoder_layers(lm))
        layers = config.inject_layers or paper_layer_range(num_layers)
        if min(layers) < 0 or max(layers) >= num_layers:
            raise ValueError(f"injection layers {layers} out of range 0..{num_layers - 1}")
        self.layer_tokens = spread_blocks(len(self.blocks), len(layers))

        # Injected tokens live in the decoder layers' width, which can differ from the embedding
        # width (OPT-350m projects 512-d embeddings to 1024-d layers).
        width = lm.config.get_text_config().hidden_size
        frames = self.slot_count if config.temporal == "frames" else None
        self.connector = build_connector(config.connector, self.encoder.dim, width, token_norm=config.token_norm,
                                         num_frames=frames)
        # Start the learned input vectors among real token embeddings, as the embedding layer outputs
        # them: the right scale for any LM, Gemma's sqrt(hidden) embedding scaling included, because
        # the prefix replaces that layer's output and never passes through it again.
        embeddings = lm.get_input_embeddings()
        generator = torch.Generator().manual_seed(0)
        picks = torch.randint(0, embeddings.weight.shape[0], (config.prompt_length + 1,), generator=generator)
        with torch.no_grad():
            start = embeddings(picks.to(embeddings.weight.device)).float().cpu()
        self.prompt = nn.Parameter(start[:-1].clone())
        self.slot_embedding = nn.Parameter(start[-1].clone())  # one vector, repeated in every slot column
        self.bos = self._leading_bos(tokenizer)
        self.slot_index = len(self.bos) + config.prompt_length
        self.prefix_length = self.slot_index + self.slot_count  # columns before the padding
        self.injector = SlotInjector(lm, layers, self.slot_index, self.slot_count)

    @staticmethod
    def _slot_count(config: AdapterConfig, encoder: Encoder) -> int:
        """Slot columns: one token per injection layer, or one per frame when the frames keep their order."""
        if config.temporal == "mean":
            return 1
        if encoder.num_tokens is None:
            raise ValueError(f"temporal '{config.temporal}' needs an encoder with one token per frame "
                             f"('frames:NAME'); '{encoder.name}' gives one token per block")
        return encoder.num_tokens

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

    def train(self, mode: bool = True) -> PerceptualLM:
        # Only the connector trains; the frozen LM keeps dropout off and the encoder stays in eval.
        super().train(mode)
        self.lm.eval()
        return self

    # ---- encode -> map ----------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, media: list[Any]) -> torch.Tensor:
        """Per-block encoder tokens [batch, encoder blocks, (frames,) dim] (what the feature cache stores).

        ``media`` are file paths, read by the encoder (images, videos, sounds), or media it has already read.
        """
        loaded = [self.encoder.load(item) if isinstance(item, (str, Path)) else item for item in media]
        device = next(self.encoder.parameters()).device
        return self.encoder(self.encoder.preprocess(loaded).to(device)).float()

    def map_features(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder tokens of all blocks -> the LM-width tokens of each injection layer.

        [batch, layers, width], or [batch, layers, frames, width] when the frames keep their order.
        ``temporal: mean`` averages per-frame features over time first, into exactly an image's features.
        """
        chosen = features[:, self.blocks].to(self.prompt.device)
        if chosen.ndim == 4 and self.config.temporal == "mean":
            chosen = chosen.mean(dim=2)
        return self.connector(chosen)[:, self.layer_tokens]

    # ---- inputs -----------------------------------------------------------------------------
    def _token_ids(self, texts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of the whole layout; soft-prompt and slot columns hold pad ids."""
        device = self.lm.get_input_embeddings().weight.device
        width = max(len(ids) for ids in texts)
        pad = self.tokenizer.pad_token_id
        prefix = self.bos + [pad] * (self.prefix_length - len(self.bos))
        ids = torch.tensor([prefix + [pad] * (width - len(t)) + t for t in texts], device=device)
        mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(t)) + [1] * len(t) for t in texts], device=device)
        return ids, mask

    def learned_prefix(self) -> torch.Tensor:
        """The soft prompt and the slot embedding in each slot column, [prompt length + slot columns, width]."""
        return torch.cat([self.prompt, self.slot_embedding.expand(self.slot_count, -1)])

    def _with_learned_prefix(self, embeds: torch.Tensor, learned: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings with learned vectors ([batch or 1, prompt + slot, width]) written into their columns."""
        learned = self.learned_prefix()[None] if learned is None else learned
        start = len(self.bos)
        return torch.cat([embeds[:, :start], learned.to(embeds.dtype).expand(embeds.shape[0], -1, -1),
                          embeds[:, self.prefix_length:]], 1)

    def _embed(self, texts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs_embeds and attention mask for token lists, right-aligned after the fixed prefix."""
        ids, mask = self._token_ids(texts)
        return self._with_learned_prefix(self.lm.get_input_embeddings()(ids)), mask

    def prompt_ids(self, questions: list[str]) -> list[list[int]]:
        texts = [self.config.template.format(question=q) for q in questions]
        return self.tokenizer(texts, add_special_tokens=False).input_ids

    def target_ids(self, targets: list[str]) -> list[list[int]]:
        ids = self.tokenizer([" " + t.strip() for t in targets], add_special_tokens=False).input_ids
        return [t + [self.tokenizer.eos_token_id] for t in ids]

    @staticmethod
    def _positions(mask: torch.Tensor) -> torch.Tensor:
        return (mask.cumsum(-1) - 1).clamp(min=0)

    # ---- train ------------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, questions: list[str], targets: list[str]) -> torch.Tensor:
        """Mean cross-entropy on the target tokens only (question tokens carry no loss)."""
        prompts, answers = self.prompt_ids(questions), self.target_ids(targets)
        embeds, mask = self._embed([p + a for p, a in zip(prompts, answers, strict=True)])
        span = max(len(a) for a in answers)
        labels = torch.tensor([[-100] * (span - len(a)) + a for a in answers], device=embeds.device)
        with self.injector.injecting(self.map_features(features)):
            # Logits only where a target token is predicted: the LM head over every position would
            # cost more than the rest of the step for a short answer.
            logits = self.lm(
                inputs_embeds=embeds, attention_mask=mask, position_ids=self._positions(mask),
                logits_to_keep=span + 1, use_cache=False,
            ).logits[:, :-1]
        return nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

    # ---- generate ---------------------------------------------------------------------------
    def generation_options(self, **overrides) -> dict:
        """generate() options shared by the cached and the uncached path: the adapter's, then the call's."""
        return {"do_sample": False, "pad_token_id": self.tokenizer.pad_token_id,
                "eos_token_id": self.tokenizer.eos_token_id, **self.config.generation_defaults(), **overrides}

    def _decode(self, tokens: torch.Tensor) -> list[str]:
        return [text.strip() for text in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]

    @torch.inference_mode()
    def generate(self, features: torch.Tensor, questions: list[str], **options) -> list[str]:
        """Answers (captions when the questions are empty) decoded by generate() with the KV cache on."""
        embeds, mask = self._embed(self.prompt_ids(questions))
        options = self.generation_options(**options)
        with self.injector.injecting(self.map_features(features)):
            return self._decode(self.lm.generate(inputs_embeds=embeds, attention_mask=mask, **options))

    @torch.inference_mode()
    def generate_uncached(self, features: torch.Tensor, questions: list[str], **options) -> list[str]:
        """The same decoding with the KV cache off: every new token recomputes the whole sequence.

        This is what the public eP-ALM code does; it is the reference that cached generation must
        match token for token, and the baseline the benchmarks measure. It feeds token ids (with the
        learned prefix written in by a hook on the embedding layer), because transformers keeps a cache
        for ``inputs_embeds`` generation even when asked not to.
        """
        ids, mask = self._token_ids(self.prompt_ids(questions))
        options = {**self.generation_options(**options), "use_cache": False}
        hook = self.lm.get_input_embeddings().register_forward_hook(
            lambda module, args, output: self._with_learned_prefix(output))
        try:
            with self.injector.injecting(self.map_features(features)):
                output = self.lm.generate(input_ids=ids, attention_mask=mask, **options)
        finally:
            hook.remove()
        return self._decode(output[:, ids.shape[1]:])

    def ask(self, media: list[Any], questions: list[str], **options) -> list[str]:
        """Answers about images, videos or sounds: file paths, or media the encoder has read (see ``encode``)."""
        self._require_task("vqa", "caption")
        return self.generate(self.encode(media), questions, **options)

    def caption(self, media: list[Any], **options) -> list[str]:
        """Captions of images, videos or sounds: file paths, or media the encoder has read (see ``encode``)."""
        self._require_task("caption", "ask")
        return self.generate(self.encode(media), [""] * len(media), **options)

    def _require_task(self, task: str, instead: str) -> None:
        if self.config.task != task:
            raise ValueError(f"this adapter was trained for {self.config.task}, not {task}: use '{instead}'")

    # ---- save / load ------------------------------------------------------------------------
    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().float().cpu().contiguous() for name, p in self.named_parameters() if p.requires_grad}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = {name for name, p in self.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise ValueError(f"adapter weights do not match the model: missing {sorted(expected - set(state))}, "
                             f"unexpected {sorted(set(state) - expected)}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor)

    def save_pretrained(self, folder: str | Path) -> None:
        """adapter_config.json + adapter.safetensors (a few MB); written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save(folder)
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as handle:
            save_file(self.adapter_state(), handle.name)
        Path(handle.name).replace(folder / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, folder: str | Path, lm=None, tokenizer=None, encoder=None) -> PerceptualLM:
        folder = Path(folder)
        model = cls(AdapterConfig.load(folder), lm=lm, tokenizer=tokenizer, encoder=encoder)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: adapter weights missing")
        model.load_adapter_state(load_file(weights))
        return model


@torch.inference_mode()
def generate_mixed(samples: list[tuple[PerceptualLM, torch.Tensor, str]], **options) -> list[str]:
    """One generate() call for samples of different adapters over one shared frozen LM.

    Each sample is (adapter, its encoder tokens [blocks, (frames,) dim], question); each brings its own
    soft prompt, slot embedding and connector. Adapters must share the LM object and the layout (same
    injection layers and slot columns), which holds for adapters trained on the same base LM with the
    same prompt length and slot width; ``options`` apply to the whole batch.
    """
    lead = samples[0][0]
    for model, _, _ in samples:
        if model.lm is not lead.lm or model.injector.layers != lead.injector.layers \
                or (model.slot_index, model.slot_count) != (lead.slot_index, lead.slot_count):
            raise ValueError("generate_mixed needs adapters sharing one LM, injection layers, prompt length "
                             "and slot width")
    ids, mask = lead._token_ids([model.prompt_ids([question])[0] for model, _, question in samples])
    learned = torch.stack([model.learned_prefix() for model, _, _ in samples])
    embeds = lead._with_learned_prefix(lead.lm.get_input_embeddings()(ids), learned)
    tokens = torch.cat([model.map_features(features[None]) for model, features, _ in samples])
    with lead.injector.injecting(tokens):
        return lead._decode(lead.lm.generate(inputs_embeds=embeds, attention_mask=mask,
                                             **lead.generation_options(**options)))


def load(folder: str | Path, dtype: torch.dtype = torch.float32, device_map: str | dict | None = None) -> PerceptualLM:
    """Rebuild a trained model from an adapter folder.

    ``dtype`` is the frozen LM's (the adapter stays float32). ``device_map`` places the LM as in
    transformers (``"auto"``: spread over the visible GPUs, then CPU RAM); the encoder and the
    adapter then sit with the LM's input embeddings, where generation starts.
    """
    lm, tokenizer = load_lm(AdapterConfig.load(folder).lm, dtype, device_map)
    model = PerceptualLM.from_pretrained(folder, lm=lm, tokenizer=tokenizer)
    if device_map is not None:
        device = lm.get_input_embeddings().weight.device
        model.encoder.to(device)
        model.connector.to(device)
        for parameter in (model.prompt, model.slot_embedding):
            parameter.data = parameter.data.to(device)
    return model
