"""Sound scenes: deterministic, true to the plan and to the waveform, readable by the standard readers."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import qa_by_media, read_split

from sensorium.benchmarks import sounds as sound_scenes
from sensorium.benchmarks.sounds import DURATION, KINDS, QUESTION_TYPES, SAMPLE_RATE, SPLITS, WORDS, make_audio
from sensorium.cli import main

FRAME = SAMPLE_RATE // 200  # 5 ms


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("sounds")
    return out, make_audio(out, n_train=48, n_test=12, seed=3, workers=2)


def clips(out, split) -> list[dict]:
    return read_split(out, "clips", split)["clips"]


def qa_by_clip(out, split) -> dict[int, dict[str, str]]:
    """Each clip's answers by question type (one question per type and clip)."""
    joined: dict[int, dict[str, str]] = {}
    for clip_id, asked in qa_by_media(out, split).items():
        joined[clip_id] = {kind: answer for _, answer, kind in asked}
        assert len(joined[clip_id]) == len(asked)
    return joined


def segment(out: Path, clip: dict, event: dict) -> np.ndarray:
    samples, rate = soundfile.read(out / "clips" / clip["file_name"], dtype="float32")
    return samples[round(event["start"] * rate):round(event["end"] * rate)]


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(samples))


def bursts(samples: np.ndarray) -> int:
    """Separate stretches of sound in 5 ms frames: how many times the energy rises above a fifth of its peak."""
    frames = samples[:len(samples) // FRAME * FRAME].reshape(-1, FRAME)
    loud = np.sqrt((frames ** 2).mean(axis=1)) > 0.2 * np.sqrt((frames ** 2).mean(axis=1)).max()
    return int(loud[0]) + int(np.sum(loud[1:] & ~loud[:-1]))


def test_summary_counts_and_every_question_type_occurs(scenes):
    out, summary = scenes
    assert json.loads((out / "meta.json").read_text()) == summary
    assert {name: split["clips"] for name, split in summary["splits"].items()} == {"train": 48, "test": 12}
    train = summary["splits"]["train"]
    assert train["captions"] == 5 * 48
    assert all(train["question_types"][kind] > 0 for kind in QUESTION_TYPES)
    assert train["question_types"]["speech"] == 48  # asked of every clip


def test_clips_are_short_16khz_mono_wavs(scenes):
    out, _ = scenes
    for split in SPLITS:
        for clip in clips(out, split):
            info = soundfile.info(out / "clips" / clip["file_name"])
            assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
            assert DURATION[0] <= info.duration <= DURATION[1]
            assert info.duration == pytest.approx(clip["seconds"], abs=1e-4)
            kinds = [event["kind"] for event in clip["events"]]
            assert 1 <= len(kinds) <= 3 and len(set(kinds)) == len(kinds) and set(kinds) <= set(KINDS)
            ends = [bound for event in clip["events"] for bound in (event["start"], event["end"])]
            assert ends == sorted(ends) and ends[0] > 0 and ends[-1] < info.duration  # in sequence, apart


def test_answers_are_true_to_the_plan(scenes):
    out, _ = scenes
    for clip in clips(out, "train"):
        events = {event["kind"]: event for event in clip["events"]}
        answers = qa_by_clip(out, "train")[clip["image_id"]]
        assert answers["speech"] == ("yes" if "speech" in events else "no")
        assert ("words" in answers) == ("speech" in events)
        if "speech" in events:
            assert answers["words"] == " ".join(events["speech"]["words"])
            assert set(answers["words"].split()) <= set(WORDS)
        if "beeps" in events:
            assert answers["count"] == str(events["beeps"]["count"])
        elif "count" in answers:
            assert answers["count"] == "0"
        assert answers.get("direction") == events.get("sweep", {}).get("direction")
        if "pitch" in answers:
            assert answers["pitch"] in {events[kind]["pitch"] for kind in ("beeps", "tone") if kind in events}


def test_the_waveform_holds_what_the_answers_say(scenes):
    """Beeps counted from the energy envelope, high or low from the spectrum peak, rising or falling from the
    peak at the start and the end of the sweep; every event is audible and silence lies between them."""
    out, _ = scenes
    checked = {"beeps": 0, "tone": 0, "sweep": 0}
    for split in SPLITS:
        for clip in clips(out, split):
            for event in clip["events"]:
                sound = segment(out, clip, event)
                assert np.abs(sound).max() == pytest.approx(event["level"], abs=0.01)
                if event["kind"] == "beeps":
                    assert bursts(sound) == event["count"]
                if event["kind"] in ("beeps", "tone"):
                    assert (peak_hz(sound) > 800) == (event["pitch"] == "high")
                if event["kind"] == "sweep":
                    third = len(sound) // 3
                    rising = peak_hz(sound[-third:]) > peak_hz(sound[:third])
                    assert rising == (event["direction"] == "rising")
                checked[event["kind"]] = checked.get(event["kind"], 0) + 1
            samples, _ = soundfile.read(out / "clips" / clip["file_name"], dtype="float32")
            assert np.abs(samples[:int(clip["events"][0]["start"] * SAMPLE_RATE) - 2]).max(initial=0) == 0
    assert min(checked.values()) >= 3


def test_speech_is_there_exactly_when_espeak_said_it(monkeypatch, tmp_path):
    """The synthesis commands of each clip: espeak-ng runs for a clip iff its answer to "is there speech?" is yes."""
    commands: list[str] = []
    run = sound_scenes._run

    def counted(command: list[str], env: dict[str, str] | None = None) -> bytes:
        commands.append(command[0])
        return run(command, env)

    monkeypatch.setattr(sound_scenes, "_run", counted)
    (tmp_path / "clips").mkdir()
    for index in range(12):
        commands.clear()
        record = sound_scenes.make_clip(tmp_path, "train", index, seed=7)
        speech = {kind: answer for kind, _, answer in record.questions}["speech"]
        assert ("espeak-ng" in commands) == (speech == "yes")
        assert commands.count("sox") == sum(event["kind"] != "speech" for event in record.plan["events"])


def test_captions_name_every_sound_in_order(scenes):
    out, _ = scenes
    captions: dict[int, list[str]] = {}
    for row in read_split(out, "captions", "train")["annotations"]:
        captions.setdefault(row["image_id"], []).append(row["caption"])
    for clip in clips(out, "train"):
        texts = captions[clip["image_id"]]
        assert len(texts) == 5 == len(set(texts))
        for text in texts:
            for event in clip["events"]:
                if event["kind"] == "speech":
                    assert " ".join(event["words"]) in text and (event["speaker"] in text or (
                        "male" if event["speaker"] == "man" else "female") in text)
                if event["kind"] == "beeps":
                    assert "beep" in text
                if event["kind"] == "sweep":
                    assert event["direction"] in text or ("up" if event["direction"] == "rising" else "down") in text


def test_sampling_is_balanced():
    rng = random.Random(0)
    plans = [sound_scenes.sample_clip(rng) for _ in range(2000)]
    share = {kind: np.mean([any(e.kind == kind for e in plan) for plan in plans]) for kind in KINDS}
    assert 0.45 < share["speech"] < 0.55 and all(share[kind] > 0.3 for kind in KINDS)
    counts = [e.count for plan in plans for e in plan if e.kind == "beeps"]
    assert set(counts) == {1, 2, 3, 4}


def test_cli_makes_audio_and_prints_a_summary(tmp_path, capsys):
    assert main(["data", "make-audio", "--out", str(tmp_path), "--n-train", "3", "--n-test", "2", "--seed", "5",
                 "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "clips/s" in out and f"audio:{tmp_path}/test" in out
    assert len(list((tmp_path / "clips").glob("audio-*.wav"))) == 5


def test_cli_rejects_a_non_positive_count_and_a_missing_synthesiser(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "make-audio", "--out", str(tmp_path), "--n-test", "0"])
    assert exit_.value.code == 2 and "argument --n-test: must be >= 1, not 0" in capsys.readouterr().err
    monkeypatch.setattr(sound_scenes.shutil, "which", lambda program: None if program == "espeak-ng" else program)
    assert main(["data", "make-audio", "--out", str(tmp_path)]) == 2
    assert "apt-get install espeak-ng" in capsys.readouterr().err


def test_speech_does_not_depend_on_the_audio_system_of_the_machine(tmp_path, monkeypatch):
    """espeak-ng opens an audio device even to write to stdout. PulseAudio's client, lacking its runtime directory
    (as on a fresh machine: here a fresh HOME), names a new one with rand(), the C library's one random stream,
    which the breath noise of the voices that breathe (en-us+f2, f3) draws from: the first sentence such a voice
    said on a fresh machine sounded, and once trimmed lasted, differently from the same sentence said again."""
    event = sound_scenes.Event("speech", 0.5, words=("hello",), speaker="woman", voice="en-us+f2", voice_pitch=55,
                               speed=151)
    usual = sound_scenes.synthesise(event)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert np.array_equal(sound_scenes.synthesise(event), usual)
