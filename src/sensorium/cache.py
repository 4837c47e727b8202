"""Feature cache: the frozen encoder runs once per media file, never again in later epochs or runs.

Features are keyed by the file's content hash inside a folder named by the encoder's fingerprint
(weights + preprocessing, frame sampling for videos), so a renamed copy hits the cache and a changed
preprocessing misses it.
Patch tokens are (1 + patches) times larger than one token per block: for them the cache keeps only the
blocks the connector reads (``blocks``, part of the folder's key) and stores them in bfloat16, which halves
them again at no cost to training in bf16 mixed precision, where the connector rounds its inputs to bf16
anyway. [CLS] features stay float32, every block, exactly as they always were.

Each computation appends one shard (safetensors, memory-mapped on load); a shard becomes visible
only after an atomic rename, so a crash never leaves a half-written entry behind.

Under a multi-process launch (``accelerate launch``, ``torchrun``) every process hashes and encodes
a disjoint share of the files and writes its own uniquely named shard; after the last share is
written every process reads the complete cache. Processes on several machines can share one cache
folder on shared storage the same way.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import uuid
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .encoders import Encoder
from .errors import BadInputError
from .zoo import cache_dir


def _write_atomically(path: Path, text: str) -> None:
    """Readers (other processes too) see the old file or the new one, never a partial write."""
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def content_key(path: str) -> str:
    try:
        return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()
    except FileNotFoundError as error:
        raise BadInputError(f"{path}: file not found") from error
    except OSError as error:
        raise BadInputError(f"{path}: unreadable ({error.strerror})") from error


def _key_or_error(path: str) -> tuple[str, str | None, str | None]:
    """(path, content key, None) or (path, None, one-line error): errors travel between processes."""
    try:
        return path, content_key(path), None
    except BadInputError as error:
        return path, None, str(error)


class _Decode:
    """Runs in DataLoader workers: the encoder's own reading (image decoding, video frame sampling) and
    preprocessing, so decoding overlaps the encoder's forward."""

    def __init__(self, encoder: Encoder) -> None:
        self.load, self.preprocess = encoder.load, encoder.preprocess

    def __call__(self, paths: list[str]) -> tuple[list[str], torch.Tensor | None, list[str]]:
        good, media, bad = [], [], []
        for path in paths:
            try:
                media.append(self.load(path))
                good.append(path)
            except BadInputError as error:
                bad.append(str(error))
        return good, (self.preprocess(media) if media else None), bad


def stored_features(encoder: Encoder, tokens: torch.Tensor, blocks: list[int] | None = None) -> torch.Tensor:
    """What the cache keeps of an encoder's output: the chosen blocks (all by default), in the tokens' storage dtype."""
    if blocks is not None:
        tokens = tokens[:, blocks]
    return tokens.to(torch.bfloat16 if encoder.tokens == "patches" else torch.float32)


def _decoder_start(workers: int) -> str | None:
    """Decoding workers are forked wherever the platform can fork. A spawned worker would need the encoder
    pickled, and after its first forward a transformers model holds output-capturing hooks that cannot be
    pickled; spawn is also the default inside a process that was itself spawned (``compare --jobs``). The
    decoders never touch the GPU, so forking a process that uses CUDA is safe for them."""
    return "fork" if workers and "fork" in multiprocessing.get_all_start_methods() else None


class FeatureCache:
    """Features of ``encoder`` for media files; with ``blocks``, only those blocks (see ``stored_features``)."""

    def __init__(self, encoder: Encoder, root: Path | None = None, blocks: list[int] | None = None) -> None:
        self.encoder = encoder
        self.blocks = blocks
        key = encoder.fingerprint() + ("" if blocks is None else f":blocks={','.join(map(str, blocks))}")
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        self.folder = (root or cache_dir() / "features") / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.folder / "encoder.txt", key + "\n")

    def _index(self) -> dict[str, tuple[Path, int]]:
        index = {}
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            keys = json.loads(shard.with_suffix(".json").read_text())
            index.update({key: (shard, row) for row, key in enumerate(keys)})
        return index

    def features(self, paths: list[str], batch_size: int = 32, workers: int = 1,
                 skip_bad: bool = False) -> tuple[torch.Tensor, dict[str, int], list[str]]:
        """Features [files, blocks, (frames,) dim] of the distinct readable files, each file's row, and errors.

        Without ``skip_bad`` the first unreadable file raises BadInputError; with it, unreadable
        files are left out and their one-line errors returned.
        """
        state = PartialState()
        with state.split_between_processes(list(dict.fromkeys(paths))) as share:
            hashed = [_key_or_error(path) for path in share]
        keys, errors = {}, []
        for path, key, error in gather_object(hashed):  # every process gets every file's key, in order
            if error is None:
                keys[path] = key
            else:
                errors.append(error)
        if errors and not skip_bad:
            raise BadInputError(errors[0])
        # One file per distinct content that the cache does not hold yet, decided once for all processes.
        index = self._index()
        missing = broadcast_object_list([list({k: p for p, k in keys.items() if k not in index}.values())])[0]
        if missing:
            with state.split_between_processes(missing) as share:
                computed = self._compute(share, keys, batch_size, workers, skip_bad, state.is_main_process)
            # Gathering waits for every process, so every share's shard is written before the index is read.
            errors += gather_object(computed)
            index = self._index()
        readable = [p for p, k in keys.items() if k in index]
        features = self._gather([index[keys[p]] for p in readable])
        return features, {p: row for row, p in enumerate(readable)}, errors

    @staticmethod
    def _gather(locations: list[tuple[Path, int]]) -> torch.Tensor:
        shards = {shard: load_file(shard)["features"] for shard in {s for s, _ in locations}}
        if not locations:
            return torch.empty(0)
        return torch.stack([shards[shard][row] for shard, row in locations])

    def _compute(self, paths: list[str], keys: dict[str, str], batch_size: int, workers: int,
                 skip_bad: bool, show_progress: bool) -> list[str]:
        if not paths:
            return []
        loader = DataLoader(paths, batch_size=batch_size, num_workers=workers, collate_fn=_Decode(self.encoder),
                            multiprocessing_context=_decoder_start(workers))
        device = next(self.encoder.parameters()).device
        done_keys, chunks, errors = [], [], []
        with tqdm(total=len(paths), desc="encoding (feature cache)", unit="file",
                  disable=not show_progress) as progress:
            for good, pixels, bad in loader:
                if bad and not skip_bad:
                    raise BadInputError(bad[0])
                errors += bad
                if pixels is not None:
                    with torch.inference_mode():
                        chunks.append(stored_features(self.encoder, self.encoder(pixels.to(device)), self.blocks).cpu())
                    done_keys += [keys[p] for p in good]
                progress.update(len(good) + len(bad))
        if chunks:
            self._write_shard(torch.cat(chunks), done_keys)
        return errors

    def _write_shard(self, features: torch.Tensor, keys: list[str]) -> None:
        """A random 128-bit name: concurrent writers (processes, machines) never pick the same one.

        The key list is in place before the shard appears, so a reader never finds a shard without it.
        """
        name = f"shard-{uuid.uuid4().hex}"
        scratch = self.folder / f".{name}.tmp"
        save_file({"features": features.contiguous()}, str(scratch))
        _write_atomically(self.folder / f"{name}.json", json.dumps(keys))
        os.replace(scratch, self.folder / f"{name}.safetensors")  # visible only once complete
