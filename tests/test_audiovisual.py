"""Moving shapes with sound: one MP4 holds both senses, the questions are typed by the sense they need, and each
type's questions are written apart for an adapter of one sense. (Determinism: tests/test_benchmarks.py.)"""

from __future__ import annotations

import json
import random
from collections import Counter

import av
import numpy as np
import pytest
from conftest import qa_by_media, read_split

from sensorium.benchmarks import audiovisual
from sensorium.benchmarks.audiovisual import AUDIO_FRAME, QUESTION_TYPES, SAMPLE_RATE, make_audiovisual
from sensorium.benchmarks.videos import DIRECTIONS, FPS, FRAME_SIZE, PALETTE
from sensorium.cli import main
from sensorium.data import parse_data_spec, read_dataset
from sensorium.media import load_video
from sensorium.media.audio import load_audio

SOUND_ANSWERS = {"1", "2", "3", "4", "rising", "falling"}
PICTURE_ANSWERS = set(DIRECTIONS) | set(PALETTE)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("audiovisual")
    return out, make_audiovisual(out, n_train=6, n_test=3, seed=3, workers=2)


def plans(out, split) -> dict[int, dict]:
    return {clip["image_id"]: clip for clip in read_split(out, "clips", split)["clips"]}


def test_every_clip_has_one_question_of_each_type(clips):
    out, summary = clips
    assert json.loads((out / "meta.json").read_text()) == summary
    for split, count in (("train", 6), ("test", 3)):
        assert summary["splits"][split]["question_types"] == {kind: count for kind in QUESTION_TYPES}
        assert all(sorted(kind for _, _, kind in qa) == sorted(QUESTION_TYPES)
                   for qa in qa_by_media(out, split).values())


def test_each_mp4_holds_the_picture_and_the_sound_of_its_plan(clips):
    out, _ = clips
    for split in ("train", "test"):
        for clip in plans(out, split).values():
            path = out / "videos" / clip["file_name"]
            with av.open(str(path)) as container:
                assert [(s.type, s.codec_context.name) for s in container.streams] == [("video", "h264"),
                                                                                     ("audio", "aac")]
                assert sum(1 for _ in container.decode(video=0)) == clip["frames"]
            assert 2 * FPS <= clip["frames"] <= 4 * FPS and clip["seconds"] == clip["frames"] / FPS
            frames = load_video(path, num_frames=8)
            assert len(frames) == 8 and frames[0].size == (FRAME_SIZE, FRAME_SIZE)
            samples = load_audio(path, SAMPLE_RATE).samples
            # AAC pads the last frame: the track lasts the clip, and at most one frame of silence more.
            assert 0 <= len(samples) / SAMPLE_RATE - clip["seconds"] < AUDIO_FRAME / SAMPLE_RATE
            sound = clip["sound"]
            assert 0.1 - 1e-3 <= sound["start"] < sound["end"] <= clip["seconds"] - 0.1 + 1e-3
            inside = samples[round(sound["start"] * SAMPLE_RATE):round(sound["end"] * SAMPLE_RATE)]
            outside = np.concatenate([samples[:round((sound["start"] - 0.05) * SAMPLE_RATE)],
                                      samples[round((sound["end"] + 0.05) * SAMPLE_RATE):]])
            assert np.abs(inside).max() > 0.2 and np.abs(outside).max() < 0.02


def test_the_answers_are_true_to_the_plan_and_short(clips):
    out, _ = clips
    for split in ("train", "test"):
        clip_plans = plans(out, split)
        for clip_id, qa in qa_by_media(out, split).items():
            sound = clip_plans[clip_id]["sound"]
            heard = str(sound["count"]) if sound["kind"] == "beeps" else sound["direction"]
            seen = {o["action"] for o in clip_plans[clip_id]["objects"]} | {
                o["new_color"] for o in clip_plans[clip_id]["objects"] if o["new_color"]}
            answers = {kind: answer for _, answer, kind in qa}
            assert answers["sound"] == heard and answers["picture"] in seen & PICTURE_ANSWERS
            first, second = answers["both"].split()
            assert first == heard and second in seen & PICTURE_ANSWERS
            assert all(len(answer.split()) <= 3 for answer in answers.values())
            captions = [c["caption"] for c in read_split(out, "captions", split)["annotations"]
                        if c["image_id"] == clip_id]
            assert len(set(captions)) == 5 and all("beep" in c or "tone" in c or "sweep" in c for c in captions)


def test_each_type_is_written_apart_and_read_by_its_spec(clips):
    out, _ = clips
    for split in ("train", "test"):
        everything = read_dataset(parse_data_spec(f"audiovisual:{out}/{split}"))
        together = []
        for kind in QUESTION_TYPES:
            subset = read_dataset(parse_data_spec(f"audiovisual:{out}/{split}/{kind}"))
            assert subset and {e.answer_type for e in subset} == {kind}
            assert subset == [e for e in everything if e.answer_type == kind]
            together += subset
        assert sorted(e.question_id for e in together) == sorted(e.question_id for e in everything)
    sound = read_dataset(parse_data_spec(f"audiovisual:{out}/test/sound"))
    assert len(sound) == 3 and all(e.answers[0] in SOUND_ANSWERS for e in sound)


def test_an_unknown_question_type_is_named():
    with pytest.raises(ValueError, match="unknown question type 'smell'.*picture, sound, both"):
        parse_data_spec("audiovisual:data/audiovisual/test/smell")
    with pytest.raises(ValueError, match="SPLIT one of train, test"):
        parse_data_spec("audiovisual:data/audiovisual/validation")


def test_the_answers_of_each_type_are_balanced():
    rng = random.Random(0)
    answers: dict[str, Counter] = {kind: Counter() for kind in QUESTION_TYPES}
    for _ in range(600):
        tracks, event = audiovisual.sample_clip(rng)
        for kind, _, answer in audiovisual.questions(tracks, event, rng):
            answers[kind][answer] += 1
    assert set(answers["sound"]) == SOUND_ANSWERS and set(answers["picture"]) == PICTURE_ANSWERS
    assert all(max(counts.values()) / sum(counts.values()) < 0.3 for counts in answers.values())


def test_cli_makes_audiovisual_clips_and_prints_a_summary(tmp_path, capsys):
    assert main(["data", "make-audiovisual", "--out", str(tmp_path), "--n-train", "2", "--n-test", "1",
                 "--seed", "5", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "clips/s" in out and f"audiovisual:{tmp_path}/test/picture" in out
    assert len(list((tmp_path / "videos").glob("audiovisual-*.mp4"))) == 3
    assert not list(tmp_path.rglob("*.silent.mp4"))
