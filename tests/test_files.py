"""Every reader of a user's file reads regular files only, their size checked before a byte is read: a folder,
/dev/zero, a FIFO or a link to one is refused in one line, never read whole or waited on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorium.cache import content_key
from sensorium.cli import main
from sensorium.config import AdapterConfig
from sensorium.data import jsonl
from sensorium.data.examples import load_json
from sensorium.errors import BadInputError
from sensorium.files import regular_file
from sensorium.media import load_audio, load_image, load_video
from sensorium.recipe import read_recipe_file

READERS = {
    "image": load_image, "video": load_video, "audio": load_audio, "cache key": content_key,
    "annotations": load_json, "manifest": jsonl.read, "recipe": read_recipe_file,
    "adapter config": lambda path: AdapterConfig.load(Path(path).parent),
}


@pytest.fixture(scope="module")
def specials(tmp_path_factory) -> dict[str, Path]:
    """Paths that are not regular files, each under the name the adapter reader looks for too."""
    root = tmp_path_factory.mktemp("specials")
    paths = {}
    for kind in ("folder", "fifo", "link-to-fifo", "dev-zero", "dev-null"):
        (root / kind).mkdir()
        paths[kind] = root / kind / "adapter_config.json"
    paths["folder"].mkdir()
    os.mkfifo(paths["fifo"])
    paths["link-to-fifo"].symlink_to(paths["fifo"])
    paths["dev-zero"].symlink_to("/dev/zero")
    paths["dev-null"].symlink_to("/dev/null")
    return paths


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["folder", "fifo", "link-to-fifo", "dev-zero", "dev-null"]), reader=st.sampled_from(
    sorted(READERS)))
def test_no_reader_opens_what_is_not_a_regular_file(specials, kind, reader):
    with pytest.raises(BadInputError, match="not a regular file"):
        READERS[reader](str(specials[kind]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=64), limit=st.integers(0, 80))
def test_a_regular_file_is_refused_past_its_limit_before_it_is_read(tmp_path, content, limit):
    path = tmp_path / "file"
    path.write_bytes(content)
    if len(content) > limit:
        with pytest.raises(BadInputError, match=f"{len(content):,} bytes, more than the {limit:,}"):
            regular_file(path, limit)
    else:
        assert regular_file(path, limit) == path


def test_ask_and_eval_refuse_a_device_and_a_fifo(tiny_adapter_folders, specials, tmp_path, capsys):
    adapter = tiny_adapter_folders["shapes"]
    for path in ("/dev/zero", specials["fifo"]):
        assert main(["ask", adapter, str(path), "what color ?"]) == 2
        assert f"{path}: not a regular file" in capsys.readouterr().err
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(f'{{"media": "{specials["fifo"]}", "question": "q ?", "answers": ["a"]}}\n')
    assert main(["eval", adapter, "--data", str(manifest)]) == 2
    assert "not a regular file (a FIFO)" in capsys.readouterr().err
