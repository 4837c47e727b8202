"""Data without references (VQA v2 questions without annotations, a manifest without answers) is answered, not
scored, and that is a success: the predictions are written and the output says nothing was scored."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorium.cli import main


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(referenced=st.lists(st.booleans(), min_size=1, max_size=4))
def test_eval_scores_what_has_references_and_answers_the_rest(tiny_adapter_folders, image, tmp_path, referenced,
                                                              capsys):
    manifest, predictions = tmp_path / "questions.jsonl", tmp_path / "predictions.jsonl"
    lines = [{"media": image, "question": "what color is the shape ?", **({"answers": ["blue"]} if has else {})}
             for has in referenced]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    predictions.unlink(missing_ok=True)
    assert main(["eval", tiny_adapter_folders["shapes"], "--data", str(manifest),
                 "--predictions", str(predictions)]) == 0
    out = capsys.readouterr().out
    assert len(predictions.read_text().splitlines()) == len(referenced)
    assert ("no references to score against (predictions only)" in out) == (not any(referenced))
    assert f"predictions written to {predictions}" in out
