"""The GPU session's script (``bench ladder``) end to end on tiny models, and its checks before it starts."""

from __future__ import annotations

import json
from argparse import Namespace
from pathlib import Path

import pytest

from sensorium import zoo
from sensorium.bench import ladder
from sensorium.bench.__main__ import main

COMPARE = Path(__file__).resolve().parents[1] / "recipes" / "compare"


def test_the_session_runs_every_step_and_writes_its_page(tmp_path, capsys):
    """A ladder study with its own LM and a caption study, then the decode benchmarks: reports published,
    bench lines appended, and the page's tables built from them."""
    docs, results = tmp_path / "docs", tmp_path / "results.jsonl"
    session = main(["ladder", "--smoke", "--studies", "easy-vqa-1.5b,paper-layout-scenes-caption", "--jobs", "1",
                    "--compare", str(COMPARE), "--out", str(tmp_path / "runs"), "--docs", str(docs),
                    "--results", str(results)])
    assert list(session["studies"]) == ["easy-vqa-1.5b", "paper-layout-scenes-caption"]
    for study in session["studies"]:
        report = json.loads((docs / study / "comparison.json").read_text())
        assert report == session["studies"][study]
    assert [m["name"] for m in session["studies"]["easy-vqa-1.5b"]["methods"]] == ["smollm2-135m",
                                                                                  "qwen2.5-coder-1.5b"]
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [line["suite"] for line in lines] == ["gpu", "gpu", "compile"]
    page = (docs / "gpu-session.md").read_text()
    assert "[Full report](paper-layout-scenes-caption/comparison.md)" in page
    (row,) = ladder.decode_rows(session["decode"])
    assert row["compiles_in_same_bucket"] == 0
    assert f"| lm | {row['eager_tokens_per_s']:,.0f} | {row['compiled_tokens_per_s']:,.0f} |" in page
    assert "add each new report" in capsys.readouterr().out


def test_without_a_gpu_the_full_session_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="run it where CUDA is available"):
        main(["ladder", "--device", "cpu", "--compare", str(COMPARE), "--out", str(tmp_path)])


def test_an_unknown_study_is_named():
    with pytest.raises(SystemExit, match="no study 'ladders'; the studies: easy-vqa-1.5b, scenes-vqa"):
        ladder.chosen_studies("scenes-vqa,ladders")


def test_missing_models_and_data_are_listed_with_what_provides_them(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "installed", lambda entry: entry.name != "qwen2.5-coder-1.5b")
    monkeypatch.chdir(tmp_path)  # no data/scenes here
    args = Namespace(compare=COMPARE, out=tmp_path / "runs", smoke=False)
    needs = ladder.unmet_needs(ladder.comparison_for(ladder.STUDIES[0], args))
    assert needs == ["packaged model qwen2.5-coder-1.5b, not installed: make models"]
    needs = ladder.unmet_needs(ladder.comparison_for(ladder.STUDIES[1], args))
    assert "data.train.questions=data/scenes/questions_train.json: make scenes-data, or the data it names" in needs
