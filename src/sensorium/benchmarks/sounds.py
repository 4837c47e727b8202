"""Sound scenes: a procedural, seed-deterministic audio benchmark for audio captioning and audio QA.

Every clip (2-6 s, 16 kHz mono WAV) plays 1-3 sound events in sequence, each of a different kind: speech
(one to three words said by a man or a woman, synthesised by espeak-ng), beeps (one to four, high or low),
a steady tone (high or low), a sweep (rising or falling) and a burst of noise, the last four synthesised by
sox. Captions ("a woman says hello, then two high beeps") and question-answer pairs are written from the
plan, so every reference is true by construction; the questions are typed: what is said (``words``), how many
beeps (``count``), rising or falling (``direction``), speech or not (``speech``), high or low (``pitch``).

The output is in the formats users already have: WAV clips, COCO captions JSON (the clip's file name as
``file_name``) and VQA v2 questions + annotations JSON (the question type is the annotation's
``answer_type``); ``audio:DIR/SPLIT`` reads the questions of a split. ``clips_SPLIT.json`` keeps each clip's
plan with the start and end of every event.
"""

from __future__ import annotations

import functools
import io
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from ..media.audio import Waveform
from .wording import NUMBER_WORDS, join_phrases, with_article
from .writing import Benchmark, Item, write_benchmark

GENERATOR_VERSION = 1
SAMPLE_RATE = 16_000
DURATION = (2.0, 6.0)  # seconds: shorter clips end in silence; the plan never needs more
SPLITS = ("train", "test")
CLIP_PATTERN = "{subtype}_{image_id:06d}.wav"  # vqav2.image_path pattern of the clips
KINDS = ("speech", "beeps", "tone", "sweep", "noise")
QUESTION_TYPES = ("speech", "words", "count", "direction", "pitch")
BENCHMARK = Benchmark(description="sound scenes", version=GENERATOR_VERSION, splits=SPLITS, media="clips",
                      file_pattern=CLIP_PATTERN, data_type="audio", plans="clips", question_types=QUESTION_TYPES,
                      unit="clip", making="synthesising")
CAPTIONS_PER_CLIP = 5
SPEECH_SHARE = 0.5  # of clips: "is there speech?" is answered yes and no equally often
NO_BEEPS_COUNT_SHARE = 0.25  # of clips without beeps that are asked how many beeps there are ("0")
# Short words, so that three of them take well under two seconds.
WORDS = ("hello", "yes", "no", "stop", "go", "left", "right", "up", "down", "red", "green", "blue", "one", "two",
         "three", "open", "close", "wait", "help", "thanks")
VOICES = {"man": ("m1", "m2", "m3", "m4", "m7"), "woman": ("f1", "f2", "f3", "f4")}  # espeak-ng variants
PITCH_HZ = {"low": (200.0, 400.0), "high": (1200.0, 2400.0)}  # an octave apart at least: never in doubt
SWEEP_ENDS_HZ = ((250.0, 450.0), (1500.0, 2500.0))  # a sweep goes from one range to the other
WAVEFORMS = ("sine", "triangle", "square")
NOISES = ("whitenoise", "pinknoise")
LEAD, GAP, TAIL = (0.1, 0.3), (0.2, 0.4), (0.1, 0.3)  # seconds of silence before, between and after events
LEVEL = (0.3, 0.7)  # peak amplitude of an event
SPEECH_FLOOR = 0.02  # of the speech peak: espeak's leading and trailing silence is cut below it

PITCH_WORDS = {"high": ("high", "high-pitched"), "low": ("low", "low-pitched", "deep")}


@dataclass(frozen=True)
class Event:
    """One sound of a clip; fields that do not apply to its kind are None."""

    kind: str
    level: float
    seconds: float | None = None  # synthesised length (speech: as long as espeak-ng says it)
    pitch: str | None = None  # beeps, tone: "high" or "low"
    frequency: float | None = None  # beeps, tone
    waveform: str | None = None  # beeps, tone
    count: int | None = None  # beeps
    gap: float | None = None  # beeps: silence between two beeps
    direction: str | None = None  # sweep: "rising" or "falling"
    sweep: tuple[float, float] | None = None  # sweep: start and end frequency
    noise: str | None = None  # noise: sox's noise colour
    words: tuple[str, ...] | None = None  # speech
    speaker: str | None = None  # speech: "man" or "woman"
    voice: str | None = None  # speech: espeak-ng voice
    voice_pitch: int | None = None  # speech: espeak-ng pitch, 0-99
    speed: int | None = None  # speech: words per minute

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def _pitched(rng: random.Random) -> tuple[str, float, str]:
    pitch = rng.choice(tuple(PITCH_HZ))
    return pitch, round(rng.uniform(*PITCH_HZ[pitch]), 1), rng.choice(WAVEFORMS)


def sample_event(kind: str, rng: random.Random) -> Event:
    level = round(rng.uniform(*LEVEL), 3)
    if kind == "speech":
        speaker = rng.choice(tuple(VOICES))
        return Event(kind, level, words=tuple(rng.sample(WORDS, rng.randint(1, 3))), speaker=speaker,
                     voice=f"en-us+{rng.choice(VOICES[speaker])}", voice_pitch=rng.randint(35, 65),
                     speed=rng.randint(150, 170))
    if kind == "beeps":
        pitch, frequency, waveform = _pitched(rng)
        return Event(kind, level, seconds=round(rng.uniform(0.08, 0.12), 3), pitch=pitch, frequency=frequency,
                     waveform=waveform, count=rng.randint(1, 4), gap=round(rng.uniform(0.1, 0.15), 3))
    if kind == "tone":
        pitch, frequency, waveform = _pitched(rng)
        return Event(kind, level, seconds=round(rng.uniform(0.4, 0.9), 3), pitch=pitch, frequency=frequency,
                     waveform=waveform)
    if kind == "sweep":
        direction = rng.choice(("rising", "falling"))
        low, high = (round(rng.uniform(*ends), 1) for ends in SWEEP_ENDS_HZ)
        return Event(kind, level, seconds=round(rng.uniform(0.5, 0.9), 3), direction=direction,
                     sweep=(low, high) if direction == "rising" else (high, low))
    if kind == "noise":
        return Event(kind, level, seconds=round(rng.uniform(0.3, 0.6), 3), noise=rng.choice(NOISES))
    raise ValueError(f"unknown sound kind '{kind}'")


def sample_clip(rng: random.Random) -> list[Event]:
    """1-3 events of different kinds in random order; half of the clips have speech."""
    kinds = ["speech"] if rng.random() < SPEECH_SHARE else []
    others = [kind for kind in KINDS if kind != "speech"]
    kinds += rng.sample(others, rng.randint(1, 2) if kinds else rng.randint(1, 3))
    rng.shuffle(kinds)
    return [sample_event(kind, rng) for kind in kinds]


# ---- synthesis ------------------------------------------------------------------------------------------------
def _run(command: list[str], env: dict[str, str] | None = None) -> bytes:
    """stdout of a synthesis program (sox or espeak-ng)."""
    return subprocess.run(command, capture_output=True, check=True, env=env).stdout


@functools.cache
def _pulse_runtime() -> tempfile.TemporaryDirectory:
    """A PulseAudio runtime directory for the espeak-ng processes of this process, removed when it ends.

    espeak-ng (1.51) opens an audio device even when it writes to stdout. PulseAudio's client, finding no runtime
    directory of its own (a fresh machine, a fresh HOME, a cleaned /tmp), names a new one with rand(): the C
    library's one random stream, from which the breath noise of the voices that breathe (en-us+f2, f3) is drawn
    too. The first sentence such a voice said on a fresh machine then sounded, and once trimmed lasted, unlike
    the same sentence said again, and the plan of its clip changed. With a directory given, the client draws
    nothing."""
    return tempfile.TemporaryDirectory(prefix="sensorium-pulse-")


def _speak(event: Event) -> bytes:
    """The WAV file espeak-ng says the event's words in."""
    environment = {**os.environ, "PULSE_RUNTIME_PATH": _pulse_runtime().name}
    return _run(["espeak-ng", "-v", event.voice, "-p", str(event.voice_pitch), "-s", str(event.speed), "--stdout",
                 " ".join(event.words)], environment)


def _sox(effects: list[str]) -> np.ndarray:
    """sox's synthesis, 32-bit float: no dither, so the same plan gives the same samples (-R: seeded noise)."""
    raw = _run(["sox", "-R", "-n", "-r", str(SAMPLE_RATE), "-c", "1", "-t", "raw", "-e", "floating-point", "-b", "32",
                "-", *effects])
    return np.frombuffer(raw, np.float32)


def _fade(seconds: float, edge: float) -> list[str]:
    return ["fade", "q", f"{edge}", f"{seconds}", f"{edge}"]


def synthesise(event: Event) -> np.ndarray:
    """The event's samples at SAMPLE_RATE, scaled to its peak level."""
    if event.kind == "speech":
        samples, rate = soundfile.read(io.BytesIO(_speak(event)), dtype="float32")
        voiced = np.flatnonzero(np.abs(samples) > SPEECH_FLOOR * np.abs(samples).max())
        samples = Waveform(samples[voiced[0]:voiced[-1] + 1], rate).resampled(SAMPLE_RATE).samples
    elif event.kind == "beeps":
        samples = _sox(["synth", f"{event.seconds}", event.waveform, f"{event.frequency}",
                        *_fade(event.seconds, 0.005), "pad", "0", f"{event.gap}", "repeat", str(event.count - 1)])
        samples = samples[:len(samples) - round(event.gap * SAMPLE_RATE)]  # no silence after the last beep
    elif event.kind == "tone":
        samples = _sox(["synth", f"{event.seconds}", event.waveform, f"{event.frequency}", *_fade(event.seconds, 0.02)])
    elif event.kind == "sweep":  # exponential: the pitch moves evenly to the ear
        start, end = event.sweep
        samples = _sox(["synth", f"{event.seconds}", "sine", f"{start}/{end}", *_fade(event.seconds, 0.02)])
    else:
        samples = _sox(["synth", f"{event.seconds}", event.noise, *_fade(event.seconds, 0.01)])
    return (samples * (event.level / np.abs(samples).max())).astype(np.float32)


def render(events: list[Event], rng: random.Random) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """The clip's samples and each event's (start, end) in seconds: events in order, silence around them."""
    silences = [rng.uniform(*LEAD)] + [rng.uniform(*GAP) for _ in events[1:]] + [rng.uniform(*TAIL)]
    parts, spans, position = [], [], 0
    for silence, event in zip(silences, events, strict=False):
        sound = synthesise(event)
        start = position + round(silence * SAMPLE_RATE)
        parts += [np.zeros(start - position, np.float32), sound]
        spans.append((start / SAMPLE_RATE, (start + len(sound)) / SAMPLE_RATE))
        position = start + len(sound)
    end = max(position + round(silences[-1] * SAMPLE_RATE), round(DURATION[0] * SAMPLE_RATE))
    samples = np.concatenate([*parts, np.zeros(end - position, np.float32)])
    if len(samples) > DURATION[1] * SAMPLE_RATE:
        raise RuntimeError(f"a clip of {len(samples) / SAMPLE_RATE:.2f} s: the plan's bounds are wrong")
    return samples, spans


# ---- captions -------------------------------------------------------------------------------------------------
def _count_words(count: int, rng: random.Random) -> str:
    return rng.choice(("a", "a single", "one")) if count == 1 else NUMBER_WORDS[count]


def noun_phrase(event: Event, rng: random.Random) -> str:
    """'two high beeps', 'a woman saying hello', 'a falling tone'."""
    if event.kind == "speech":
        who = rng.choice((f"a {event.speaker}", f"a {'male' if event.speaker == 'man' else 'female'} voice"))
        return f"{who} saying {' '.join(event.words)}"
    if event.kind == "beeps":
        size = rng.choice(("", "short "))
        noun = "beep" if event.count == 1 else "beeps"
        return f"{_count_words(event.count, rng)} {size}{rng.choice(PITCH_WORDS[event.pitch])} {noun}"
    if event.kind == "tone":
        nouns = ("tone", "steady tone", "hum") if event.pitch == "low" else ("tone", "steady tone", "note")
        adjective = rng.choice(PITCH_WORDS[event.pitch])
        return with_article(f"{adjective} {rng.choice(nouns)}")
    if event.kind == "sweep":
        rising = event.direction == "rising"
        return rng.choice((f"a {event.direction} tone", f"a {event.direction} sweep",
                           f"a tone sweeping {'up' if rising else 'down'}",
                           f"a tone gliding {'upward' if rising else 'downward'}"))
    return rng.choice(("a burst of noise", "a short burst of static", "a hiss", "a noise burst"))


def clause(event: Event, rng: random.Random) -> str:
    """Speech as 'a woman says hello'; any other sound as its noun phrase."""
    if event.kind != "speech":
        return noun_phrase(event, rng)
    who = rng.choice((f"a {event.speaker}", f"a {'male' if event.speaker == 'man' else 'female'} voice"))
    return f"{who} {rng.choice(('says', 'speaks the words'))} {' '.join(event.words)}"


def _then(parts: list[str]) -> str:
    return ", then ".join(parts)


def _first_then(parts: list[str]) -> str:
    """'just X', 'first X, then Y', 'first X, then Y, and finally Z' (a clip has at most three events)."""
    if len(parts) == 1:
        return f"just {parts[0]}"
    text = f"first {parts[0]}, then {parts[1]}"
    return text if len(parts) == 2 else f"{text}, and finally {parts[2]}"


def captions(events: list[Event], rng: random.Random) -> list[str]:
    """Five different true captions naming every sound in order."""
    templates = [
        lambda: _then([clause(e, rng) for e in events]),
        lambda: _first_then([clause(e, rng) for e in events]),
        lambda: " followed by ".join(noun_phrase(e, rng) for e in events),
        lambda: "we hear " + _then([noun_phrase(e, rng) for e in events]),
        lambda: " and then ".join(clause(e, rng) for e in events),
        lambda: "the sound of " + join_phrases([noun_phrase(e, rng) for e in events]) + ("" if len(events) == 1 else
                                                                                    ", in that order"),
        lambda: "a recording of " + " followed by ".join(noun_phrase(e, rng) for e in events),
    ]
    written: list[str] = []
    for _ in range(20):
        for template in rng.sample(templates, len(templates)):
            text = template()
            if text not in written:
                written.append(text)
        if len(written) >= CAPTIONS_PER_CLIP:
            break
    return written[:CAPTIONS_PER_CLIP]


# ---- questions ------------------------------------------------------------------------------------------------
def _of(events: list[Event], kind: str) -> Event | None:
    return next((event for event in events if event.kind == kind), None)


def questions(events: list[Event], rng: random.Random) -> list[tuple[str, str, str]]:
    """(type, question, answer): speech or not for every clip; the words when there is speech; the number of
    beeps (also "0" for some clips without); rising or falling for a sweep; high or low for a tone or beeps."""
    speech, beeps, sweep = _of(events, "speech"), _of(events, "beeps"), _of(events, "sweep")
    asked = [("speech", rng.choice(("is there speech?", "does anyone speak?", "is someone talking?",
                                    "can you hear a voice?")), "yes" if speech else "no")]
    if speech:
        template = rng.choice(("what is said?", "what does the {} say?", "what words are spoken?",
                               "what words does the {} say?"))
        asked.append(("words", template.format(speech.speaker), " ".join(speech.words)))
    if beeps or rng.random() < NO_BEEPS_COUNT_SHARE:
        asked.append(("count", rng.choice(("how many beeps are there?", "how many beeps do you hear?",
                                           "how many times does it beep?")), str(beeps.count if beeps else 0)))
    if sweep:
        asked.append(("direction", rng.choice(("is the sweep rising or falling?", "is the gliding tone rising or "
                                               "falling?", "is the pitch of the sweep rising or falling?")),
                      sweep.direction))
    pitched = [event for event in events if event.kind in ("beeps", "tone")]
    if pitched:
        event = rng.choice(pitched)
        if event.kind == "tone":
            question = rng.choice(("is the tone high or low?", "is the steady tone high or low?"))
        elif event.count == 1:
            question = "is the beep high or low?"
        else:
            question = rng.choice(("are the beeps high or low?", "are the beeps high-pitched or low-pitched?"))
        asked.append(("pitch", question, event.pitch))
    return asked


# ---- writing a data set ---------------------------------------------------------------------------------------
def require_programs(*programs: str) -> None:
    """The sounds are synthesised by these programs (Debian packages of the same names): a missing one is one line."""
    for program in programs:
        if shutil.which(program) is None:
            raise FileNotFoundError(f"'{program}' not found: the sounds are synthesised with it "
                                    f"(apt-get install {program})")


def make_audio(out: Path, n_train: int, n_test: int, seed: int = 0, workers: int | None = None) -> dict[str, Any]:
    """Write the splits under ``out`` and return the summary also written to ``out/meta.json``; the same seed
    gives byte-identical files. Clips are synthesised by ``workers`` concurrent sox/espeak-ng processes (default:
    one per CPU)."""
    require_programs("sox", "espeak-ng")
    details = {"sampling_rate": SAMPLE_RATE, "duration": list(DURATION), "kinds": list(KINDS), "words": list(WORDS),
               "question_types": list(QUESTION_TYPES)}
    return write_benchmark(out, BENCHMARK, make_clip, n_train, n_test, seed, details,
                           workers=workers or os.cpu_count() or 1)


def make_clip(out: Path, split: str, index: int, seed: int) -> Item:
    """Plan, synthesise and write one clip; its item (captions file entry, plan, captions, questions)."""
    rng = random.Random(f"{seed}/{split}/{index}")
    clip_id = index + 1
    events = sample_clip(rng)
    written = captions(events, rng)
    asked = questions(events, rng)
    samples, spans = render(events, rng)
    file = BENCHMARK.media_path(out, split, clip_id)
    soundfile.write(file, samples, SAMPLE_RATE, subtype="PCM_16")
    seconds = round(len(samples) / SAMPLE_RATE, 4)
    plan = [{**event.to_json(), "start": round(start, 4), "end": round(end, 4)}
            for event, (start, end) in zip(events, spans, strict=True)]
    return Item(media={"id": clip_id, "file_name": file.name, "seconds": seconds, "sampling_rate": SAMPLE_RATE},
                plan={"image_id": clip_id, "file_name": file.name, "seconds": seconds, "events": plan},
                captions=written, questions=asked)
