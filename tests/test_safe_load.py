"""No code from a model folder ever runs, and weights pickles are never opened: one line instead."""

from __future__ import annotations

import ast
import builtins
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import sensorium
from sensorium import cli
from sensorium.encoders import load_encoder
from sensorium.errors import BadInputError
from sensorium.lm import load_lm

SRC = Path(sensorium.__file__).parent

# A folder's own code: importing it leaves a file behind, so a test can tell that it ran.
PROBE_CODE = """
from pathlib import Path
Path({marker!r}).write_text("the model folder's code ran")
from transformers import PretrainedConfig
class ProbeConfig(PretrainedConfig):
    model_type = "sensorium-probe"
"""


def with_custom_code(folder: str, out: Path, config_file: str = "config.json") -> Path:
    """A copy of a model folder whose ``config_file`` names classes of its own probe.py (auto_map)."""
    shutil.copytree(folder, out)
    marker = out.parent / f"{out.name}-code-ran"
    (out / "probe.py").write_text(PROBE_CODE.format(marker=str(marker)))
    path = out / config_file
    spec = json.loads(path.read_text()) if path.exists() else {}
    if config_file == "config.json":
        spec["model_type"] = "sensorium-probe"  # unknown to transformers: it would ask "y/N" on stdin
    spec["auto_map"] = {"AutoConfig": "probe.ProbeConfig", "AutoModel": "probe.ProbeModel",
                        "AutoModelForCausalLM": "probe.ProbeModel", "AutoTokenizer": ["probe.ProbeTokenizer", None]}
    path.write_text(json.dumps(spec))
    return out


def adapter_over(adapter: str, out: Path, **fields: str) -> str:
    """A copy of an adapter folder whose adapter_config.json names other frozen models."""
    shutil.copytree(adapter, out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, **fields}))
    return str(out)


@pytest.fixture
def image(tmp_path) -> str:
    path = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(path)
    return str(path)


@pytest.fixture
def no_stdin(monkeypatch):
    """Fail the test if anything asks the user a question."""

    def asked(*args, **kwargs):
        raise AssertionError("stdin was read")

    monkeypatch.setattr(builtins, "input", asked)


def test_cli_ask_refuses_a_language_model_with_custom_code_and_never_runs_it(tiny_adapter_folders, tiny_lm_folder,
                                                                             image, tmp_path):
    lm = with_custom_code(tiny_lm_folder("llama"), tmp_path / "custom-lm")
    adapter = adapter_over(tiny_adapter_folders["shapes"], tmp_path / "adapter", lm=str(lm))
    # "y" waits on stdin: were transformers to ask whether to run the folder's code, it would get a yes.
    done = subprocess.run([sys.executable, "-m", "sensorium", "ask", adapter, image, "what color ?"],
                          input="y\n" * 5, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [f"sensorium: error: language model '{lm}': config.json declares custom "
                                        "code (auto_map); sensorium never runs code from a model folder"]
    assert not (tmp_path / "custom-lm-code-ran").exists()


@pytest.mark.parametrize("config_file", ["config.json", "tokenizer_config.json"])
def test_language_model_folders_with_custom_code_are_refused_before_loading(tiny_lm_folder, tmp_path, no_stdin,
                                                                            config_file):
    lm = with_custom_code(tiny_lm_folder("llama"), tmp_path / "custom-lm", config_file)
    with pytest.raises(BadInputError, match=f"language model '{lm}': {config_file} declares custom code"):
        load_lm(str(lm))
    assert not (tmp_path / "custom-lm-code-ran").exists()


@pytest.mark.parametrize("encoder", ["{}", "frames:{}"])
def test_encoder_folders_with_custom_code_are_refused(tiny_vit_folder, tmp_path, no_stdin, encoder):
    folder = with_custom_code(tiny_vit_folder, tmp_path / "custom-vit")
    with pytest.raises(BadInputError, match=f"encoder '{folder}': config.json declares custom code"):
        load_encoder(encoder.format(folder))
    assert not (tmp_path / "custom-vit-code-ran").exists()


def test_a_folder_with_custom_code_is_one_line_at_serve_start_up(tiny_adapter_folders, tiny_vit_folder, tmp_path,
                                                                 capsys, no_stdin):
    vit = with_custom_code(tiny_vit_folder, tmp_path / "custom-vit")
    adapter = adapter_over(tiny_adapter_folders["shapes"], tmp_path / "adapter", encoder=str(vit))
    assert cli.main(["serve", "--adapter", f"a={adapter}"]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the loading progress bar
    assert last.startswith(f"sensorium: error: encoder '{vit}': config.json declares custom code")


class RunsCode:
    """An object whose unpickling would run a command: what a hostile pytorch_model.bin holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_weights_only_refuses_is_one_line(tiny_adapter_folders, tiny_lm_folder, image, tmp_path,
                                                        capsys):
    lm = tmp_path / "pickled-lm"
    shutil.copytree(tiny_lm_folder("llama"), lm)
    weights = lm / "model.safetensors"
    from safetensors.torch import load_file

    state = load_file(weights)
    weights.unlink()
    marker = tmp_path / "unpickled"
    torch.save({**state, "extra": RunsCode(marker)}, lm / "pytorch_model.bin")
    adapter = adapter_over(tiny_adapter_folders["shapes"], tmp_path / "adapter", lm=str(lm))
    assert cli.main(["ask", adapter, image, "what color ?"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"sensorium: error: language model '{lm}': a weights pickle that "
                          "torch.load(weights_only=True) refuses (")
    assert "system" in err  # what was refused: the call the pickle would have made
    assert not marker.exists()


def loads_without_safe_load(node: ast.AST) -> bool:
    """A ``X.from_pretrained(...)`` or ``X.from_config(...)`` call without ``trust_remote_code=False``."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("from_pretrained", "from_config")):
        return False
    receiver = node.func.value
    if isinstance(receiver, ast.Name) and receiver.id in ("PerceptualLM", "loader"):  # ours, and safe_load's own
        return False
    return not any(k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is False
                   for k in node.keywords)


def test_every_from_pretrained_in_the_package_goes_through_safe_load():
    """A new ``X.from_pretrained(...)`` call elsewhere would bypass the custom-code refusal."""
    direct = [f"{path.relative_to(SRC)}:{node.lineno}" for path in sorted(SRC.rglob("*.py"))
              for node in ast.walk(ast.parse(path.read_text())) if loads_without_safe_load(node)]
    assert direct == [], "call safe_load.from_pretrained, or pass trust_remote_code=False"
