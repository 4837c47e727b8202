"""What every audio encoder shares: reading sound files, windows over long clips, pooling into one token per block.

An audio model sees a bounded stretch of sound at once (Whisper 30 s, AST 10.24 s, YAMNet 0.96 s patches).
A clip is cut into such windows, every window of every clip in a batch is encoded at once, and each clip's
token of a block is the mean of its windows' tokens weighted by how much real sound each window holds: a
35 s clip is one full 30 s window and a 5 s remainder, not two equal halves. Inside a window, models without
a [CLS] token average only the positions that hold real audio, never the padding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import BatchFeature

from ..media.audio import Waveform, load_audio
from .base import Encoder

RESAMPLING = "soxr-hq"  # named in fingerprints: another resampler would give other samples


def masked_mean(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[windows, positions, dim] -> [windows, dim]: the mean over each window's first ``lengths`` positions."""
    valid = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
    weights = valid.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class AudioEncoder(Encoder):
    """``preprocess`` gives a BatchFeature of all windows; ``forward`` gives [clips, blocks, dim].

    Subclasses say how a waveform is cut (``windows``), how windows become model inputs (``featurize``)
    and how the model turns them into per-block tokens (``window_tokens``).
    """

    modality = "audio"
    sampling_rate: int = 16_000

    def load(self, path: str | Path) -> Waveform:
        return load_audio(path, self.sampling_rate)

    def windows(self, samples: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def featurize(self, windows: list[np.ndarray]) -> BatchFeature:
        raise NotImplementedError

    def window_tokens(self, batch: BatchFeature) -> torch.Tensor:
        raise NotImplementedError

    def preprocess(self, media: list[Waveform]) -> BatchFeature:
        """Model inputs of every window, with the clip each belongs to and its length in samples."""
        windows, clip_index = [], []
        for clip, waveform in enumerate(media):
            parts = self.windows(waveform.resampled(self.sampling_rate).samples)
            windows += parts
            clip_index += [clip] * len(parts)
        batch = self.featurize(windows)
        batch["clip_index"] = torch.tensor(clip_index)
        batch["window_samples"] = torch.tensor([len(window) for window in windows])
        return batch

    def forward(self, batch: BatchFeature) -> torch.Tensor:
        tokens = self.window_tokens(batch)  # [windows, blocks, dim]
        clips = batch["clip_index"].to(tokens.device)
        weights = batch["window_samples"].to(tokens.device, tokens.dtype)
        count = int(clips.max()) + 1
        sums = tokens.new_zeros(count, *tokens.shape[1:]).index_add_(0, clips, tokens * weights[:, None, None])
        totals = tokens.new_zeros(count).index_add_(0, clips, weights)
        return sums / totals[:, None, None]

    def audio_fingerprint(self) -> str:
        """The reading and pooling part of every audio encoder's fingerprint."""
        return f"{self.sampling_rate}Hz-mono-{RESAMPLING}:weighted-window-mean"
