"""Audio decoding: any sound file, or the audio track of a video, as one mono waveform at the encoder's rate.

WAV, FLAC and Ogg are read by libsndfile (soundfile); everything else (MP3, AAC/M4A, Opus in WebM, the audio
track of an MP4) by FFmpeg through PyAV. The format is recognised from the content, never from the file name.
Channels are averaged to mono and the rate is converted by soxr (high quality, deterministic), so the feature
cache holds the same samples on every machine.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile
import soxr

from ..errors import BadInputError
from ..files import MAX_MEDIA_BYTES, regular_file
from .ffmpeg import first_stream, open_container

# libsndfile formats read by soundfile; anything else goes to FFmpeg (libsndfile's MP3 support included).
SOUNDFILE_FORMATS = ("WAV", "WAVEX", "FLAC", "OGG", "AIFF", "W64", "RF64")
SOUNDFILE_BLOCK = 2**16  # frames read at a time
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".wma")


class AudioTooLongError(BadInputError):
    """Sound longer than the caller accepts, found while decoding (before it is all in memory)."""


@dataclass(frozen=True)
class Waveform:
    """Mono samples in [-1, 1] (float32) and their rate: what an audio encoder preprocesses."""

    samples: np.ndarray
    sampling_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sampling_rate

    def resampled(self, rate: int) -> Waveform:
        if rate == self.sampling_rate:
            return self
        samples = soxr.resample(self.samples, self.sampling_rate, rate, quality="HQ")
        return Waveform(samples.astype(np.float32, copy=False), rate)


def load_audio(source: str | Path | BinaryIO, sampling_rate: int | None = None, name: str | None = None,
               max_seconds: float | None = None) -> Waveform:
    """The sound of a file or binary stream, mono, at ``sampling_rate`` (None: the file's own rate).

    Every unusable input is a BadInputError naming it (``name`` names a stream): missing, empty, not audio,
    corrupt, without an audio stream (a silent video), without a single sample, or longer than ``max_seconds``.
    """
    name = name or str(source)
    if isinstance(source, (str, Path)):
        path = regular_file(source, MAX_MEDIA_BYTES)
        if path.stat().st_size == 0:
            raise BadInputError(f"{name}: empty file")
        source = str(path)
    decoded = _read_soundfile(source, name, max_seconds)
    if decoded is None:
        if isinstance(source, io.IOBase):
            source.seek(0)
        decoded = _read_ffmpeg(source, name, max_seconds)
    samples, rate = decoded
    if not len(samples):
        raise BadInputError(f"{name}: no audio samples (zero-length audio)")
    waveform = Waveform(samples, rate)
    return waveform if sampling_rate is None else waveform.resampled(sampling_rate)


def _check_length(seconds: float, name: str, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLongError(f"{name}: audio longer than {max_seconds:g} s")


def _read_soundfile(source: str | BinaryIO, name: str, max_seconds: float | None) -> tuple[np.ndarray, int] | None:
    """Mono samples and rate via libsndfile, or None when the content is not one of its formats read here."""
    try:
        with soundfile.SoundFile(source) as file:
            if file.format not in SOUNDFILE_FORMATS:
                return None
            _check_length(file.frames / file.samplerate, name, max_seconds)
            return _read_blocks(file), file.samplerate
    except (soundfile.LibsndfileError, RuntimeError):
        return None  # unrecognised or damaged for libsndfile: FFmpeg decides, and names the problem


def _read_blocks(file: soundfile.SoundFile) -> np.ndarray:
    """Mono samples, read block by block until the data ends: memory follows the samples the file holds,
    not the count its header declares (a damaged header may declare billions)."""
    chunks = []
    while True:
        block = file.read(SOUNDFILE_BLOCK, dtype="float32", always_2d=True)
        if len(block):
            chunks.append(block.mean(axis=1))
        if len(block) < SOUNDFILE_BLOCK:
            return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def _read_ffmpeg(source: str | BinaryIO, name: str, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Mono samples and rate of the first audio stream, decoded by FFmpeg."""
    with open_container(source, name, "audio") as container:
        stream = first_stream(container, name, "audio")
        to_float = av.AudioResampler(format="fltp")  # sample format only: layout and rate stay the file's
        chunks, rate, count = [], stream.sample_rate, 0
        try:
            for frame in container.decode(stream):
                for converted in to_float.resample(frame):
                    chunks.append(converted.to_ndarray().mean(axis=0))  # [channels, samples] -> mono
                    rate, count = converted.sample_rate, count + converted.samples
                    _check_length(count / rate, name, max_seconds)
        except av.error.FFmpegError as error:
            raise BadInputError(f"{name}: corrupt audio data ({error})") from error
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    return samples, rate
