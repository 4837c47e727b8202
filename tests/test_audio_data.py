"""Audio data sets: AudioCaps and Clotho CSVs with a folder of clips, and Debian's Asterisk speech prompts."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
import soundfile

from sensorium.data import asterisk, parse_data_spec, read_dataset
from sensorium.errors import BadInputError


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> str:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def write_sound(path: Path) -> None:
    soundfile.write(str(path), np.zeros(1600, np.float32), 16000)


# ---- AudioCaps ---------------------------------------------------------------------------------------------------
AUDIOCAPS_ROWS = [
    ["91139", "r1nicOVtvkQ", "130", "A woman talks nearby as water pours"],
    ["58146", "UDGBjjwyaqE", "20", "Multiple clanging and clanking sounds"],
    ["11542", "7fmOlUlwoNg", "20", "Constant rattling noise, sharp vibrations"],
    ["11543", "7fmOlUlwoNg", "20", "A train passes by, rattling"],
    ["11544", "7fmOlUlwoNg", "20", "Rattling of a passing train"],
    ["70000", "missingClip", "0", "Wind blows"],
    ["80000", "someOtherId", "30", "A dog barks"],
]


@pytest.fixture
def audiocaps(tmp_path) -> tuple[str, Path]:
    folder = tmp_path / "audio"
    folder.mkdir()
    write_sound(folder / "r1nicOVtvkQ.wav")  # by YouTube id
    write_sound(folder / "YUDGBjjwyaqE_20.000_30.000.flac")  # AudioSet / PANNs naming
    write_sound(folder / "7fmOlUlwoNg_20.ogg")  # id and start time
    write_sound(folder / "80000.wav")  # by AudioCaps id
    (folder / "notes.txt").write_text("not a clip")
    path = write_csv(tmp_path / "test.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], AUDIOCAPS_ROWS)
    return path, folder


def test_audiocaps_gives_one_example_per_clip_with_all_its_captions(audiocaps):
    path, folder = audiocaps
    examples = read_dataset(parse_data_spec(f"audiocaps:csv={path},audio={folder}"))
    by_id = {example.question_id: example for example in examples}
    assert list(by_id) == ["r1nicOVtvkQ", "UDGBjjwyaqE", "7fmOlUlwoNg", "missingClip", "someOtherId"]
    assert by_id["7fmOlUlwoNg"].answers == ["Constant rattling noise, sharp vibrations", "A train passes by, rattling",
                                            "Rattling of a passing train"]
    assert all(example.question == "" and example.answer_type == "caption" for example in examples)
    found = {example.question_id: Path(example.media).name for example in examples if Path(example.media).is_file()}
    assert found == {"r1nicOVtvkQ": "r1nicOVtvkQ.wav", "UDGBjjwyaqE": "YUDGBjjwyaqE_20.000_30.000.flac",
                     "7fmOlUlwoNg": "7fmOlUlwoNg_20.ogg", "someOtherId": "80000.wav"}
    assert by_id["missingClip"].media == str(folder / "missingClip.wav")  # reported when training, or skipped


def test_audiocaps_errors_name_the_file(audiocaps, tmp_path):
    path, folder = audiocaps
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError, match="none of the 5 clips"):
        read_dataset({"format": "audiocaps", "csv": path, "audio": str(empty)})
    with pytest.raises(BadInputError, match="audio folder not found"):
        read_dataset({"format": "audiocaps", "csv": path, "audio": str(tmp_path / "nowhere")})
    bad = write_csv(tmp_path / "bad.csv", ["youtube_id", "caption"], [["x", "y"]])
    with pytest.raises(BadInputError, match=f"{bad}: missing column\\(s\\) audiocap_id, start_time"):
        read_dataset({"format": "audiocaps", "csv": bad, "audio": str(folder)})
    with pytest.raises(BadInputError, match="file not found"):
        read_dataset({"format": "audiocaps", "csv": str(tmp_path / "gone.csv"), "audio": str(folder)})


# ---- Clotho ------------------------------------------------------------------------------------------------------
def test_clotho_gives_each_clip_its_five_captions(tmp_path):
    folder = tmp_path / "evaluation"
    folder.mkdir()
    write_sound(folder / "Santa Motor.wav")
    header = ["file_name", *(f"caption_{n}" for n in range(1, 6))]
    rows = [["Santa Motor.wav", "A machine whines, then stops", "An engine revs", "A motor runs, then slows",
             "Machinery hums, then quiets", "A motor is running, later it stops"],
            ["gone.wav", "Birds chirp", "Chirping birds", "Birds sing", "Birds are singing", "Many birds chirp"]]
    path = write_csv(tmp_path / "clotho_captions_evaluation.csv", header, rows)
    examples = read_dataset(parse_data_spec(f"clotho:csv={path},audio={folder}"))
    assert [e.question_id for e in examples] == ["Santa Motor.wav", "gone.wav"]
    assert examples[0].answers == rows[0][1:] and examples[0].media == str(folder / "Santa Motor.wav")
    with pytest.raises(BadInputError, match="missing column\\(s\\) caption_5"):
        read_dataset({"format": "clotho", "csv": write_csv(tmp_path / "four.csv", header[:5], [rows[0][:5]]),
                      "audio": str(folder)})


# ---- Asterisk ----------------------------------------------------------------------------------------------------
def test_asterisk_what_is_said_from_the_installed_prompts():
    train, test, every = (read_dataset(parse_data_spec(f"asterisk:{split}")) for split in ("train", "test", "all"))
    assert len(every) > 500 and len(test) > 30
    assert {e.question_id for e in train} | {e.question_id for e in test} == {e.question_id for e in every}
    assert not {e.question_id for e in train} & {e.question_id for e in test}
    assert all(e.question == "what is said?" and len(e.answers) == 1 and Path(e.media).is_file() for e in every)
    said = {e.question_id: e.answers[0] for e in every}
    assert said["agent-pass"] == "Please enter your password followed by the pound key."
    assert said["letters/at"] == "at"  # the note "[@]" is not said
    assert "beep" not in said and "silence/1" not in said  # a tone and silence say nothing
    assert {e.answer_type for e in every} == {"word", "phrase", "sentence"}
    captions = read_dataset(parse_data_spec("asterisk-caption:test"))
    assert [(e.question_id, e.answers) for e in captions] == [(e.question_id, e.answers) for e in test]
    assert all(e.question == "" and e.answer_type == "caption" for e in captions)


def test_asterisk_without_the_packages_says_what_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install asterisk-core-sounds-en-wav"):
        asterisk.read_qa(sounds=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match="apt-get install asterisk-core-sounds-en\\)"):
        asterisk.read_qa(transcripts=str(tmp_path / "none.txt.gz"))
    with pytest.raises(ValueError, match="train, test, all"):
        asterisk.read_qa(split="validation")


def test_asterisk_reads_its_transcript_format(tmp_path):
    (tmp_path / "digits").mkdir()
    for name in ("hello", "digits/1", "tone"):
        write_sound(tmp_path / f"{name}.wav")
    text = "; Core sounds\n\nhello: Hello there.\ndigits/1: one\ntone: [a tone]\nnowav: Not recorded.\n"
    transcripts = tmp_path / "sounds.txt.gz"
    transcripts.write_bytes(gzip.compress(text.encode()))
    examples = asterisk.read_qa(sounds=str(tmp_path), transcripts=str(transcripts))
    assert [(e.question_id, e.answers[0], e.answer_type) for e in examples] == \
        [("digits/1", "one", "word"), ("hello", "Hello there.", "phrase")]


def test_a_clip_name_with_a_line_break_keeps_the_none_found_error_on_one_line(tmp_path):
    """Clotho names each clip by its file name, which a damaged CSV can break over two lines."""
    path = write_csv(tmp_path / "clotho.csv", ["file_name", *(f"caption_{i}" for i in range(1, 6))],
                     [["a\nb.wav", "one", "two", "three", "four", "five"]])
    with pytest.raises(BadInputError) as refused:
        read_dataset({"format": "clotho", "csv": path, "audio": str(tmp_path)})
    assert "\n" not in str(refused.value) and "(e.g. 'a\\nb.wav')" in str(refused.value)
