"""Settings naming a frozen model are compared as the models they name, however the path is spelled: ``lm``,
``lm/``, ``./lm``, a relative path or a link to it are one LM to merge, compose and ``training.init_from``."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorium.cli import main
from sensorium.config import AdapterConfig
from sensorium.trained import layout_differences, read_ingredient


@pytest.fixture
def spellings(tiny_lm_folder, tmp_path, monkeypatch) -> tuple[list[str], str]:
    """(ways of naming the tiny LM's folder, a copy of it elsewhere: another LM with the same bytes)."""
    monkeypatch.chdir(tmp_path)
    folder = Path(tiny_lm_folder("llama"))
    (tmp_path / "link").symlink_to(folder)
    copy = shutil.copytree(folder, tmp_path / "copy")
    return [str(folder), f"{folder}/", str(folder / "."), f"{folder}//", os.path.relpath(folder), "link",
            "./link/"], str(copy)


def _respelled(folder: str, lm: str, out: Path) -> Path:
    """The adapter in ``folder`` copied to ``out``, its config naming its LM as ``lm``."""
    shutil.copytree(folder, out, dirs_exist_ok=True)
    config = AdapterConfig.load(out)
    dataclasses.replace(config, lm=lm).save(out)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_one_lm_however_spelled_is_one_lm(tiny_adapter_folders, spellings, tmp_path, data):
    names, copy = spellings
    first, second = data.draw(st.sampled_from(names)), data.draw(st.sampled_from([*names, copy]))
    adapters = [read_ingredient(_respelled(tiny_adapter_folders[name], lm, tmp_path / name))
                for name, lm in (("shapes", first), ("captions", second))]
    problems = layout_differences(adapters)
    assert (problems == []) == (second != copy)
    assert all(problem.startswith("lm: ") for problem in problems)


def test_merge_and_compose_take_a_trailing_slash(tiny_adapter_folders, spellings, tmp_path, capsys):
    names, _ = spellings
    first = _respelled(tiny_adapter_folders["shapes"], names[0], tmp_path / "first")
    second = _respelled(tiny_adapter_folders["captions"], names[1], tmp_path / "second")
    assert main(["merge", str(first), str(second), "--out", str(tmp_path / "merged")]) == 0
    assert main(["compose", str(first), str(second), "--out", str(tmp_path / "composed")]) == 0
    assert "composed first, second" in capsys.readouterr().out
