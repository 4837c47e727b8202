"""Real speech with transcripts: the prompts of the Asterisk telephone system, packaged by Debian.

``apt-get install asterisk-core-sounds-en-wav`` installs 568 recordings of one speaker (8 kHz WAV) and
``asterisk-core-sounds-en`` their transcripts. Each recording whose transcript is speech (not a tone or
silence) becomes a "what is said?" question answered by the transcript (``asterisk:SPLIT``), or a
captioning example whose caption is the transcript (``asterisk-caption:SPLIT``). The split is fixed by a
hash of the recording's name, one name in ten on average: 79 of the 553 spoken recordings are in ``test``.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path

from ..errors import BadInputError
from .examples import Example

SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
QUESTION = "what is said?"
SPLITS = ("train", "test", "all")
TEST_SHARE = 10  # one recording in TEST_SHARE is in the test split
_NOTE = re.compile(r"\s*[\[(][^\])]*[\])]\s*")  # "[@]", "[ascending tones]", "(1 second of silence)"


def read_transcripts(path: str = TRANSCRIPTS) -> dict[str, str]:
    """Recording name -> what is said; notes in brackets are dropped, and so are recordings that are only a note."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: Asterisk transcripts not installed (apt-get install asterisk-core-sounds-en)")
    spoken = {}
    for line in gzip.decompress(file.read_bytes()).decode().splitlines():
        name, separator, text = line.partition(": ")
        if line.startswith(";") or not separator:
            continue
        words = _NOTE.sub(" ", text).strip()
        if words:
            spoken[name.strip()] = words
    return spoken


def split_of(name: str) -> str:
    return "test" if hashlib.sha1(name.encode()).digest()[0] % TEST_SHARE == 0 else "train"


def answer_type(words: str) -> str:
    """Reported apart: single words (digits, letters), short phrases, and whole sentences."""
    count = len(words.split())
    return "word" if count == 1 else "phrase" if count <= 4 else "sentence"


def _recordings(split: str, sounds: str, transcripts_path: str) -> list[tuple[str, Path, str]]:
    """(name, WAV path, transcript) of the split's recordings that have both a file and a spoken transcript."""
    if split not in SPLITS:
        raise ValueError(f"Asterisk sounds have splits {', '.join(SPLITS)}, not '{split}'")
    folder = Path(sounds)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: Asterisk sounds not installed "
                                "(apt-get install asterisk-core-sounds-en-wav)")
    spoken = sorted(read_transcripts(transcripts_path).items())
    found = [(name, folder / f"{name}.wav", words) for name, words in spoken
             if (folder / f"{name}.wav").is_file() and split in ("all", split_of(name))]
    if not found:
        raise BadInputError(f"{folder}: no recording matches a transcript of {transcripts_path}")
    return found


def read_qa(split: str = "all", sounds: str = SOUNDS, transcripts: str = TRANSCRIPTS) -> list[Example]:
    return [Example(media=str(path), question=QUESTION, answers=[words], answer_type=answer_type(words),
                    question_id=name)
            for name, path, words in _recordings(split, sounds, transcripts)]


def read_captions(split: str = "all", sounds: str = SOUNDS, transcripts: str = TRANSCRIPTS) -> list[Example]:
    return [Example(media=str(path), question="", answers=[words], answer_type="caption", question_id=name)
            for name, path, words in _recordings(split, sounds, transcripts)]
