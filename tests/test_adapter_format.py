"""The adapter format: recorded in adapter_config.json with the sensorium release, refused when newer than
this code reads, format 1 when a config predates the record."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import one_line_error, save_tiny_adapter

from sensorium import AdapterConfig, PerceptualLM
from sensorium.cli import main
from sensorium.config import CONFIG_NAME, FORMAT_VERSION
from sensorium.errors import BadInputError

REFERENCE_ADAPTER = Path(__file__).parent / "data" / "epalm-reference" / "llama-image" / "adapter"


@pytest.fixture
def adapter(tiny_lm_folder, tiny_vit_folder, tmp_path) -> Path:
    return Path(save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path / "adapter"))


def rewrite_config(folder: Path, **changes) -> dict:
    """Change the saved config's keys (None removes one); its new values."""
    values = {**json.loads((folder / CONFIG_NAME).read_text()), **changes}
    values = {key: value for key, value in values.items() if value is not None}
    (folder / CONFIG_NAME).write_text(json.dumps(values))
    return values


def test_a_saved_adapter_records_its_format_and_the_sensorium_release(adapter, tmp_path):
    saved = json.loads((adapter / CONFIG_NAME).read_text())
    assert (saved["format_version"], saved["sensorium_version"]) == (FORMAT_VERSION, version("sensorium"))
    PerceptualLM.from_pretrained(adapter).save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / CONFIG_NAME).read_text()) == saved


def test_a_newer_format_is_refused_in_one_line_naming_the_file(adapter, image, capsys):
    # A newer format may bring settings this code does not know: the format is what the message names.
    rewrite_config(adapter, format_version=FORMAT_VERSION + 1, sensorium_version="99.0", blend="gated")
    assert main(["ask", str(adapter), image, "what ?"]) == 2
    err = one_line_error(capsys)
    assert f"{adapter / CONFIG_NAME}: format_version: adapter format {FORMAT_VERSION + 1} is newer than " \
           f"this sensorium reads ({FORMAT_VERSION})" in err
    assert "blend" not in err


@pytest.mark.parametrize("format_version, message", [
    (0, "format_version must be > 0, not 0"),
    ("1", "format_version must be a number, not '1'"),
])
def test_a_malformed_format_is_named(adapter, format_version, message):
    rewrite_config(adapter, format_version=format_version)
    with pytest.raises(BadInputError, match=message):
        AdapterConfig.load(adapter)


def test_a_config_saved_before_the_format_was_recorded_is_format_1(adapter):
    saved = AdapterConfig.load(adapter)
    assert "format_version" not in rewrite_config(adapter, format_version=None, sensorium_version=None)
    assert AdapterConfig.load(adapter) == saved
    PerceptualLM.from_pretrained(adapter)
    assert "format_version" not in json.loads((REFERENCE_ADAPTER / CONFIG_NAME).read_text())
    assert AdapterConfig.load(REFERENCE_ADAPTER).num_blocks == 3
