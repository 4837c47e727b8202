"""Moving shapes: a procedural, seed-deterministic video benchmark for captioning and video QA.

Every clip comes from a plan of 1-3 coloured shapes, each doing one thing over the clip: moving left,
right, up or down, growing, shrinking, changing colour, appearing, disappearing, or staying still.
Its captions and question-answer pairs are written from that plan, so every reference is true by
construction, and answering needs the time axis: a single frame cannot tell left from right, growing
from shrinking, or which colour a shape turns.

The output is in the formats users already have: h264 MP4 clips, COCO captions JSON (the clip's file
name as ``file_name``) and VQA v2 questions + annotations JSON (the question category is the
annotation's ``answer_type``); ``videos:DIR/SPLIT`` reads the questions of a split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from .scenes import COLORS, OUTLINES, gradient
from .wording import NUMBER_WORDS, join_phrases, with_article
from .writing import Benchmark, Item, write_benchmark

GENERATOR_VERSION = 1
FRAME_SIZE = 112
FPS = 10
DURATION = (2.0, 4.0)  # seconds, uniform
SUPERSAMPLE = 2  # drawn at twice the size and reduced: smooth edges without a slower anti-aliasing pass
SPLITS = ("train", "test")
VIDEO_PATTERN = "{subtype}_{image_id:06d}.mp4"  # vqav2.image_path pattern of the clips
SHAPES = ("circle", "square", "triangle", "star")
PALETTE = ("red", "orange", "yellow", "green", "blue", "purple")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# What a shape does, drawn by kind first so that every kind is common: (kind, weight, actions).
ACTION_KINDS = (("move", 3, tuple(DIRECTIONS)), ("size", 2, ("grow", "shrink")), ("color", 2, ("recolor",)),
                ("visibility", 2, ("appear", "disappear")), ("still", 1, ("still",)))
QUESTION_TYPES = ("direction", "color", "count", "size")
BENCHMARK = Benchmark(description="moving shapes", version=GENERATOR_VERSION, splits=SPLITS, media="videos",
                      file_pattern=VIDEO_PATTERN, data_type="videos", plans="clips", question_types=QUESTION_TYPES,
                      unit="clip", making="rendering")
CAPTIONS_PER_CLIP = 5
MAX_OBJECTS = 3
SIDE = (18, 26)  # side of a shape's bounding square in pixels; growing doubles it, shrinking halves it
TRAVEL = (40, 58)  # pixels a moving shape covers over the clip: the direction is never in doubt
CHANGE = (0.3, 0.7)  # when in the clip a colour changes or a shape (dis)appears: both states are seen
MARGIN = 4
MAX_OVERLAP = 0.1  # of the smaller box at any moment: every shape stays clearly visible
OUTLINE = (35, 35, 35)

# Phrases per action: (present tense, -ing form), {old} and {new} standing for colours.
PHRASES = {
    "left": (("moves to the left", "moving to the left"), ("moves left", "moving left"),
             ("slides to the left", "sliding to the left"), ("goes to the left", "going to the left")),
    "right": (("moves to the right", "moving to the right"), ("moves right", "moving right"),
              ("slides to the right", "sliding to the right"), ("goes to the right", "going to the right")),
    "up": (("moves up", "moving up"), ("moves upward", "moving upward"), ("rises", "rising"),
           ("goes up", "going up")),
    "down": (("moves down", "moving down"), ("moves downward", "moving downward"), ("sinks", "sinking"),
             ("goes down", "going down")),
    "grow": (("grows", "growing"), ("gets bigger", "getting bigger"), ("grows larger", "growing larger")),
    "shrink": (("shrinks", "shrinking"), ("gets smaller", "getting smaller"),
               ("becomes smaller", "becoming smaller")),
    "recolor": (("turns {new}", "turning {new}"), ("changes color to {new}", "changing color to {new}"),
                ("changes from {old} to {new}", "changing from {old} to {new}"), ("becomes {new}", "becoming {new}")),
    "appear": (("appears", "appearing"), ("shows up", "showing up"), ("comes into view", "coming into view")),
    "disappear": (("disappears", "disappearing"), ("vanishes", "vanishing")),
    "still": (("stays still", "staying still"), ("does not move", "not moving"),
              ("stays in place", "staying in place")),
}


@dataclass(frozen=True)
class Track:
    """One shape over the clip; positions are centres in pixels, ``change`` a fraction of the clip."""

    shape: str
    color: str  # at the start (or when it appears)
    action: str
    start: tuple[float, float]
    end: tuple[float, float]
    sides: tuple[float, float]  # side of the bounding square at the start and at the end
    new_color: str | None = None
    change: float = 0.5

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    def at(self, u: float) -> tuple[tuple[float, float], float, str] | None:
        """(centre, side, colour) at fraction ``u`` of the clip, or None while the shape is not shown."""
        if (self.action == "appear" and u < self.change) or (self.action == "disappear" and u >= self.change):
            return None
        centre = (self.start[0] + u * (self.end[0] - self.start[0]), self.start[1] + u * (self.end[1] - self.start[1]))
        side = self.sides[0] + u * (self.sides[1] - self.sides[0])
        color = self.new_color if self.action == "recolor" and u >= self.change else self.color
        return centre, side, color

    def to_json(self) -> dict[str, Any]:
        return {"shape": self.shape, "color": self.color, "action": self.action, "new_color": self.new_color,
                "start": [round(v, 2) for v in self.start], "end": [round(v, 2) for v in self.end],
                "sides": [round(v, 2) for v in self.sides], "change": round(self.change, 3)}


def _box(centre: tuple[float, float], side: float) -> tuple[float, float, float, float]:
    return centre[0] - side / 2, centre[1] - side / 2, centre[0] + side / 2, centre[1] + side / 2


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection of two boxes as a fraction of the smaller one."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min(a[2] - a[0], b[2] - b[0]) ** 2
    return max(width, 0) * max(height, 0) / smaller


def _clear(track: Track, others: list[Track]) -> bool:
    """Whether ``track`` stays apart from every other shape at every moment both are shown."""
    for u in np.linspace(0, 1, 11):
        mine = track.at(u)
        if mine is None:
            continue
        for other in others:
            theirs = other.at(u)
            if theirs is not None and _overlap(_box(*mine[:2]), _box(*theirs[:2])) > MAX_OVERLAP:
                return False
    return True


def _track(rng: random.Random, shape: str, color: str, action: str, taken: set[tuple[str, str]]) -> Track:
    """A random path for the action that keeps the whole shape inside the frame."""
    side = rng.uniform(*SIDE)
    sides = {"grow": (side, 2 * side), "shrink": (2 * side, side)}.get(action, (side, side))
    low, high = MARGIN + max(sides) / 2, FRAME_SIZE - MARGIN - max(sides) / 2
    dx, dy = DIRECTIONS.get(action, (0, 0))
    travel = rng.uniform(*TRAVEL) if action in DIRECTIONS else 0.0
    # The start leaves room for the travel in the direction of motion.
    x = rng.uniform(low + travel * (dx < 0), high - travel * (dx > 0))
    y = rng.uniform(low + travel * (dy < 0), high - travel * (dy > 0))
    new_color = None
    if action == "recolor":  # never into a (colour, shape) another shape already has
        new_color = rng.choice([c for c in PALETTE if c != color and (c, shape) not in taken])
    return Track(shape=shape, color=color, action=action, start=(x, y), end=(x + dx * travel, y + dy * travel),
                 sides=sides, new_color=new_color, change=rng.uniform(*CHANGE))


def sample_clip(rng: random.Random) -> list[Track]:
    """1-3 shapes, each a different (colour, shape), doing one thing each; not all of them stay still."""
    while True:
        count = rng.randint(1, MAX_OBJECTS)
        pairs = rng.sample([(c, s) for c in PALETTE for s in SHAPES], count)
        actions = [rng.choice(rng.choices(ACTION_KINDS, weights=[w for _, w, _ in ACTION_KINDS])[0][2])
                   for _ in pairs]
        if all(action == "still" for action in actions):
            continue
        tracks: list[Track] = []
        for (color, shape), action in zip(pairs, actions, strict=True):
            taken = set(pairs) | {(t.new_color, t.shape) for t in tracks}
            for _ in range(50):
                track = _track(rng, shape, color, action, taken)
                if _clear(track, tracks):
                    tracks.append(track)
                    break
        if len(tracks) == count:
            return tracks


def draw_frame(tracks: list[Track], u: float, background: Image.Image) -> Image.Image:
    """The shapes at fraction ``u`` of the clip, in plan order."""
    image = background.copy()
    pen = ImageDraw.Draw(image)
    for track in tracks:
        state = track.at(u)
        if state is None:
            continue
        (cx, cy), side, color = state
        x, y, side = (cx - side / 2) * SUPERSAMPLE, (cy - side / 2) * SUPERSAMPLE, side * SUPERSAMPLE
        pen.polygon([(x + a * side, y + b * side) for a, b in OUTLINES[track.shape]], fill=COLORS[color],
                    outline=OUTLINE, width=SUPERSAMPLE)
    return image.reduce(SUPERSAMPLE)


def write_clip(tracks: list[Track], frames: int, rng: random.Random, path: Path) -> None:
    """H.264 MP4 at FPS frames per second whose bytes depend on the seed alone.

    One encoder thread, and no macroblock-tree rate control: with mbtree, x264's coding choices for some
    clips differed between two renders of identical frames, so the same seed gave different files.
    """
    background = gradient(rng, FRAME_SIZE * SUPERSAMPLE, brightness=(215, 240), tint=8, darkening=(8, 25))
    options = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width = stream.height = FRAME_SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for index in range(frames):
            image = draw_frame(tracks, index / (frames - 1), background)
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---- captions -------------------------------------------------------------------------------------
def _phrase(track: Track, rng: random.Random, form: int) -> str:
    """What the shape does: form 0 'moves to the left', form 1 'moving to the left'."""
    return rng.choice(PHRASES[track.action])[form].format(old=track.color, new=track.new_color)


def _clause(track: Track, rng: random.Random, article: str = "a") -> str:
    subject = with_article(track.name) if article == "a" else f"the {track.name}"
    return f"{subject} {_phrase(track, rng, 0)}"


def captions(tracks: list[Track], rng: random.Random) -> list[str]:
    """Five different true captions from varied templates, naming every shape and what it does."""
    templates = [_caption_while, _caption_and, _caption_video_of, _caption_count, _caption_in_this_video,
                 _caption_the, _caption_as]
    written: list[str] = []
    for _ in range(20):
        for template in rng.sample(templates, len(templates)):
            text = template(rng.sample(tracks, len(tracks)), rng)
            if text not in written:
                written.append(text)
        if len(written) >= CAPTIONS_PER_CLIP:
            break
    return written[:CAPTIONS_PER_CLIP]


def _caption_while(tracks: list[Track], rng: random.Random) -> str:
    """'a red circle moves to the left while a blue square grows'."""
    clauses = [_clause(t, rng) for t in tracks]
    return clauses[0] if len(clauses) == 1 else f"{join_phrases(clauses[:-1])} while {clauses[-1]}"


def _caption_and(tracks: list[Track], rng: random.Random) -> str:
    return join_phrases([_clause(t, rng) for t in tracks])


def _caption_video_of(tracks: list[Track], rng: random.Random) -> str:
    """'a video of a red circle moving left and a blue square growing'."""
    return "a video of " + join_phrases([f"{with_article(t.name)} {_phrase(t, rng, 1)}" for t in tracks])


def _caption_count(tracks: list[Track], rng: random.Random) -> str:
    if len(tracks) == 1:
        return f"a single {tracks[0].name} {_phrase(tracks[0], rng, 0)}"
    return f"{NUMBER_WORDS[len(tracks)]} shapes: {_caption_and(tracks, rng)}"


def _caption_in_this_video(tracks: list[Track], rng: random.Random) -> str:
    return f"in this video, {_caption_and(tracks, rng)}"


def _caption_the(tracks: list[Track], rng: random.Random) -> str:
    return join_phrases([_clause(t, rng, article="the") for t in tracks])


def _caption_as(tracks: list[Track], rng: random.Random) -> str:
    """'the blue square grows as the red circle slides to the left'."""
    if len(tracks) == 1:
        return f"we see {with_article(tracks[0].name)} {_phrase(tracks[0], rng, 1)}"
    clauses = [_clause(t, rng, article="the") for t in tracks]
    return f"{clauses[0]} as {join_phrases(clauses[1:])}"


# ---- questions ------------------------------------------------------------------------------------
def _reference(track: Track, tracks: list[Track]) -> str:
    """'square' when it is the only square, else 'red square'."""
    return track.shape if sum(t.shape == track.shape for t in tracks) == 1 else track.name


def questions(tracks: list[Track], rng: random.Random) -> list[tuple[str, str, str]]:
    """(type, question, one-word answer): one count question, and one question per shape that moves,
    changes colour or changes size."""
    asked = [("count", *_count(tracks, rng))]
    for track in tracks:
        if track.action in DIRECTIONS:
            asked.append(("direction", *_direction(track, rng)))
        elif track.action == "recolor":
            asked.append(("color", *_color_change(track, tracks, rng)))
        elif track.action in ("grow", "shrink"):
            asked.append(("size", *_size(track, tracks, rng)))
    return asked


def _direction(track: Track, rng: random.Random) -> tuple[str, str]:
    template = rng.choice(["which way does the {} move?", "in which direction does the {} move?",
                           "where does the {} move?"])
    return template.format(track.name), track.action


def _color_change(track: Track, tracks: list[Track], rng: random.Random) -> tuple[str, str]:
    template = rng.choice(["what color does the {} become?", "what color does the {} turn?",
                           "what color does the {} change to?"])
    return template.format(_reference(track, tracks)), track.new_color


def _count(tracks: list[Track], rng: random.Random) -> tuple[str, str]:
    options = [("how many shapes appear?", sum(t.action == "appear" for t in tracks)),
               ("how many shapes disappear?", sum(t.action == "disappear" for t in tracks)),
               ("how many shapes move?", sum(t.action in DIRECTIONS for t in tracks)),
               ("how many shapes are there at the start?", sum(t.action != "appear" for t in tracks)),
               ("how many shapes are there at the end?", sum(t.action != "disappear" for t in tracks))]
    # Answers first, then a question with that answer: "0" would otherwise dominate.
    number = rng.choice(sorted({n for _, n in options}))
    return rng.choice([q for q, n in options if n == number]), str(number)


def _size(track: Track, tracks: list[Track], rng: random.Random) -> tuple[str, str]:
    """'does the circle get bigger?' about a shape that grows or shrinks: yes and no equally often."""
    word = rng.choice(["grow", "shrink"])
    template = rng.choice(["does the {} get bigger?", "does the {} grow?"] if word == "grow" else
                          ["does the {} get smaller?", "does the {} shrink?"])
    return template.format(_reference(track, tracks)), "yes" if word == track.action else "no"


# ---- writing a data set ---------------------------------------------------------------------------
def make_videos(out: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, Any]:
    """Write the splits under ``out`` and return the summary also written to ``out/meta.json``; the same seed
    gives byte-identical files."""
    details = {"frame_size": FRAME_SIZE, "fps": FPS, "duration": list(DURATION), "shapes": list(SHAPES),
               "colors": list(PALETTE), "actions": [a for _, _, actions in ACTION_KINDS for a in actions]}
    return write_benchmark(out, BENCHMARK, make_clip, n_train, n_test, seed, details)


def make_clip(out: Path, split: str, index: int, seed: int) -> Item:
    """Plan, render and write one clip; its item (captions file entry, plan, captions, questions)."""
    rng = random.Random(f"{seed}/{split}/{index}")
    clip_id = index + 1
    tracks = sample_clip(rng)
    frames = round(rng.uniform(*DURATION) * FPS)
    file = BENCHMARK.media_path(out, split, clip_id)
    write_clip(tracks, frames, rng, file)
    written = captions(tracks, rng)
    asked = questions(tracks, rng)
    return Item(media={"id": clip_id, "file_name": file.name, "width": FRAME_SIZE, "height": FRAME_SIZE,
                       "frames": frames, "fps": FPS},
                plan={"image_id": clip_id, "file_name": file.name, "frames": frames,
                      "objects": [t.to_json() for t in tracks]},
                captions=written, questions=asked)
