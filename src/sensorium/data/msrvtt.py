"""MSR-VTT and MSVD: video question answering (MSRVTT-QA, MSVD-QA) and MSR-VTT captioning, with a video folder.

The QA files are JSON lists of ``{"video_id" or "video", "question", "answer", ...}``. A ``video`` entry is
a file name (with or without its extension); a ``video_id`` is found in the folder under the names the
public releases use: ``video7010.mp4`` (MSR-VTT), ``vid1.avi`` (MSVD renamed by id) or the bare id.

The MSR-VTT caption file (``train_val_videodatainfo.json``, ``test_videodatainfo.json``) lists ``videos``
(with their ``split``) and ``sentences`` (``video_id``, ``caption``); each video becomes one captioning
example with all its captions as references.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInputError
from ..media.video import VIDEO_EXTENSIONS
from .examples import Example, MediaFolder, load_json, none_found

# MSRVTT-QA and MSVD-QA report accuracy per question word.
QUESTION_WORDS = ("what", "who", "how", "when", "where")
_ID_NAMES = ("video{}", "vid{}", "{}")


def find_video(folder: MediaFolder, name: str | None = None, video_id: object = None) -> tuple[Path, bool]:
    """(the video's path, whether it exists), by file name (extension optional) or by id."""
    if name is None:
        return folder.find([pattern.format(video_id) for pattern in _ID_NAMES])
    if (folder.folder / name).is_file():
        return folder.folder / name, True
    stem, extension = os.path.splitext(name)
    return folder.find([stem if extension.lower() in VIDEO_EXTENSIONS else name])


def question_type(question: str) -> str:
    """The question word (what, who, how, when, where), as MSRVTT-QA and MSVD-QA report; else 'other'."""
    words = question.lower().split()
    return words[0] if words and words[0] in QUESTION_WORDS else "other"


def read_qa(questions: str, videos: str) -> list[Example]:
    """MSRVTT-QA or MSVD-QA questions; one reference answer each.

    A video missing from the folder keeps its expected path, so training reports it (or skips it with
    ``--skip-bad``); a folder holding none of the videos is an error here.
    """
    entries = load_json(questions)
    if not isinstance(entries, list):
        raise BadInputError(f"{questions}: expected a JSON list of questions")
    folder = MediaFolder(videos, VIDEO_EXTENSIONS, "video", ".mp4")
    examples, found = [], 0
    for number, entry in enumerate(entries):
        try:
            if entry.get("video") is None and entry.get("video_id") is None:
                raise KeyError("'video_id' or 'video'")
            path, exists = find_video(folder, entry.get("video"), entry.get("video_id"))
            question = str(entry["question"]).strip()
            examples.append(Example(
                media=str(path), question=question, answers=[str(entry["answer"]).strip()],
                answer_type=str(entry.get("answer_type") or question_type(question)),
                question_id=str(entry.get("id", entry.get("question_id", number))),
            ))
        except (AttributeError, KeyError, TypeError) as error:
            raise BadInputError(f"{questions}: malformed question entry {entry!r:.80} ({error!r})") from error
        found += exists
    if examples and not found:
        raise none_found(videos, f"the {len(examples)} questions' videos", Path(examples[0].media).name)
    return examples


def read_captions(path: str, videos: str, split: str | None = None) -> list[Example]:
    """MSR-VTT videos with all their captions, optionally of one split (train, validate, test).

    A file without ``sentences`` gives every video with no references, so captions can still be generated;
    when sentences are present, a video none of them mentions is left out.
    """
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise BadInputError(f"{path}: expected an object with a 'videos' list")
    if not isinstance(data.get("sentences", []), list):
        raise BadInputError(f"{path}: 'sentences' must be a list")
    captions: dict[str, list[str]] = {}
    for sentence in data.get("sentences", []):
        try:
            captions.setdefault(str(sentence["video_id"]), []).append(str(sentence["caption"]).strip())
        except (KeyError, TypeError) as error:
            raise BadInputError(f"{path}: malformed sentence {sentence!r:.80} ({error!r})") from error
    folder = MediaFolder(videos, VIDEO_EXTENSIONS, "video", ".mp4")
    examples, splits = [], set()
    for video in data["videos"]:
        try:
            video_id, video_split = str(video["video_id"]), video.get("split")
        except (KeyError, TypeError) as error:
            raise BadInputError(f"{path}: malformed video entry {video!r:.80} ({error!r})") from error
        splits.add(str(video_split))
        if (split is None or video_split == split) and (video_id in captions or "sentences" not in data):
            examples.append(Example(media=str(find_video(folder, video_id)[0]), question="",
                                    answers=captions.get(video_id, []), answer_type="caption",
                                    question_id=video_id))
    if not examples:
        raise BadInputError(f"{path}: no videos in split '{split}' (the file has: {', '.join(sorted(splits))})")
    return examples
