"""Any transformers audio model (AST, Whisper's encoder, wav2vec2, HuBERT, WavLM, ...) as a frozen encoder.

Each is read with its own feature extractor, saved beside its weights. AST has a [CLS] token, read from
every block as eP-ALM does; the others are averaged over the positions of each window that hold real
audio: Whisper always pads to 30 s and wav2vec2-like models pad a batch to its longest window, and that
padding must not dilute a short clip's features.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from transformers import (
    ASTFeatureExtractor,
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    BatchFeature,
    PretrainedConfig,
    WhisperFeatureExtractor,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from ..safe_load import from_pretrained
from .audio import AudioEncoder, masked_mean
from .hf_vision import _has_cls_token, config_hash

# Models with no fixed input length (wav2vec2, HuBERT) still see at most this much at once: attention over
# an hour of audio would not fit in memory.
DEFAULT_WINDOW_SECONDS = 30


def is_audio_config(config: PretrainedConfig) -> bool:
    """Whether transformers knows the architecture as an audio model (it can classify sounds with it)."""
    return config.model_type in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES


def _audio_tower(source: str, config: PretrainedConfig) -> torch.nn.Module:
    """The audio encoder: a folder saved from Whisper's encoder alone, or the encoder half of a seq2seq model."""
    if "WhisperEncoder" in (config.architectures or []):
        return from_pretrained(WhisperEncoder, source, "encoder", dtype=torch.float32)
    model = from_pretrained(AutoModel, source, "encoder", dtype=torch.float32)
    return model.get_encoder() if config.is_encoder_decoder else model


def _window_samples(extractor, rate: int) -> int:
    """The longest stretch the model reads at once, in samples."""
    if isinstance(extractor, WhisperFeatureExtractor):
        return extractor.n_samples  # 30 s: the encoder's positions are learned for exactly that
    if isinstance(extractor, ASTFeatureExtractor):
        return extractor.max_length * rate // 100  # max_length filterbank frames of 10 ms
    return DEFAULT_WINDOW_SECONDS * rate


class HFAudioEncoder(AudioEncoder):
    """One token per transformer block of each clip: the [CLS] output, or the mean over real-audio positions."""

    def __init__(self, name_or_path: str | Path, name: str | None = None) -> None:
        super().__init__()
        source = str(name_or_path)
        config = from_pretrained(AutoConfig, source, "encoder")
        try:
            self.extractor = from_pretrained(AutoFeatureExtractor, source, "encoder")
        except OSError as error:
            raise ValueError(f"{source}: no preprocessor_config.json; an audio model is read with its own "
                             "feature extractor, saved beside its weights") from error
        self.model = _audio_tower(source, config)
        self.name = name or source
        self.sampling_rate = self.extractor.sampling_rate
        self.window_length = _window_samples(self.extractor, self.sampling_rate)
        self.num_blocks = self.model.config.num_hidden_layers
        self.dim = self.model.config.hidden_size
        self.uses_cls = _has_cls_token(self.model)
        if not self.uses_cls and not hasattr(self.model, "_get_feat_extract_output_lengths"):
            raise ValueError(f"{source}: a {config.model_type} model has neither a [CLS] token nor a known "
                             "mapping from input length to positions, so padding cannot be told from audio")
        self._config_hash = config_hash(self.model.config)
        self.freeze()

    def windows(self, samples: np.ndarray) -> list[np.ndarray]:
        return [samples[start:start + self.window_length] for start in range(0, len(samples), self.window_length)]

    def featurize(self, windows: list[np.ndarray]) -> BatchFeature:
        """The extractor's inputs, plus each window's count of real-audio positions when pooling needs it."""
        # Whisper pads every window to 30 s by itself; the others pad a batch to its longest window.
        padding = {} if isinstance(self.extractor, WhisperFeatureExtractor) else {"padding": "longest"}
        inputs = self.extractor(windows, sampling_rate=self.sampling_rate, return_tensors="pt",
                                return_attention_mask=not self.uses_cls, **padding)
        if not self.uses_cls:
            real = inputs["attention_mask"].sum(dim=-1)  # in the model's input units: mel frames or samples
            inputs["valid_positions"] = self.model._get_feat_extract_output_lengths(real).long()
            if not self.extractor.return_attention_mask:  # models trained without one must not be given one
                del inputs["attention_mask"]
        return inputs

    def window_tokens(self, batch: BatchFeature) -> torch.Tensor:
        inputs = {key: batch[key] for key in self.extractor.model_input_names if key in batch}
        hidden = self.model(**inputs, output_hidden_states=True).hidden_states[1:]  # [0] is the embeddings
        if self.uses_cls:
            return torch.stack([h[:, 0] for h in hidden], dim=1)
        return torch.stack([masked_mean(h, batch["valid_positions"]) for h in hidden], dim=1)

    def fingerprint(self) -> str:
        processing = json.dumps(self.extractor.to_dict(), sort_keys=True, default=str)
        processing_hash = hashlib.sha256(processing.encode()).hexdigest()[:12]
        pooling = "cls" if self.uses_cls else "real-audio-mean"
        return (f"hf-audio:{self.name}:config-{self._config_hash}:processor-{processing_hash}:{pooling}"
                f":window-{self.window_length}:{self.audio_fingerprint()}")

