"""Moving shapes with sound: a procedural, seed-deterministic audiovisual benchmark for models with two senses.

Every clip is a moving-shapes clip of the ``videos`` benchmark (112 px, 10 fps, 2-4 s; at least one shape
moves or changes colour) with a sound track muxed into the same MP4 (AAC, 16 kHz mono): one sound of the
``audio`` benchmark's vocabulary that is easy to tell apart, one to four beeps or a tone sweeping up or down,
played somewhere inside the clip. Every clip has three questions, one of each type (the annotation's
``answer_type``): ``picture`` asks about the shapes alone (which way one moves, what colour one turns),
``sound`` about the sound alone (how many beeps, rising or falling), and ``both`` needs both senses ("how many
beeps are there, and which way does the red circle move?" -> "2 left"). Captions say what is seen and heard
("a red circle moves left while two beeps sound").

The output is in the formats users already have: MP4 clips (H.264 + AAC), COCO captions JSON and VQA v2
questions + annotations JSON; each split's questions of one type are also written apart
(``questions_SPLIT_TYPE.json``, ``annotations_SPLIT_TYPE.json``), so that an adapter of one sense trains on its
own sense's questions. ``audiovisual:DIR/SPLIT`` reads all the questions of a split, ``audiovisual:DIR/SPLIT/TYPE``
those of one type. ``clips_SPLIT.json`` keeps each clip's shapes and its sound with its start and end.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import av
import numpy as np

from . import SUBSETS, sounds, videos
from .writing import Benchmark, Item, write_benchmark

GENERATOR_VERSION = 1
SAMPLE_RATE = sounds.SAMPLE_RATE  # 16 kHz
SOUND_KINDS = ("beeps", "sweep")  # drawn equally often: a count of 1-4, or rising / falling
SOUND_QUESTION_TYPES = {"beeps": "count", "sweep": "direction"}  # the sounds benchmark's question of each kind
LEAD = 0.1  # seconds of silence at least before and after the sound
AUDIO_FRAME = 1024  # samples per AAC frame
QUESTION_TYPES = SUBSETS["audiovisual"]  # ("picture", "sound", "both"), one question of each per clip
BENCHMARK = Benchmark(description="moving shapes with sound", version=GENERATOR_VERSION, splits=videos.SPLITS,
                      media="videos", file_pattern=videos.VIDEO_PATTERN, data_type="audiovisual", plans="clips",
                      question_types=QUESTION_TYPES, unit="clip", making="rendering", subsets=QUESTION_TYPES)
CAPTIONS_PER_CLIP = videos.CAPTIONS_PER_CLIP


def _asked_about(track: videos.Track) -> bool:
    """Whether a picture question can ask about the shape: which way it moves or what colour it turns."""
    return track.action in videos.DIRECTIONS or track.action == "recolor"


def sample_clip(rng: random.Random) -> tuple[list[videos.Track], sounds.Event]:
    """The shapes of a moving-shapes clip in which one shape at least moves or changes colour, and its sound."""
    tracks = videos.sample_clip(rng)
    while not any(map(_asked_about, tracks)):
        tracks = videos.sample_clip(rng)
    return tracks, sounds.sample_event(rng.choice(SOUND_KINDS), rng)


def sound_track(event: sounds.Event, seconds: float, rng: random.Random) -> tuple[np.ndarray, float, float]:
    """``seconds`` of 16 kHz samples, silent but for the event placed at random inside; its start and end."""
    sound = sounds.synthesise(event)
    length = round(seconds * SAMPLE_RATE)
    lead = round(LEAD * SAMPLE_RATE)
    start = rng.randint(lead, length - lead - len(sound))  # a sound lasts under 1 s, a clip 2 s at least
    samples = np.zeros(length, np.float32)
    samples[start:start + len(sound)] = sound
    return samples, start / SAMPLE_RATE, (start + len(sound)) / SAMPLE_RATE


def write_clip(tracks: list[videos.Track], frames: int, samples: np.ndarray, rng: random.Random, path: Path) -> None:
    """The moving-shapes clip of ``videos.write_clip`` with ``samples`` as its AAC sound track, bytes set by the seed.

    The picture is rendered by the videos benchmark into a silent file beside ``path``, whose H.264 packets
    are copied unchanged next to the sound; one encoder thread, as there.
    """
    silent = path.with_name(f"{path.stem}.silent.mp4")
    videos.write_clip(tracks, frames, rng, silent)
    try:
        with av.open(str(silent)) as source, av.open(str(path), "w", format="mp4") as container:
            picture = container.add_stream_from_template(source.streams.video[0])
            sound = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            sound.codec_context.thread_count = 1
            for packet in source.demux(source.streams.video[0]):
                if packet.dts is not None:  # the demuxer's last, empty packet marks the end
                    packet.stream = picture
                    container.mux(packet)
            for offset in range(0, len(samples), AUDIO_FRAME):
                frame = av.AudioFrame.from_ndarray(samples[None, offset:offset + AUDIO_FRAME], format="fltp",
                                                   layout="mono")
                frame.sample_rate, frame.pts = SAMPLE_RATE, offset
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    finally:
        silent.unlink(missing_ok=True)


# ---- captions -------------------------------------------------------------------------------------------------
def captions(tracks: list[videos.Track], event: sounds.Event, rng: random.Random) -> list[str]:
    """Five different true captions: each of the videos benchmark's five, with the sound in a varied template."""
    plural = event.kind == "beeps" and event.count > 1
    sounds_verb = "sound" if plural else "sounds"
    templates = [lambda seen, heard: f"{seen} while {heard} {sounds_verb}",
                 lambda seen, heard: f"{seen}, with {heard}",
                 lambda seen, heard: f"{seen}, and {heard} {sounds_verb}",
                 lambda seen, heard: f"{seen}, and we hear {heard}",
                 lambda seen, heard: f"{seen} to the sound of {heard}"]
    seen = videos.captions(tracks, rng)
    return [template(text, sounds.noun_phrase(event, rng))
            for text, template in zip(seen, rng.sample(templates, len(templates)), strict=False)]


# ---- questions ------------------------------------------------------------------------------------------------
def picture_question(tracks: list[videos.Track], rng: random.Random) -> tuple[str, str]:
    """The videos benchmark's question about one shape that moves (which way?) or changes colour (to what?)."""
    track = rng.choice([t for t in tracks if _asked_about(t)])
    if track.action in videos.DIRECTIONS:
        return videos._direction(track, rng)
    return videos._color_change(track, tracks, rng)


def sound_question(event: sounds.Event, rng: random.Random) -> tuple[str, str]:
    """The sounds benchmark's question about the sound: how many beeps ("1"-"4"), or is the sweep rising or falling."""
    wanted = SOUND_QUESTION_TYPES[event.kind]
    return next((question, answer) for kind, question, answer in sounds.questions([event], rng) if kind == wanted)


def questions(tracks: list[videos.Track], event: sounds.Event, rng: random.Random) -> list[tuple[str, str, str]]:
    """(type, question, answer) of each type: the picture alone, the sound alone, and both at once ("2 left")."""
    seen, heard = picture_question(tracks, rng), sound_question(event, rng)
    both_seen, both_heard = picture_question(tracks, rng), sound_question(event, rng)
    both = (f"{both_heard[0].removesuffix('?')}, and {both_seen[0]}", f"{both_heard[1]} {both_seen[1]}")
    return [("picture", *seen), ("sound", *heard), ("both", *both)]


# ---- writing a data set ---------------------------------------------------------------------------------------
def make_audiovisual(out: Path, n_train: int, n_test: int, seed: int = 0,
                     workers: int | None = None) -> dict[str, Any]:
    """Write the splits under ``out`` and return the summary also written to ``out/meta.json``; the same seed
    gives byte-identical files. ``workers`` clips are made at once (default: one per CPU)."""
    sounds.require_programs("sox")
    details = {"frame_size": videos.FRAME_SIZE, "fps": videos.FPS, "duration": list(videos.DURATION),
               "sampling_rate": SAMPLE_RATE, "sound_kinds": list(SOUND_KINDS),
               "question_types": list(QUESTION_TYPES)}
    return write_benchmark(out, BENCHMARK, make_clip, n_train, n_test, seed, details,
                           workers=workers or os.cpu_count() or 1)


def make_clip(out: Path, split: str, index: int, seed: int) -> Item:
    """Plan, render, synthesise and write one clip; its item (captions file entry, plan, captions, questions)."""
    rng = random.Random(f"{seed}/{split}/{index}")
    clip_id = index + 1
    tracks, event = sample_clip(rng)
    frames = round(rng.uniform(*videos.DURATION) * videos.FPS)
    seconds = frames / videos.FPS
    samples, start, end = sound_track(event, seconds, rng)
    file = BENCHMARK.media_path(out, split, clip_id)
    write_clip(tracks, frames, samples, rng, file)
    written = captions(tracks, event, rng)
    asked = questions(tracks, event, rng)
    return Item(media={"id": clip_id, "file_name": file.name, "width": videos.FRAME_SIZE,
                       "height": videos.FRAME_SIZE, "frames": frames, "fps": videos.FPS, "seconds": seconds,
                       "sampling_rate": SAMPLE_RATE},
                plan={"image_id": clip_id, "file_name": file.name, "frames": frames, "seconds": seconds,
                      "objects": [t.to_json() for t in tracks],
                      "sound": {**event.to_json(), "start": round(start, 4), "end": round(end, 4)}},
                captions=written, questions=asked)
