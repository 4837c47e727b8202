"""Feature cache: the frozen encoder runs once per media file, never again in later epochs or runs.

Features are keyed by the file's content hash inside a folder named by the encoder's fingerprint
(weights + preprocessing, frame sampling for videos), so a renamed copy hits the cache and a changed
preprocessing misses it.
Patch tokens are (1 + patches) times larger than one token per block: for them the cache keeps only the
blocks the connector reads (``blocks``, part of the folder's key) and stores them in bfloat16, which halves
them again at no cost to training in bf16 mixed precision, where the connector rounds its inputs to bf16
anyway. [CLS] features stay float32, every block, exactly as they always were.

Each computation appends one shard (safetensors); a shard becomes visible only after an atomic rename,
so a crash never leaves a half-written entry behind. Its index (``shard-*.json``) holds the content keys
of its rows and the sha256 digest of the shard file, written at creation; the keys are also stored
inside the shard. A shard is verified when it is opened: a digest or key list that does not match
(a rewritten, truncated, zeroed or NaN-filled shard, a permuted key list) means its files are computed
again, with a warning naming the shard, never used (see ``FeatureCache._open``).

Under a multi-process launch (``accelerate launch``, ``torchrun``) every process hashes and encodes
a disjoint share of the files and writes its own uniquely named shard; after the last share is
written every process reads the complete cache. Processes on several machines can share one cache
folder on shared storage the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import uuid
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .encoders import Encoder
from .errors import BadInputError
from .files import MAX_MEDIA_BYTES, regular_file
from .layout import FEATURE_DTYPES
from .zoo import cache_dir

logger = logging.getLogger(__name__)


def _write_atomically(path: Path, text: str) -> None:
    """Readers (other processes too) see the old file or the new one, never a partial write."""
    scratch = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    scratch.write_text(text)
    os.replace(scratch, path)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class DamagedShard(Exception):
    """A cache shard that fails verification; the message says how."""


def content_key(path: str) -> str:
    try:
        return hashlib.blake2b(regular_file(path, MAX_MEDIA_BYTES).read_bytes(), digest_size=16).hexdigest()
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


def stored_features(encoder: Encoder, tokens: torch.Tensor, blocks: tuple[int, ...] | None = None) -> torch.Tensor:
    """What the cache keeps of an encoder's output: the chosen blocks (all by default), in the tokens' storage dtype."""
    if blocks is not None:
        tokens = tokens[:, blocks]
    return tokens.to(getattr(torch, FEATURE_DTYPES[encoder.tokens]))


def _decoder_start(workers: int) -> str | None:
    """Decoding workers are forked wherever the platform can fork. A spawned worker would need the encoder
    pickled, and after its first forward a transformers model holds output-capturing hooks that cannot be
    pickled; spawn is also the default inside a process that was itself spawned (``compare --jobs``). The
    decoders never touch the GPU, so forking a process that uses CUDA is safe for them."""
    return "fork" if workers and "fork" in multiprocessing.get_all_start_methods() else None


class FeatureCache:
    """Features of ``encoder`` for media files; with ``blocks``, only those blocks (see ``stored_features``)."""

    def __init__(self, encoder: Encoder, root: Path | None = None, blocks: tuple[int, ...] | None = None) -> None:
        self.encoder = encoder
        self.blocks = blocks
        key = encoder.fingerprint() + ("" if blocks is None else f":blocks={','.join(map(str, blocks))}")
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        self.folder = (root or cache_dir() / "features") / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.folder / "encoder.txt", key + "\n")
        self._opened: dict[Path, torch.Tensor] = {}  # verified shards' features
        self._rejected: set[Path] = set()  # shards that failed verification

    def _index(self) -> dict[str, tuple[Path, int]]:
        """Each content key's (shard, row), from the shards' index files; rejected shards left out."""
        index = {}
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            if shard in self._rejected:
                continue
            try:
                keys = self._entry(shard)["keys"]
            except DamagedShard as error:
                self._reject(shard, str(error))
                continue
            index.update({key: (shard, row) for row, key in enumerate(keys)})
        return index

    @staticmethod
    def _entry(shard: Path) -> dict:
        """A shard's index record: ``{"keys": [...], "sha256": digest of the shard file}``."""
        try:
            entry = json.loads(shard.with_suffix(".json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DamagedShard(f"its index {shard.with_suffix('.json').name} is unreadable ({error})") from error
        if isinstance(entry, list):
            raise DamagedShard("written before shards carried a digest")
        if (not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str)
                or not isinstance(entry.get("keys"), list) or not all(isinstance(k, str) for k in entry["keys"])):
            raise DamagedShard(f"its index {shard.with_suffix('.json').name} is not a digest and a key list")
        return entry

    def _open(self, shard: Path) -> None:
        """Verify a shard and keep its features, or reject it.

        Verified: the file's sha256 is the one written at creation, the key list stored inside the shard
        equals its index's, and there is one row per key. Shards from before digests existed (a bare key
        list as index) are rejected too, so their files are encoded again once: the cache can always be
        recomputed, while trusting them would let a shard whose digest was lost pass unchecked.
        """
        try:
            entry = self._entry(shard)
            if _sha256(shard) != entry["sha256"]:
                raise DamagedShard("its content does not match the digest written with it")
            with safe_open(shard, "pt") as handle:
                stored_keys = json.loads((handle.metadata() or {}).get("keys", "null"))
                features = handle.get_tensor("features")
            if stored_keys != entry["keys"] or len(features) != len(entry["keys"]):
                raise DamagedShard("its key list does not match its rows")
        except (DamagedShard, OSError, ValueError, SafetensorError) as error:
            self._reject(shard, str(error))
            return
        self._opened[shard] = features

    def _reject(self, shard: Path, reason: str) -> None:
        """Leave a damaged shard out of this cache and remove it; its files are then computed again."""
        logger.warning("feature cache shard %s: %s; its files are encoded again", shard, reason)
        self._rejected.add(shard)
        shard.unlink(missing_ok=True)  # the shard first: a shard is visible only with its index
        shard.with_suffix(".json").unlink(missing_ok=True)

    def _verified_index(self, wanted: set[str]) -> dict[str, tuple[Path, int]]:
        """The index, after every shard holding a wanted key was opened and verified.

        A key of a rejected shard may also sit in another shard: re-index until every shard it
        points to is verified (each round verifies or rejects at least one shard).
        """
        while True:
            index = self._index()
            unopened = {index[key][0] for key in wanted if key in index} - self._opened.keys()
            if not unopened:
                return index
            for shard in sorted(unopened):
                self._open(shard)

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
        index = self._verified_index(set(keys.values()))
        missing = broadcast_object_list([list({k: p for p, k in keys.items() if k not in index}.values())])[0]
        if missing:
            with state.split_between_processes(missing) as share:
                computed = self._compute(share, keys, batch_size, workers, skip_bad, state.is_main_process)
            # Gathering waits for every process, so every share's shard is written before the index is read.
            errors += gather_object(computed)
            index = self._verified_index(set(keys.values()))
        readable = [p for p, k in keys.items() if k in index]
        features = self._gather([index[keys[p]] for p in readable])
        return features, {p: row for row, p in enumerate(readable)}, errors

    def _gather(self, locations: list[tuple[Path, int]]) -> torch.Tensor:
        if not locations:
            return torch.empty(0)
        return torch.stack([self._opened[shard][row] for shard, row in locations])

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

        The keys go inside the shard and, with the shard's digest, into its index, which is in place
        before the shard appears, so a reader never finds a shard without it.
        """
        name = f"shard-{uuid.uuid4().hex}"
        scratch = self.folder / f".{name}.tmp"
        save_file({"features": features.contiguous()}, str(scratch), metadata={"keys": json.dumps(keys)})
        _write_atomically(self.folder / f"{name}.json", json.dumps({"keys": keys, "sha256": _sha256(scratch)}))
        os.replace(scratch, self.folder / f"{name}.safetensors")  # visible only once complete
