"""Caption data and metrics: COCO-format readers, and scores equal to the official COCO caption evaluation."""

from __future__ import annotations

import gc
import json

import pycocoevalcap.eval
import pycocoevalcap.meteor.meteor
import pytest
from pycocoevalcap.eval import COCOEvalCap
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocotools.coco import COCO

from sensorium.data import parse_data_spec, read_dataset
from sensorium.errors import BadInputError
from sensorium.metrics import CaptionReport, score_captions, write_coco_results
from sensorium.metrics.captions import METRICS, _tokenize, simple_tokenize

# --- readers -------------------------------------------------------------------------------------------


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


COCO_CAPTIONS = {
    "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
               {"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
               {"id": 9, "file_name": "COCO_val2014_000000000009.jpg"}],
    "annotations": [{"id": 1, "image_id": 42, "caption": "A red square. "},
                    {"id": 2, "image_id": 7, "caption": "A blue circle."},
                    {"id": 3, "image_id": 42, "caption": "a square that is red"}],
}


def test_coco_captions_give_one_example_per_captioned_image(tmp_path):
    annotations = write_json(tmp_path / "captions_val2014.json", COCO_CAPTIONS)
    examples = read_dataset(parse_data_spec(f"coco:annotations={annotations},images={tmp_path / 'val2014'}"))
    assert [e.question_id for e in examples] == ["42", "7"]  # image 9 has no caption and is left out
    first = examples[0]
    assert first.media == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    assert first.answers == ["A red square.", "a square that is red"]
    assert first.question == "" and first.answer_type == "caption"


def test_coco_test_split_without_annotations_keeps_every_image(tmp_path):
    info = write_json(tmp_path / "image_info_test2014.json", {"images": COCO_CAPTIONS["images"]})
    examples = read_dataset({"format": "coco", "annotations": str(info), "images": str(tmp_path)})
    assert [(e.question_id, e.answers) for e in examples] == [("42", []), ("7", []), ("9", [])]


@pytest.mark.parametrize("content, reason", [
    (None, "file not found"),
    ("{nope", "malformed JSON"),
    (json.dumps({"annotations": []}), "expected an object with an 'images' list"),
    (json.dumps({"images": [{"id": 1}]}), "each image needs 'id' and 'file_name'"),
    (json.dumps({"images": [], "annotations": {}}), "'annotations' must be a list"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]}),
     "malformed annotation"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "x"}]}),
     "caption for image id 2, which 'images' does not list"),
])
def test_bad_coco_files_are_named(tmp_path, content, reason):
    path = tmp_path / "captions.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInputError, match=rf"captions.json: {reason}"):
        read_dataset({"format": "coco", "annotations": str(path), "images": str(tmp_path)})


KARPATHY = {"images": [
    {"filepath": "train2014", "filename": "a.jpg", "split": "train", "cocoid": 11, "imgid": 0,
     "sentences": [{"raw": "A cat on a mat.", "tokens": ["a", "cat", "on", "a", "mat"]},
                   {"raw": "a sleeping cat ", "tokens": ["a", "sleeping", "cat"]}]},
    {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "cocoid": 12, "imgid": 1,
     "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}]},
    {"filepath": "val2014", "filename": "c.jpg", "split": "val", "cocoid": 13, "imgid": 2,
     "sentences": [{"raw": "A bird.", "tokens": ["a", "bird"]}]},
    {"filename": "d.jpg", "split": "test", "imgid": 3,
     "sentences": [{"raw": "A fish.", "tokens": ["a", "fish"]}]},
]}


def test_karpathy_train_includes_restval(tmp_path):
    path = write_json(tmp_path / "dataset_coco.json", KARPATHY)
    examples = read_dataset(parse_data_spec(f"karpathy:path={path},images={tmp_path},split=train"))
    assert [e.question_id for e in examples] == ["11", "12"]
    assert examples[0].media == str(tmp_path / "train2014" / "a.jpg")
    assert examples[0].answers == ["A cat on a mat.", "a sleeping cat"]
    assert {(e.question, e.answer_type) for e in examples} == {("", "caption")}


@pytest.mark.parametrize("split, ids", [("val", ["13"]), ("restval", ["12"]), ("test", ["3"])])
def test_karpathy_other_splits_are_read_as_named(tmp_path, split, ids):
    path = write_json(tmp_path / "dataset_coco.json", KARPATHY)
    examples = read_dataset({"format": "karpathy", "path": str(path), "images": str(tmp_path), "split": split})
    assert [e.question_id for e in examples] == ids  # the test image has no cocoid: its imgid names it
    if split == "test":
        assert examples[0].media == str(tmp_path / "d.jpg")


@pytest.mark.parametrize("content, split, reason", [
    (None, "test", "file not found"),
    ("[1, 2", "test", "malformed JSON"),
    (json.dumps({"images": {}}), "test", "expected an object with an 'images' list"),
    (json.dumps(KARPATHY), "testing", r"no images in split 'testing' \(the file has: restval, test, train, val\)"),
    (json.dumps({"images": [{"split": "test", "cocoid": 1, "sentences": []}]}), "test", "malformed image entry"),
    (json.dumps({"images": [{"split": "test", "filename": "a.jpg", "sentences": []}]}), "test",
     "malformed image entry .*'cocoid' or 'imgid'"),
])
def test_bad_karpathy_files_are_named(tmp_path, content, split, reason):
    path = tmp_path / "dataset_coco.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInputError, match=rf"dataset_coco.json: {reason}"):
        read_dataset({"format": "karpathy", "path": str(path), "images": str(tmp_path), "split": split})


def test_jsonl_manifest_holds_captions_beside_questions(tmp_path):
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text(json.dumps({"media": "a.png", "captions": ["a red square", "red box"], "id": "a"}) + "\n"
                        + json.dumps({"media": "b.png", "question": "what color?", "answer": "blue"}) + "\n")
    caption, question = read_dataset(parse_data_spec(str(manifest)))
    assert (caption.media, caption.question, caption.answers) == (str(tmp_path / "a.png"), "", ["a red square",
                                                                                              "red box"])
    assert (caption.answer_type, caption.question_id) == ("caption", "a")
    assert (question.question, question.answers, question.answer_type) == ("what color?", ["blue"], "other")


@pytest.mark.parametrize("record, reason", [
    ({"media": "a.png", "captions": "a red square"}, "'captions' must be a list of strings"),
    ({"media": "a.png", "question": "q", "captions": ["x"]}, r"'question' \(or 'captions', not both\)"),
])
def test_malformed_caption_lines_are_named(tmp_path, record, reason):
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text(json.dumps(record) + "\n")
    with pytest.raises(BadInputError, match=rf"bad.jsonl:1: .*{reason}"):
        read_dataset({"format": "jsonl", "path": str(manifest)})


def test_a_spec_missing_a_reader_argument_is_reported(tmp_path):
    with pytest.raises(ValueError, match="data format 'coco': missing a required argument: 'images'"):
        read_dataset(parse_data_spec(f"coco:annotations={tmp_path / 'a.json'}"))


# --- metrics -------------------------------------------------------------------------------------------

# Several references per image and imperfect predictions. Image 632 has references but no prediction: it
# is left out of scoring, as when the official evaluation is limited to the result's images. No caption
# holds a hyphen or an apostrophe, so the PTB and the simple tokenizer split them alike.
REFERENCES = {
    "42": ["A dog runs across the grass.", "a brown dog running in a field", "The dog is playing outside,  happily."],
    "73": ["Two cats sleep on a couch.", "A pair of cats napping on the sofa.", "two cats lying on a red couch"],
    "139": ["A man riding a bike down the street.", "a cyclist on a city road", "Man on a bicycle in traffic."],
    "285": ["A plate of food with broccoli.", "some vegetables and rice on a white plate", "A healthy meal."],
    "632": ["A clock tower at night.", "the tower of a church under a dark sky"],
}
PREDICTIONS = {
    "42": "A dog running on the grass.",
    "73": "two cats on a couch",
    "139": "A man riding a horse down the street",
    "285": "a pizza on a table",
}


def official_scores(tmp_path) -> dict[str, float]:
    """pycocoevalcap's COCOEvalCap run as its example does, on a COCO annotation file and a results file."""
    images = [{"id": int(key)} for key in REFERENCES]
    annotations = [{"id": n, "image_id": int(key), "caption": caption}
                   for n, (key, caption) in enumerate(((k, c) for k, cs in REFERENCES.items() for c in cs), 1)]
    gt_file = write_json(tmp_path / "captions_gt.json", {"images": images, "annotations": annotations})
    results_file = tmp_path / "results.json"
    write_coco_results([{"question_id": key, "prediction": text} for key, text in PREDICTIONS.items()], results_file)
    coco = COCO(str(gt_file))
    evaluation = COCOEvalCap(coco, coco.loadRes(str(results_file)))
    evaluation.params["image_id"] = evaluation.cocoRes.getImgIds()
    evaluation.evaluate()
    return {name: 100 * value for name, value in evaluation.eval.items()}


class NoSpice:
    """Stands in for SPICE, whose CoreNLP models pycocoevalcap would download; its score is not compared."""

    def compute_score(self, gts, res):
        return 0.0, [0.0] * len(gts)

    def method(self):
        return "SPICE"


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pycocoevalcap.eval, "Spice", NoSpice)
        scores = official_scores(tmp_path_factory.mktemp("official"))
    del scores["SPICE"]
    return scores


def test_scores_equal_the_official_coco_caption_evaluation(official):
    report = score_captions(PREDICTIONS, REFERENCES)
    assert set(official) == set(METRICS) - {"SPICE"}
    assert report.scores == pytest.approx(official, abs=1e-9)
    assert list(report.unavailable) == ["SPICE"] and "download" in report.unavailable["SPICE"]
    assert report.count == 4 and report.tokenizer == "ptb"
    assert 0 < report.scores["Bleu_4"] < report.scores["Bleu_1"] < 100  # imperfect, on the 0-100 scale


def test_without_java_the_simple_tokenizer_gives_the_official_scores_where_they_agree(official, monkeypatch, tmp_path):
    captions = {key: [*refs, PREDICTIONS.get(key, "")] for key, refs in REFERENCES.items()}
    ptb = PTBTokenizer().tokenize({key: [{"caption": c} for c in values] for key, values in captions.items()})
    assert ptb == {key: [simple_tokenize(c) for c in values] for key, values in captions.items()}
    monkeypatch.setenv("PATH", str(tmp_path))  # no java to be found
    report = score_captions(PREDICTIONS, REFERENCES)
    assert report.tokenizer == "simple"
    assert set(report.unavailable) == {"METEOR", "SPICE"} and "Java" in report.unavailable["METEOR"]
    assert report.scores == pytest.approx({k: v for k, v in official.items() if k != "METEOR"}, abs=1e-9)


def test_line_breaks_inside_captions_do_not_shift_the_ptb_tokenizer():
    captions = {"1": ["A dog\rrunning.", "on the\u2028grass"], "2": ["Two\ncats."]}
    assert _tokenize(captions, "ptb") == {"1": ["a dog running", "on the grass"], "2": ["two cats"]}


def test_simple_tokenizer_lowercases_and_drops_punctuation():
    assert simple_tokenize("  A Dog's ball, on the GRASS!\n") == "a dog s ball on the grass"


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_failing_meteor_jar_is_reported_not_scored(monkeypatch):
    """Reported in one line, and the dead jar's pipe leaves nothing to raise when the wrapper is collected."""
    monkeypatch.setattr(pycocoevalcap.meteor.meteor, "METEOR_JAR", "missing-meteor.jar")
    report = score_captions(PREDICTIONS, REFERENCES)
    gc.collect()
    assert "METEOR" not in report.scores and "missing-meteor.jar" in report.unavailable["METEOR"]
    assert report.scores["CIDEr"] > 0


def test_report_table_and_dict():
    report = CaptionReport(scores={"Bleu_4": 33.35, "CIDEr": 111.634}, count=5000, tokenizer="ptb",
                           unavailable={"METEOR": "needs Java", "SPICE": "not offline"})
    lines = report.format().splitlines()
    assert lines[0].split() == ["metric", "score"]
    assert [line.split()[0] for line in lines[1:5]] == ["Bleu_4", "METEOR", "CIDEr", "SPICE"]
    assert lines[3].split() == ["CIDEr", "111.6"] and lines[2].split()[1:] == ["n/a", "needs", "Java"]
    assert len({line.index(line.split()[1]) + len(line.split()[1]) for line in lines[1:5]}) == 1  # aligned
    assert lines[-1].startswith("5000 images; tokenizer: ptb")
    assert json.loads(json.dumps(report.as_dict())) == {
        "scores": {"Bleu_4": 33.35, "CIDEr": 111.634}, "unavailable": {"METEOR": "needs Java", "SPICE": "not offline"},
        "count": 5000, "tokenizer": "ptb",
    }


def test_predictions_need_references():
    with pytest.raises(ValueError, match="no reference captions for image id.* 9"):
        score_captions({"42": "a dog", "9": "a cat"}, {"42": ["a dog"], "9": []})
    with pytest.raises(ValueError, match="at least one prediction"):
        score_captions({}, REFERENCES)


def test_results_file_round_trips_through_coco_load_res(tmp_path):
    gt_file = write_json(tmp_path / "gt.json", COCO_CAPTIONS)
    results_file = tmp_path / "out" / "results.json"
    write_coco_results([{"question_id": "42", "prediction": "a red square"},
                        {"question_id": "7", "prediction": "a blue circle"}], results_file)
    assert json.loads(results_file.read_text()) == [{"image_id": 42, "caption": "a red square"},
                                                    {"image_id": 7, "caption": "a blue circle"}]
    results = COCO(str(gt_file)).loadRes(str(results_file))
    assert sorted(results.getImgIds()) == [7, 42]
    assert [a["caption"] for a in results.imgToAnns[42]] == ["a red square"]


def test_results_keep_non_numeric_ids_and_refuse_duplicates(tmp_path):
    write_coco_results([{"question_id": "clip-3", "prediction": "x"}], tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == [{"image_id": "clip-3", "caption": "x"}]
    with pytest.raises(ValueError, match="more than one caption for image id 42"):
        write_coco_results([{"question_id": "42", "prediction": "a"}, {"question_id": 42, "prediction": "b"}],
                           tmp_path / "r.json")
