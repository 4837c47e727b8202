"""Where a command writes, checked before it does any work: an output never replaces one of the command's own inputs,
and a path that cannot take the output is refused at the start, not after the work, in a traceback.

Files are compared as the file system sees them (``os.path.samefile``): ``data/train.jsonl``, ``./data/../data/
train.jsonl`` and a link to it are one file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .config import CONFIG_NAME, QUESTIONS_NAME, WEIGHTS_NAME
from .errors import BadInputError


def adapter_files(folder: str | Path) -> list[Path]:
    """The files of an adapter folder (what writing an adapter into that folder would replace)."""
    return [Path(folder) / CONFIG_NAME, Path(folder) / WEIGHTS_NAME, Path(folder) / QUESTIONS_NAME]


def data_files(spec: dict[str, Any] | list[dict[str, Any]]) -> list[Path]:
    """The files a data spec names (a manifest, a questions or annotations file); folders of media are left out."""
    specs = spec if isinstance(spec, list) else [spec]
    return [Path(value) for part in specs for value in part.values()
            if isinstance(value, str) and Path(value).is_file()]


def check_outputs(writes: Iterable[str | Path], reads: Iterable[str | Path], flag: str = "--out") -> None:
    """Refuse, in one line naming ``flag``, to write any of ``writes`` where it cannot go or where it would replace
    a file the command reads (``reads``): an output that is an existing folder, one under an existing file, one
    that is an input however either is spelled (``..``, links, hard links)."""
    sources = [Path(path) for path in reads if Path(path).exists()]
    for path in map(Path, writes):
        real = _real(path)
        if real.is_dir():
            raise BadInputError(f"{flag}: {path} is a folder, where an output file goes")
        blocking = next((parent for parent in real.parents if parent.exists()), None)
        if blocking is not None and not blocking.is_dir():
            raise BadInputError(f"{flag}: {blocking} is a file, where the folder of {path.name} goes")
        replaced = next((source for source in sources if _real(source) == real
                         or (real.exists() and os.path.samefile(real, source))), None)
        if replaced is not None:
            raise BadInputError(f"{flag}: writing {path} would replace the input {replaced}; choose another {flag}")


def _real(path: Path) -> Path:
    """The path the file system will write to: links followed, ``..`` taken even below a folder not made yet (as
    writing it does, once its parents are made)."""
    return Path(os.path.realpath(path))
