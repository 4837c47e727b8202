"""Outputs never replace their own inputs, and an output path that cannot take them is refused before any work."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import file_bytes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from sensorium.cli import main


def _spellings(folder: Path, link: Path) -> list[str]:
    """Ways of naming one folder: as given, with a trailing slash, through '.' and '..', relative, through a link."""
    return [str(folder), f"{folder}/", str(folder / "."), str(folder / "sub" / ".."), os.path.relpath(folder),
            str(link)]


@pytest.fixture
def workspace(tmp_path, tiny_adapter_folders, monkeypatch):
    """A folder holding a manifest with its images, two adapters of one layout, an existing file and a link to each
    input folder."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for index, rgb in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.new("RGB", (32, 32), rgb).save(data / f"{index}.png")
        lines.append({"media": f"{index}.png", "question": "what color is the shape ?", "answers": ["red"]})
    (data / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    for name, folder in tiny_adapter_folders.items():
        shutil.copytree(folder, tmp_path / name)
    (tmp_path / "a-file").write_text("not a folder\n")
    for name in ("data", "shapes", "captions"):
        (tmp_path / f"link-{name}").symlink_to(tmp_path / name)
    return tmp_path


def _target(workspace: Path, draw) -> tuple[str, str]:
    """(what it is, an --out): an input's folder however spelled, an existing file, a folder below a file, or a
    fresh folder."""
    kind = draw(st.sampled_from(["data", "shapes", "captions", "a-file", "below-a-file", "fresh"]))
    if kind in ("data", "shapes", "captions"):
        return kind, draw(st.sampled_from(_spellings(workspace / kind, workspace / f"link-{kind}")))
    return kind, {"a-file": "a-file", "below-a-file": "a-file/out", "fresh": "new/out"}[kind]


def _inputs(workspace: Path) -> dict[Path, bytes]:
    """Every input file's bytes, by its path."""
    files = {workspace / "a-file": (workspace / "a-file").read_bytes()}
    for name in ("data", "shapes", "captions"):
        files.update({workspace / name / path: content for path, content in file_bytes(workspace / name).items()})
    return files


def _unchanged(workspace: Path, before: dict[Path, bytes]) -> bool:
    """Whether every input file is still there, byte for byte (a merge into the data folder may add files)."""
    return all(path.is_file() and path.read_bytes() == content for path, content in before.items())


def _one_line_or_success(code: int, capsys) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 2)
    if code == 2:
        assert err[-1].startswith("sensorium: error: --out: "), err[-1]


SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=st.data())
@example(data=None)
def test_data_split_never_replaces_its_input(workspace, data, capsys):
    kind, out = _target(workspace, data.draw) if data is not None else ("data", "data")
    before = _inputs(workspace)
    code = main(["data", "split", str(workspace / "data" / "train.jsonl"), "--held-out", "1", "--out", out])
    _one_line_or_success(code, capsys)
    assert _unchanged(workspace, before)
    # Its manifests go anywhere but over the manifest it splits (or where a file stands).
    assert code == (2 if kind in ("data", "a-file", "below-a-file") else 0)


@SETTINGS
@given(data=st.data())
@example(data=None)
def test_merge_never_replaces_an_ingredient(workspace, data, capsys):
    kind, out = _target(workspace, data.draw) if data is not None else ("shapes", "shapes")
    before = _inputs(workspace)
    code = main(["merge", str(workspace / "shapes"), str(workspace / "captions"), "--out", out])
    _one_line_or_success(code, capsys)
    assert _unchanged(workspace, before)
    # A merge into the data folder replaces none of its files; into an adapter's folder it would replace the adapter.
    assert code == (0 if kind in ("data", "fresh") else 2)


@pytest.mark.parametrize("command", [
    ["eval", "shapes", "--data", "data/train.jsonl", "--predictions", "data/train.jsonl"],
    ["eval", "shapes", "--data", "data/train.jsonl", "--predictions", "data"],
    ["compose", "shapes", "captions", "--out", "a-file"],
    ["soup", "shapes", "link-shapes", "--data", "data/train.jsonl", "--out", "link-shapes/"],
    ["interpolate", "shapes", "captions", "--first-data", "data/train.jsonl", "--second-data", "data/train.jsonl",
     "--out", "a-file/plots"],
])
def test_every_writing_verb_checks_its_output_first(workspace, command, capsys):
    before = _inputs(workspace)
    assert main(command) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"sensorium: error: {command[-2]}: ")
    assert _unchanged(workspace, before)
