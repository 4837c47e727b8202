"""Shapes scenes: a procedural, seed-deterministic image benchmark for captioning and VQA.

Every image comes from a scene graph (coloured shapes with a size, a position and a texture), and its
captions and question-answer pairs are written from that graph, so every reference is true by
construction. Besides an in-distribution ``test`` split, ``test-novel`` measures compositional
generalisation: a few (colour, shape) combinations never appear in any training image, while every
test-novel image holds at least one of them and its questions and captions are about it.

The output is in the formats users already have: COCO-named JPEG images, COCO captions JSON and the
VQA v2 questions + annotations JSON (the question category is the annotation's ``answer_type``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..data.vqav2 import COCO_PATTERN
from .wording import NUMBER_WORDS, join_phrases, with_article
from .writing import Benchmark, Item, write_benchmark

GENERATOR_VERSION = 1
IMAGE_SIZE = 224
SUPERSAMPLE = 2  # drawn at twice the size and reduced: smooth edges without a slower anti-aliasing pass
SPLITS = ("train", "test", "test-novel")
SHAPES = ("circle", "square", "triangle", "star", "heart")
COLORS = {
    "red": (215, 30, 35), "orange": (250, 135, 10), "yellow": (250, 215, 20), "green": (30, 160, 50),
    "blue": (30, 80, 225), "purple": (140, 50, 190), "black": (20, 20, 20),
}
SIZES = {"small": 36, "large": 76}  # side of the bounding square in pixels: a clear ~2x ratio
SIZE_JITTER = 2  # +- pixels, so that sizes are not two exact values
# One combination per shape and never the same colour twice, so every colour and every shape is still
# seen in training, only never together.
HELD_OUT = (("red", "triangle"), ("blue", "star"), ("green", "square"), ("yellow", "circle"), ("purple", "heart"))
QUESTION_TYPES = ("existence", "count", "color", "shape", "position", "comparison")
BENCHMARK = Benchmark(description="shapes scenes", version=GENERATOR_VERSION, splits=SPLITS, media="images",
                      file_pattern=COCO_PATTERN, data_type="scenes", plans="scenes", question_types=QUESTION_TYPES,
                      unit="image", making="drawing")
CAPTIONS_PER_IMAGE = 5
MAX_OBJECTS = 4
STRIPED_PROBABILITY = 0.25
MARGIN = 6  # pixels between every object and the image border
MAX_OVERLAP = 0.1  # of the smaller bounding box: overlap stays mild, every object stays clearly visible
OUTLINE = (35, 35, 35)
RELATION_PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def _unit_outline(shape: str) -> list[tuple[float, float]]:
    """The shape's outline scaled to fill the unit square exactly, so a bbox is the drawn extent."""
    angles = np.linspace(0, 2 * math.pi, 72, endpoint=False)
    if shape == "circle":
        points = [(math.cos(t), math.sin(t)) for t in angles]
    elif shape == "square":
        points = [(0, 0), (1, 0), (1, 1), (0, 1)]
    elif shape == "triangle":
        points = [(0.5, 0), (1, 1), (0, 1)]
    elif shape == "star":
        points = [((1 if k % 2 == 0 else 0.45) * math.sin(k * math.pi / 5),
                   -(1 if k % 2 == 0 else 0.45) * math.cos(k * math.pi / 5)) for k in range(10)]
    else:  # heart: the classic parametric curve
        points = [(16 * math.sin(t) ** 3, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                            - math.cos(4 * t))) for t in angles]
    xs, ys = [x for x, _ in points], [y for _, y in points]
    return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in points]


OUTLINES = {shape: _unit_outline(shape) for shape in SHAPES}


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene; ``box`` is (x, y, side) of its bounding square in image pixels."""

    shape: str
    color: str
    size: str
    striped: bool
    box: tuple[int, int, int]

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def center(self) -> tuple[float, float]:
        x, y, side = self.box
        return x + side / 2, y + side / 2

    @property
    def detailed_name(self) -> str:
        """'large striped red circle': size, texture, colour, shape."""
        return " ".join(filter(None, [self.size, "striped" if self.striped else "", self.color, self.shape]))

    def describe(self, detailed: bool = True) -> str:
        """'a large striped red circle' (detailed) or 'a red circle'."""
        return with_article(self.detailed_name if detailed else self.name)

    def to_json(self) -> dict[str, Any]:
        x, y, side = self.box
        return {"shape": self.shape, "color": self.color, "size": self.size,
                "texture": "striped" if self.striped else "plain", "bbox": [x, y, side, side]}


Scene = list[SceneObject]


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Where ``a`` is relative to ``b``, only when nobody would hesitate: the boxes do not overlap along
    one axis and the centres differ at most half as much along the other; otherwise None."""
    (ax, ay), (bx, by) = a.center, b.center
    dx, dy = ax - bx, ay - by
    apart_x = a.box[0] + a.box[2] <= b.box[0] or b.box[0] + b.box[2] <= a.box[0]
    apart_y = a.box[1] + a.box[2] <= b.box[1] or b.box[1] + b.box[2] <= a.box[1]
    if apart_x and abs(dy) <= abs(dx) / 2:
        return "left" if dx < 0 else "right"
    if apart_y and abs(dx) <= abs(dy) / 2:
        return "above" if dy < 0 else "below"
    return None


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """Intersection of two bounding squares as a fraction of the smaller one."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(width, 0) * max(height, 0) / min(a[2], b[2]) ** 2


def _place(rng: random.Random, sides: list[int]) -> list[tuple[int, int, int]] | None:
    """Boxes for the given sides inside the margins with mild overlap, or None when they do not fit."""
    boxes: list[tuple[int, int, int]] = []
    for side in sides:
        for _ in range(50):
            highest = IMAGE_SIZE - MARGIN - side
            box = (rng.randint(MARGIN, highest), rng.randint(MARGIN, highest), side)
            if all(_overlap(box, other) <= MAX_OVERLAP for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def sample_scene(rng: random.Random, combinations: list[tuple[str, str]],
                 required: list[tuple[str, str]] | None = None) -> list[SceneObject]:
    """1-4 objects, each a different (colour, shape) so that 'the red circle' always names one object.

    ``required`` (test-novel) picks one of these combinations first; the others come from ``combinations``.
    Objects are listed in drawing order: large ones first, so a small one is never hidden under a large one.
    """
    count = rng.randint(1, MAX_OBJECTS)
    first = [rng.choice(required)] if required else []
    chosen = first + rng.sample([c for c in combinations if c not in first], count - len(first))
    sizes = [rng.choice(list(SIZES)) for _ in chosen]
    striped = [rng.random() < STRIPED_PROBABILITY for _ in chosen]
    order = sorted(range(count), key=lambda i: -SIZES[sizes[i]])
    sides = [SIZES[sizes[i]] + rng.randint(-SIZE_JITTER, SIZE_JITTER) for i in order]
    boxes = None
    while boxes is None:  # four large shapes occasionally need a second try
        boxes = _place(rng, sides)
    return [SceneObject(shape=chosen[i][1], color=chosen[i][0], size=sizes[i], striped=striped[i], box=box)
            for i, box in zip(order, boxes, strict=True)]


def gradient(rng: random.Random, size: int, brightness: tuple[int, int], tint: int,
             darkening: tuple[int, int]) -> Image.Image:
    """A light square background: a random grey within ``brightness``, each channel tinted by up to ``tint``,
    darkening from top to bottom by an amount within ``darkening``. Plain, but never the same twice."""
    base = rng.randint(*brightness)
    top = np.array([base + rng.randint(-tint, tint) for _ in range(3)], dtype=np.float32)
    bottom = top - rng.randint(*darkening)
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None] * (bottom - top) + top
    return Image.fromarray(np.broadcast_to(rows[:, None, :], (size, size, 3)).round().astype(np.uint8))


def draw(objects: list[SceneObject], rng: random.Random) -> Image.Image:
    """The scene on a light background with a gentle, randomly tinted vertical gradient."""
    image = gradient(rng, IMAGE_SIZE * SUPERSAMPLE, brightness=(220, 240), tint=6, darkening=(8, 22))
    pen = ImageDraw.Draw(image)
    for thing in objects:
        x, y, side = (value * SUPERSAMPLE for value in thing.box)
        points = [(x + u * side, y + v * side) for u, v in OUTLINES[thing.shape]]
        color = COLORS[thing.color]
        pen.polygon(points, fill=color)
        if thing.striped:
            _stripe(image, thing, points, color)
        pen.polygon(points, outline=OUTLINE, width=2 * SUPERSAMPLE)
    return image.reduce(SUPERSAMPLE)


def _stripe(image: Image.Image, thing: SceneObject, points: list[tuple[float, float]],
            color: tuple[int, int, int]) -> None:
    """Diagonal stripes of a lighter tint of the object's own colour, clipped to its outline."""
    x, y, side = (value * SUPERSAMPLE for value in thing.box)
    mask = Image.new("L", image.size)
    ImageDraw.Draw(mask).polygon(points, fill=255)
    tint = tuple(round(c + 0.4 * (255 - c)) for c in color)
    stripes = Image.new("RGB", image.size, color)
    pen = ImageDraw.Draw(stripes)
    spacing = max(side // 5, 6)
    for offset in range(-side, side, spacing):
        pen.line([(x + offset, y + side), (x + offset + side, y)], fill=tint, width=max(spacing // 3, 2))
    image.paste(stripes, (0, 0), mask)


def captions(objects: list[SceneObject], focus: list[SceneObject], rng: random.Random) -> list[str]:
    """Five different true captions from varied templates; those naming only some objects name a focus one."""
    templates = [_caption_listing, _caption_short, _caption_count, _caption_there, _caption_picture,
                 _caption_relation, _caption_there_relation, _caption_relation_sentence, _caption_comparison,
                 _caption_grouped, _caption_region]
    written: list[str] = []
    for template in rng.sample(templates, len(templates)):
        text = template(rng.sample(objects, len(objects)), focus, rng)
        if text and text not in written:
            written.append(text)
    return written[:CAPTIONS_PER_IMAGE]


def _caption_listing(objects: Scene, focus: Scene, rng: random.Random) -> str:
    return join_phrases([o.describe() for o in objects])


def _caption_short(objects: Scene, focus: Scene, rng: random.Random) -> str:
    return join_phrases([o.describe(detailed=False) for o in objects])


def _caption_count(objects: Scene, focus: Scene, rng: random.Random) -> str:
    if len(objects) == 1:
        return f"a single {objects[0].detailed_name}"
    return f"{NUMBER_WORDS[len(objects)]} shapes: {_caption_listing(objects, focus, rng)}"


def _caption_there(objects: Scene, focus: Scene, rng: random.Random) -> str:
    if len(objects) == 1:
        return f"there is {objects[0].describe()} in the picture"
    return f"there are {NUMBER_WORDS[len(objects)]} shapes in the picture: {_caption_short(objects, focus, rng)}"


def _caption_picture(objects: Scene, focus: Scene, rng: random.Random) -> str:
    return f"a picture of {_caption_listing(objects, focus, rng)} on a plain background"


def _related_pair(objects: Scene, focus: Scene, rng: random.Random) -> tuple[SceneObject, SceneObject, str] | None:
    pairs = [(a, b, r) for a, b in permutations(objects, 2) if (a in focus or b in focus) and (r := relation(a, b))]
    return rng.choice(pairs) if pairs else None


def _caption_relation(objects: Scene, focus: Scene, rng: random.Random) -> str | None:
    if not (pair := _related_pair(objects, focus, rng)):
        return None
    a, b, where = pair
    rest = [o.describe() for o in objects if o not in (a, b)]
    text = f"{a.describe()} {RELATION_PHRASES[where]} {b.describe()}"
    return f"{text}, along with {join_phrases(rest)}" if rest else text


def _caption_there_relation(objects: Scene, focus: Scene, rng: random.Random) -> str | None:
    if not (pair := _related_pair(objects, focus, rng)):
        return None
    a, b, where = pair
    return f"there is {a.describe(detailed=False)} {RELATION_PHRASES[where]} {b.describe(detailed=False)}"


def _caption_relation_sentence(objects: Scene, focus: Scene, rng: random.Random) -> str | None:
    if not (pair := _related_pair(objects, focus, rng)):
        return None
    a, b, where = pair
    return f"the {a.name} is {RELATION_PHRASES[where]} the {b.name}"


def _caption_comparison(objects: Scene, focus: Scene, rng: random.Random) -> str | None:
    pairs = [(a, b) for a, b in permutations(objects, 2) if (a in focus or b in focus) and a.size != b.size]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    return f"the {a.name} is {'bigger' if a.size == 'large' else 'smaller'} than the {b.name}"


def _caption_grouped(objects: Scene, focus: Scene, rng: random.Random) -> str | None:
    """'two circles, one red and one blue, with a small green square': only when a shape repeats."""
    by_shape: dict[str, list[SceneObject]] = {}
    for thing in objects:
        by_shape.setdefault(thing.shape, []).append(thing)
    groups = sorted(by_shape.values(), key=len, reverse=True)
    if len(groups[0]) == 1:
        return None
    parts = [group[0].describe() if len(group) == 1 else
             f"{NUMBER_WORDS[len(group)]} {group[0].shape}s, {join_phrases(['one ' + o.color for o in group])}"
             for group in groups]
    return f"{parts[0]}, with {join_phrases(parts[1:])}" if len(parts) > 1 else parts[0]


def _caption_region(objects: Scene, focus: Scene, rng: random.Random) -> str | None:
    """'a small red circle in the top left of the picture' for a single object well inside one region."""
    if len(objects) != 1:
        return None
    x, y = objects[0].center
    third, slack = IMAGE_SIZE / 3, 10
    if any(abs(v - third) < slack or abs(v - 2 * third) < slack for v in (x, y)):
        return None
    row = ("top", "middle", "bottom")[int(y // third)]
    column = ("left", "center", "right")[int(x // third)]
    where = {("middle", "center"): "center", ("middle", "left"): "left side", ("middle", "right"): "right side",
             ("top", "center"): "top", ("bottom", "center"): "bottom"}.get((row, column), f"{row} {column}")
    return f"{objects[0].describe()} in the {where} of the picture"


def questions(objects: list[SceneObject], focus: list[SceneObject], absent: list[tuple[str, str]],
              rng: random.Random) -> list[tuple[str, str, str]]:
    """(type, question, one-word answer) pairs, each about a focus object where it names one.

    Existence is asked twice, once true (a focus object) and once false (a combination from ``absent``,
    preferably one sharing a colour or shape with the scene), so yes and no are exactly balanced; every
    other type is asked once when the scene allows an unambiguous question.
    """
    asked = [("existence", *_existence(rng.choice(focus).name, "yes", rng)),
             ("existence", *_existence(_near_miss(objects, absent, rng), "no", rng))]
    for kind, make in (("count", _count), ("color", _color_of), ("shape", _shape_of),
                       ("position", _position), ("comparison", _comparison)):
        if qa := make(objects, focus, rng):
            asked.append((kind, *qa))
    return asked


def _existence(name: str, answer: str, rng: random.Random) -> tuple[str, str]:
    template = rng.choice(["is there {}?", "is there {} in the picture?", "does the picture contain {}?"])
    return template.format(with_article(name)), answer


def _near_miss(objects: list[SceneObject], absent: list[tuple[str, str]], rng: random.Random) -> str:
    colors, shapes = {o.color for o in objects}, {o.shape for o in objects}
    near = [(c, s) for c, s in absent if c in colors or s in shapes]
    color, shape = rng.choice(near or absent)
    return f"{color} {shape}"


def _count(objects: Scene, focus: Scene, rng: random.Random) -> tuple[str, str]:
    thing = rng.choice(focus)
    options = [(f"how many {thing.shape}s are there?", sum(o.shape == thing.shape for o in objects)),
               (f"how many {thing.color} shapes are there?", sum(o.color == thing.color for o in objects))]
    if not any((o.color, o.shape) in HELD_OUT for o in focus):  # test-novel asks only about held-out objects
        options.append(("how many shapes are there?", len(objects)))
    # Answers first, then a question with that answer: "1" would otherwise dominate.
    number = rng.choice(sorted({n for _, n in options}))
    return rng.choice([q for q, n in options if n == number]), str(number)


def _color_of(objects: Scene, focus: Scene, rng: random.Random) -> tuple[str, str] | None:
    return _ask_about(objects, focus, rng, known="shape", asked="color", template="what color is the {}?")


def _shape_of(objects: Scene, focus: Scene, rng: random.Random) -> tuple[str, str] | None:
    return _ask_about(objects, focus, rng, known="color", asked="shape", template="what shape is the {} object?")


def _ask_about(objects: Scene, focus: Scene, rng: random.Random, known: str, asked: str,
               template: str) -> tuple[str, str] | None:
    """The ``asked`` attribute of a focus object named by its ``known`` one, with its size where the ``known``
    attribute alone names several objects; None when no focus object can be named unambiguously."""
    options = []
    for thing in focus:
        alike = [o for o in objects if getattr(o, known) == getattr(thing, known)]
        if len(alike) == 1:
            options.append((template.format(getattr(thing, known)), getattr(thing, asked)))
        elif sum(o.size == thing.size for o in alike) == 1:
            options.append((template.format(f"{thing.size} {getattr(thing, known)}"), getattr(thing, asked)))
    return rng.choice(options) if options else None


def _position(objects: Scene, focus: Scene, rng: random.Random) -> tuple[str, str] | None:
    if not (pair := _related_pair(objects, focus, rng)):
        return None
    a, b, where = pair
    if rng.random() < 0.5:
        return f"where is the {a.name} relative to the {b.name}?", where
    said = where if rng.random() < 0.5 else OPPOSITE[where]
    return f"is the {a.name} {RELATION_PHRASES[said]} the {b.name}?", "yes" if said == where else "no"


def _comparison(objects: Scene, focus: Scene, rng: random.Random) -> tuple[str, str] | None:
    pairs = [(a, b) for a, b in permutations(objects, 2) if (a in focus or b in focus) and a.size != b.size]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    word = rng.choice(["bigger", "smaller"])
    return f"is the {a.name} {word} than the {b.name}?", "yes" if (a.size == "large") == (word == "bigger") else "no"


def describe(plan: dict[str, Any]) -> str:
    """Everything the questions and captions of a scene can ask about, as text: each object (size, texture,
    colour, shape) and every unambiguous relation between two of them. The text oracle states it."""
    objects = [SceneObject(o["shape"], o["color"], o["size"], o["texture"] == "striped", tuple(o["bbox"][:3]))
               for o in plan["objects"]]
    relations = [f"the {a.name} is {RELATION_PHRASES[where]} the {b.name}"
                 for a, b in permutations(objects, 2) if (where := relation(a, b)) in ("left", "above")]
    return "; ".join([join_phrases([o.describe() for o in objects]), *relations])


def make_scenes(out: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, Any]:
    """Write the three splits under ``out`` and return the summary also written to ``out/meta.json``.

    ``n_test`` images go to each of ``test`` and ``test-novel``; the same seed gives byte-identical files.
    """
    details = {"image_size": IMAGE_SIZE, "shapes": list(SHAPES), "colors": list(COLORS), "sizes": SIZES,
               "held_out": [list(c) for c in HELD_OUT]}
    return write_benchmark(out, BENCHMARK, make_image, n_train, n_test, seed, details)


def make_image(out: Path, split: str, index: int, seed: int) -> Item:
    """Plan, draw and write one image; its item (captions file entry, scene graph, captions, questions)."""
    rng = random.Random(f"{seed}/{split}/{index}")
    image_id = index + 1
    seen = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT]
    novel = split == "test-novel"
    objects = sample_scene(rng, [*seen, *HELD_OUT] if novel else seen, list(HELD_OUT) if novel else None)
    focus = [o for o in objects if (o.color, o.shape) in HELD_OUT] if novel else objects
    present = {(o.color, o.shape) for o in objects}
    absent = [c for c in (HELD_OUT if novel else seen) if c not in present]
    file = BENCHMARK.media_path(out, split, image_id)
    draw(objects, rng).save(file, quality=95)
    written = captions(objects, focus, rng)
    asked = questions(objects, focus, absent, rng)
    return Item(media={"id": image_id, "file_name": file.name, "width": IMAGE_SIZE, "height": IMAGE_SIZE},
                plan={"image_id": image_id, "file_name": file.name, "objects": [o.to_json() for o in objects]},
                captions=written, questions=asked)
