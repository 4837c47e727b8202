"""Bad input through the real command line: one line on stderr naming the file (and the field or flag), exit 2."""

from __future__ import annotations

import io
import json

import pytest
from conftest import one_line_error, save_tiny_adapter
from PIL import Image

from sensorium import PerceptualLM
from sensorium.cache import FeatureCache
from sensorium.cli import caption_line, main
from sensorium.encoders import load_encoder
from sensorium.errors import BadInputError
from sensorium.media import load_image
from sensorium.serve.media import MediaLimits, read_media

# A 29-byte GIF whose header declares 65535 x 65535 pixels: Pillow refuses to decode it (decompression bomb).
BOMB_GIF = b"GIF89a\xff\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x02D\x01\x00;"


@pytest.fixture(scope="module")
def adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory):
    return save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory.mktemp("adapter"))


@pytest.fixture(scope="module")
def caption_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory):
    return save_tiny_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory.mktemp("caption-adapter"),
                             task="caption", generation={"max_new_tokens": 3})


def write_manifest(folder, lines: list) -> str:
    path = folder / "set.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


# ---- JSONL manifests ------------------------------------------------------------------------
@pytest.mark.parametrize("record, message", [
    ({"media": "blue.png", "question": None, "answers": ["x"]}, ":1: 'question' must be a string, not None"),
    ({"media": "blue.png", "question": 42, "answers": ["x"]}, ":1: 'question' must be a string, not 42"),
    ({"media": 7, "question": "what ?", "answers": ["x"]}, ":1: 'media' must be a string, not 7"),
    ({"media": ["blue.png"], "captions": ["x"]}, ":1: 'media' must be a string, not ['blue.png']"),
    ({"media": "blue.png", "question": "what ?", "answer": 3}, ":1: 'answer' must be a string, not 3"),
])
def test_manifest_fields_of_the_wrong_type_are_named(adapter, image, tmp_path, capsys, record, message):
    manifest = write_manifest(tmp_path, [record])
    assert main(["eval", adapter, "--data", manifest]) == 2
    assert f"{manifest}{message}" in one_line_error(capsys)


def test_an_empty_manifest_is_named(adapter, tmp_path, capsys):
    manifest = write_manifest(tmp_path, ["", "  "])
    assert main(["eval", adapter, "--data", manifest]) == 2
    assert f"{manifest}: no records (an empty manifest)" in one_line_error(capsys)


def test_a_manifest_that_is_not_utf8_names_the_line(adapter, image, tmp_path, capsys):
    good = json.dumps({"media": "blue.png", "question": "what ?", "answers": ["x"]})
    manifest = tmp_path / "set.jsonl"
    manifest.write_bytes(good.encode() + b"\n" + b'{"media": "blue.png", "question": "caf\xe9 ?"}\n')
    assert main(["eval", adapter, "--data", str(manifest)]) == 2
    assert f"{manifest}:2: not UTF-8 text (invalid continuation byte at column" in one_line_error(capsys)


def test_a_manifest_with_a_byte_order_mark_reads(adapter, image, tmp_path, capsys):
    manifest = tmp_path / "set.jsonl"
    manifest.write_bytes(b"\xef\xbb\xbf" + json.dumps({"media": "blue.png", "question": "what ?",
                                                      "answers": ["x"]}).encode() + b"\n")
    assert main(["eval", adapter, "--data", str(manifest), "--predictions", str(tmp_path / "p.jsonl")]) == 0


# ---- VQA v2 ---------------------------------------------------------------------------------
def write_vqa(folder, question: object, annotation: object) -> tuple[str, str]:
    (folder / "q.json").write_text(json.dumps({"data_subtype": "val2014", "questions": [question]}))
    (folder / "a.json").write_text(json.dumps({"annotations": [annotation]}))
    return str(folder / "q.json"), str(folder / "a.json")


GOOD_QUESTION = {"question_id": 1, "image_id": 42, "question": "what color ?"}
GOOD_ANNOTATION = {"question_id": 1, "answer_type": "other", "answers": [{"answer": "blue"}] * 10}


@pytest.mark.parametrize("question, annotation, in_file, message", [
    ({**GOOD_QUESTION, "question": None}, GOOD_ANNOTATION, "q", "question 1: 'question' must be a string, not None"),
    ({**GOOD_QUESTION, "question": 7}, GOOD_ANNOTATION, "q", "question 1: 'question' must be a string, not 7"),
    ({"image_id": 42, "question": "?"}, GOOD_ANNOTATION, "q", "each question must be an object with a 'question_id'"),
    ({**GOOD_QUESTION, "image_id": "x"}, GOOD_ANNOTATION, "q", "question 1: needs an integer 'image_id'"),
    (GOOD_QUESTION, {"answers": [{"answer": "blue"}]}, "a", "each annotation must be an object with a 'question_id'"),
    (GOOD_QUESTION, "not an object", "a", "each annotation must be an object with a 'question_id', not 'not an obj"),
    (GOOD_QUESTION, {**GOOD_ANNOTATION, "question_id": [1]}, "a", "'question_id' must be an integer or a string"),
    (GOOD_QUESTION, {**GOOD_ANNOTATION, "answers": [{"answer": 3}]}, "a",
     "annotation of question 1: 'answer' must be a string, not 3"),
    (GOOD_QUESTION, {**GOOD_ANNOTATION, "answers": "blue"}, "a",
     "annotation of question 1: 'answers' must be a list of objects with an 'answer'"),
])
def test_vqa_v2_errors_name_the_file_that_holds_them(adapter, tmp_path, capsys, question, annotation, in_file,
                                                     message):
    questions, annotations = write_vqa(tmp_path, question, annotation)
    spec = f"vqav2:questions={questions},annotations={annotations},images={tmp_path}"
    assert main(["eval", adapter, "--data", spec]) == 2
    err = one_line_error(capsys)
    assert f"{questions if in_file == 'q' else annotations}: " in err and message in err


# ---- flags ----------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "argument --batch-size: must be >= 1, not 0"),
    ("--limit", "-1", "argument --limit: must be >= 1, not -1"),
    ("--limit", "ten", "argument --limit: must be a whole number, not ten"),
])
def test_count_flags_are_named(adapter, flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", adapter, "--data", "x.jsonl", flag, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_caption_batch_size_zero_is_named(caption_adapter, image, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["caption", caption_adapter, image, "--batch-size", "0"])
    assert exit_.value.code == 2 and "argument --batch-size: must be >= 1, not 0" in capsys.readouterr().err


# ---- images ---------------------------------------------------------------------------------
def test_a_decompression_bomb_is_bad_input_at_ask(adapter, tmp_path, capsys):
    bomb = tmp_path / "bomb.gif"
    bomb.write_bytes(BOMB_GIF)
    assert len(BOMB_GIF) == 29
    assert main(["ask", adapter, str(bomb), "what ?"]) == 2
    assert f"{bomb}: image too large to decode" in one_line_error(capsys)


def test_a_decompression_bomb_is_skipped_like_other_bad_files(adapter, image, tmp_path, capsys):
    (tmp_path / "bomb.gif").write_bytes(BOMB_GIF)
    manifest = write_manifest(tmp_path, [{"media": "blue.png", "question": "what ?", "answers": ["blue"]},
                                         {"media": "bomb.gif", "question": "what ?", "answers": ["red"]}])
    assert main(["eval", adapter, "--data", manifest]) == 2
    assert "bomb.gif: image too large to decode" in one_line_error(capsys)
    predictions = tmp_path / "p.jsonl"
    assert main(["eval", adapter, "--data", manifest, "--skip-bad", "--predictions", str(predictions)]) == 0
    assert "skipped 1 unreadable file(s), e.g." in capsys.readouterr().err
    assert [json.loads(line)["media"] for line in predictions.read_text().splitlines()] == [image]


def test_the_feature_cache_skips_a_bomb_when_training_skips_bad_files(tiny_vit_folder, image, tmp_path):
    (tmp_path / "bomb.gif").write_bytes(BOMB_GIF)
    cache = FeatureCache(load_encoder(tiny_vit_folder), root=tmp_path / "cache")
    _, row_of, errors = cache.features([image, str(tmp_path / "bomb.gif")], workers=0, skip_bad=True)
    assert list(row_of) == [image] and len(errors) == 1 and "image too large to decode" in errors[0]


def portrait_photo(path, orientation: int = 6) -> None:
    """A camera's portrait photo: 20x10 landscape pixels (red left half, blue right) and an EXIF orientation
    saying to turn them 90 degrees clockwise."""
    picture = Image.new("RGB", (20, 10), (255, 0, 0))
    picture.paste((0, 0, 255), (10, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    picture.save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied_for_training_eval_ask_and_serve(tmp_path):
    portrait_photo(tmp_path / "photo.jpg")
    upright = load_image(tmp_path / "photo.jpg")  # the encoders' load (train, eval, ask) and the cache's
    assert upright.size == (10, 20)
    top, bottom = upright.getpixel((5, 2)), upright.getpixel((5, 17))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60  # red above, blue below
    served = read_media((tmp_path / "photo.jpg").read_bytes(), "upload.jpg", MediaLimits())
    assert served.value.size == (10, 20) and served.value.tobytes() == upright.tobytes()


def test_a_bomb_is_bad_input_as_an_upload_and_as_a_stream():
    with pytest.raises(BadInputError, match="upload.gif: GIF image refused as a decompression bomb"):
        read_media(BOMB_GIF, "upload.gif", MediaLimits())
    with pytest.raises(BadInputError, match="stream: image too large to decode"):
        load_image(io.BytesIO(BOMB_GIF), name="stream")


# ---- captions -------------------------------------------------------------------------------
@pytest.mark.parametrize("caption, line", [
    ("a red\nsquare", "a red square"), ("two\r\nlines\n", "two lines"), ("a\ttab", "a tab"), ("", ""),
])
def test_caption_lines_hold_one_record(caption, line):
    assert caption_line("x.png", caption, with_path=True) == f"x.png\t{line}"
    assert caption_line("x.png", caption, with_path=False) == line


def test_caption_prints_exactly_one_line_per_image(caption_adapter, image, tmp_path, capsys, monkeypatch):
    other = tmp_path / "red.png"
    Image.new("RGB", (20, 20), (255, 0, 0)).save(other)
    # Whatever the LM writes: a caption with its own line breaks (the tiny test LM has no newline token).
    monkeypatch.setattr(PerceptualLM, "caption", lambda self, media, **options: ["a red\nsquare\n\n", "x\ty"][
        :len(media)])
    assert main(["caption", caption_adapter, image, str(other)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{image}\ta red square", f"{other}\tx y"]
