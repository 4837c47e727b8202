"""Loading transformers folders and hub ids without running anything they bring.

A model folder can ship Python: ``auto_map`` in its config names classes in its own .py files, which
transformers imports and runs when ``trust_remote_code=True``, and asks "y/N" on stdin about when the
argument is left unset and it does not know the architecture. Sensorium never runs such code. Every
``from_pretrained`` goes through ``from_pretrained`` here, which refuses a folder that declares custom
code before transformers opens it, passes ``trust_remote_code=False`` all the same, and reports a
weights pickle that ``torch.load(weights_only=True)`` refuses as one line naming the folder.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from transformers.utils import cached_file

from .errors import BadInputError

# The files through which transformers' Auto classes find custom code: the model's and its config's
# (config.json), a tokenizer's, a processor's, and an image processor's or feature extractor's.
CUSTOM_CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
# How torch's weights_only refusals begin their lines of advice, around the one naming what was refused.
TORCH_ADVICE = ("Weights only load failed", "(1) In PyTorch", "(2) Alternatively", "Check the documentation",
                "Please file an issue")


def _find(source: str, name: str) -> Path | None:
    """``name`` in a local folder, or in the local copy of a hub model; never downloaded here."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder / name if (folder / name).is_file() else None
    try:
        found = cached_file(source, name, local_files_only=True, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False)
    except (OSError, ValueError):  # not a hub id, or not in the local cache
        return None
    return Path(found) if found else None


def refuse_custom_code(source: str | Path, what: str) -> None:
    """A BadInputError naming the folder (or hub id) when one of its configs declares custom code."""
    for name in CUSTOM_CODE_FILES:
        path = _find(str(source), name)
        if path is None:
            continue
        try:
            spec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # transformers reports a file it cannot parse, with its own words
        if isinstance(spec, dict) and "auto_map" in spec:
            raise BadInputError(f"{what} '{source}': {name} declares custom code (auto_map); sensorium never "
                                "runs code from a model folder")


def from_pretrained(loader: Any, source: str | Path, what: str, **kwargs: Any) -> Any:
    """``loader.from_pretrained(source, **kwargs)`` that runs no code of the source's and unpickles nothing.

    ``what`` names the source in errors ("language model", "encoder"). transformers reads a
    pytorch_model.bin with ``torch.load(weights_only=True)``, which refuses pickles holding anything but
    tensors; that refusal is the user's input being unusable, so it is one line, not a traceback.
    """
    refuse_custom_code(source, what)
    try:
        return loader.from_pretrained(str(source), trust_remote_code=False, **kwargs)
    except pickle.UnpicklingError as error:
        raise BadInputError(f"{what} '{source}': a weights pickle that torch.load(weights_only=True) refuses "
                            f"({refusal_reason(error)}); sensorium never unpickles objects, use safetensors weights"
                            ) from error


def refusal_reason(error: Exception) -> str:
    """torch's multi-line refusal cut to the sentence that says what was refused: its advice, which ends in how to
    allow the object, dropped."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(TORCH_ADVICE)]
    return (said or lines or ["not a pickle of tensors"])[0].split(". ")[0]
