"""Moving shapes: deterministic, truthful to the plan and to the pixels, readable by the standard readers."""

from __future__ import annotations

import json
import re

import av
import numpy as np
import pytest
from conftest import qa_by_media, read_split

from sensorium.benchmarks.scenes import COLORS
from sensorium.benchmarks.videos import (
    DIRECTIONS,
    FPS,
    FRAME_SIZE,
    PALETTE,
    QUESTION_TYPES,
    SHAPES,
    SPLITS,
    Track,
    make_videos,
)
from sensorium.cli import main
from sensorium.media import load_video

NAME = re.compile(rf"\b({'|'.join(PALETTE)}) ({'|'.join(SHAPES)})\b")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    out = tmp_path_factory.mktemp("videos")
    return out, make_videos(out, n_train=40, n_test=12, seed=3)


def plans(out, split) -> dict[int, list[dict]]:
    return {clip["image_id"]: clip["objects"] for clip in read_split(out, "clips", split)["clips"]}


def test_summary_counts_and_every_question_type_occurs(videos):
    out, summary = videos
    assert json.loads((out / "meta.json").read_text()) == summary
    assert {name: split["clips"] for name, split in summary["splits"].items()} == {"train": 40, "test": 12}
    types = summary["splits"]["train"]["question_types"]
    assert sum(types.values()) == summary["splits"]["train"]["questions"]
    assert all(types[kind] > 0 for kind in QUESTION_TYPES)


def test_clips_are_short_h264_mp4s_of_the_stated_size(videos):
    out, _ = videos
    for clip in read_split(out, "captions", "test")["images"]:
        with av.open(str(out / "videos" / clip["file_name"])) as container:
            stream = container.streams.video[0]
            frames = sum(1 for _ in container.decode(stream))
            assert (stream.codec_context.name, stream.width, stream.height) == ("h264", FRAME_SIZE, FRAME_SIZE)
            assert frames == clip["frames"] and 2 * FPS <= frames <= 4 * FPS


def check_answer(objects: list[dict], question: str, answer: str, kind: str) -> None:
    """Recompute the answer from the plan alone, independently of the generator."""
    assert kind in QUESTION_TYPES and re.fullmatch(r"[a-z0-9]+", answer)
    if kind == "count":
        counted = {"appear": lambda o: o["action"] == "appear", "disappear": lambda o: o["action"] == "disappear",
                   "move": lambda o: o["action"] in DIRECTIONS,
                   "are there at the start": lambda o: o["action"] != "appear",
                   "are there at the end": lambda o: o["action"] != "disappear"}
        [test] = [rule for phrase, rule in counted.items() if question == f"how many shapes {phrase}?"]
        assert answer == str(sum(map(test, objects))), question
        return
    named = NAME.findall(question)
    if named:
        [(color, shape)] = named
        [subject] = [o for o in objects if (o["color"], o["shape"]) == (color, shape)]
    else:  # 'the square': the only one
        [subject] = [o for o in objects if f"the {o['shape']} " in question]
    if kind == "direction":
        (x0, y0), (x1, y1) = subject["start"], subject["end"]
        moved = ("right" if x1 > x0 else "left") if abs(x1 - x0) > abs(y1 - y0) else ("down" if y1 > y0 else "up")
        assert abs(x1 - x0) + abs(y1 - y0) >= 30 and answer == moved, question
    elif kind == "color":
        assert subject["action"] == "recolor" and answer == subject["new_color"] != subject["color"]
    else:
        grows = subject["sides"][1] > subject["sides"][0]
        asks_grow = "bigger" in question or "grow" in question
        assert answer == ("yes" if grows == asks_grow else "no"), question


def test_questions_and_captions_are_true_to_the_plan(videos):
    out, _ = videos
    for split in SPLITS:
        plan = plans(out, split)
        for clip_id, asked in qa_by_media(out, split).items():
            for question, answer, kind in asked:
                check_answer(plan[clip_id], question, answer, kind)
        for caption in read_split(out, "captions", split)["annotations"]:
            objects = plan[caption["image_id"]]
            names = {f"{o['color']} {o['shape']}" for o in objects}
            assert {" ".join(pair) for pair in NAME.findall(caption["caption"])} <= names, caption
            assert all(name in caption["caption"] for name in names), caption  # every shape is described


def test_captions_say_what_each_shape_does(videos):
    out, _ = videos
    words = {"left": "left", "right": "right", "up": r"\b(up|upward|rises|rising)\b",
             "down": r"\b(down|downward|sinks|sinking)\b", "grow": "(grow|bigger|larger)",
             "shrink": "(shrink|smaller)", "appear": r"(appear|shows up|showing up|into view)",
             "disappear": "(disappear|vanish)", "still": "(still|not move|not moving|in place)"}
    plan = plans(out, "train")
    for caption in read_split(out, "captions", "train")["annotations"]:
        for thing in plan[caption["image_id"]]:
            # The clause about this shape runs from its name to the next shape's name.
            after = caption["caption"].split(f"{thing['color']} {thing['shape']}", 1)[1]
            clause = NAME.split(after)[0]
            expected = thing["new_color"] if thing["action"] == "recolor" else words[thing["action"]]
            assert re.search(expected, clause), (caption["caption"], thing)


def colour_mask(frame, color: str) -> np.ndarray:
    array = np.asarray(frame).astype(int)
    return np.abs(array - np.array(COLORS[color])).sum(axis=-1) < 60


def test_the_pixels_show_what_the_answers_say(videos):
    """Decode the clips: a mover's colour blob travels the stated way, a grower's blob gets bigger."""
    out, _ = videos
    checked = set()
    for split in SPLITS:
        plan = plans(out, split)
        names = {clip["id"]: clip["file_name"] for clip in read_split(out, "captions", split)["images"]}
        for clip_id, asked in qa_by_media(out, split).items():
            first, last = load_video(out / "videos" / names[clip_id], 8)[::7]
            for question, answer, kind in asked:
                if kind not in ("direction", "size"):
                    continue
                [(color, shape)] = NAME.findall(question) or [
                    (o["color"], o["shape"]) for o in plan[clip_id] if f"the {o['shape']} " in question]
                if sum(o["color"] == color for o in plan[clip_id]) > 1:
                    continue  # another shape of that colour would blur the blob
                before, after = colour_mask(first, color), colour_mask(last, color)
                if kind == "direction":
                    (y0, x0), (y1, x1) = (np.argwhere(m).mean(axis=0) for m in (before, after))
                    seen = ("right" if x1 > x0 else "left") if abs(x1 - x0) > abs(y1 - y0) else (
                        "down" if y1 > y0 else "up")
                    assert seen == answer, (question, names[clip_id])
                else:
                    grew = after.sum() > 1.5 * before.sum()
                    shrank = before.sum() > 1.5 * after.sum()
                    assert grew != shrank
                    assert answer == ("yes" if grew == ("bigger" in question or "grow" in question) else "no")
                checked.add(kind)
    assert checked == {"direction", "size"}


def test_colour_changes_are_visible(videos):
    out, _ = videos
    clips = read_split(out, "clips", "train")["clips"]
    changing = [(clip, o) for clip in clips for o in clip["objects"] if o["action"] == "recolor"]
    assert changing
    for clip, thing in changing[:4]:
        first, last = load_video(out / "videos" / clip["file_name"], 8)[::7]
        assert colour_mask(last, thing["new_color"]).sum() > colour_mask(first, thing["new_color"]).sum() + 50


def test_track_states_follow_the_action():
    appear = Track("circle", "red", "appear", (50, 50), (50, 50), (20, 20), change=0.4)
    assert appear.at(0.39) is None and appear.at(0.4) is not None
    mover = Track("square", "blue", "left", (80, 50), (30, 50), (20, 20))
    assert mover.at(0.5)[0] == (55, 50)
    recolor = Track("star", "green", "recolor", (50, 50), (50, 50), (20, 20), new_color="purple", change=0.5)
    assert recolor.at(0.2)[2] == "green" and recolor.at(0.8)[2] == "purple"


def test_cli_makes_videos_and_prints_a_summary(tmp_path, capsys):
    assert main(["data", "make-videos", "--out", str(tmp_path), "--n-train", "3", "--n-test", "2",
                 "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "clips/s" in out and f"videos:{tmp_path}/test" in out
    assert len(list((tmp_path / "videos").glob("videos-*.mp4"))) == 5


def test_cli_rejects_a_non_positive_count(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "make-videos", "--out", str(tmp_path), "--n-test", "0"])
    assert exit_.value.code == 2 and "argument --n-test: must be >= 1, not 0" in capsys.readouterr().err
