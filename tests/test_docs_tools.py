"""The docs' code for other tools: the openai client snippet of docs/serving.md and the hf: commands of docs/data.md,
run as written."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import datasets
from conftest import save_tiny_adapter
from test_serve import encoded, picture

from sensorium.cli import main
from sensorium.data import read_dataset
from sensorium.serve.app import create_app, load_registry, running_server

ROOT = Path(__file__).parents[1]
MARK = "<!-- run by tests/test_docs_tools.py -->"


def marked_blocks(page: str, language: str) -> list[str]:
    """The code blocks in ``language`` of a docs page that follow the mark."""
    pattern = re.escape(MARK) + r"\n```" + language + r"\n(.*?)```"
    return re.findall(pattern, (ROOT / "docs" / page).read_text(), flags=re.DOTALL)


def test_the_openai_snippet_answers_as_ask(tiny_adapter_folders, tmp_path, monkeypatch):
    [snippet] = marked_blocks("serving.md", "python")
    registry = load_registry([("shapes", tiny_adapter_folders["shapes"])])
    image = encoded(picture(0))
    (tmp_path / "shape.png").write_bytes(image)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with running_server(create_app(registry)) as url:
        assert "http://127.0.0.1:8000/v1" in snippet
        with contextlib.redirect_stdout(printed):
            exec(compile(snippet.replace("http://127.0.0.1:8000/v1", f"{url}/v1"), "docs/serving.md", "exec"), {})
    model = registry.get("shapes").model
    answer = model.ask([picture(0)], ["what shape is this?"], max_new_tokens=10)[0]
    tokens = len(model.tokenizer(answer, add_special_tokens=False).input_ids)
    assert printed.getvalue() == f"{answer} {tokens}\n{answer}"


def test_the_hf_commands_run(tiny_lm_folder, tiny_vit_folder, tmp_path, monkeypatch, capsys):
    [commands] = marked_blocks("data.md", "bash")
    rows = 208  # one picture each: 200 to train on, 8 to validate
    whole = datasets.Dataset.from_dict(
        {"image": [{"bytes": encoded(picture(seed, 16)), "path": f"{seed}.png"} for seed in range(rows)],
         "question": ["what color ?"] * rows, "answer": ["red"] * rows},
        features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                    "answer": datasets.Value("string")}))
    datasets.DatasetDict({"train": whole.select(range(200)), "validation": whole.select(range(200, rows))}) \
        .save_to_disk(tmp_path / "my-vqa")
    adapter = save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path / "adapter")
    monkeypatch.chdir(tmp_path)
    lines = commands.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        argv = [word.replace("runs/easy-vqa/adapter", adapter).replace("recipes/", f"{ROOT}/recipes/")
                for word in shlex.split(line)]
        assert argv[0] == "sensorium"
        assert main(argv[1:]) == 0, line
    out = capsys.readouterr().out
    assert "train: hf, 200 examples, 200 distinct media files" in out
    kept, held = (read_dataset({"format": "jsonl", "path": str(tmp_path / "my-vqa-split" / name)})
                  for name in ("train.jsonl", "held-out.jsonl"))
    assert (len(kept), len(held)) == (100, 100)
