"""AudioCaps: captions of 10 s AudioSet clips, a CSV (``audiocap_id, youtube_id, start_time, caption``) + a folder.

The CSV names YouTube videos; users download the sound themselves, and download tools name the files
differently: ``{youtube_id}``, AudioSet's ``Y{youtube_id}``, ``{youtube_id}_{start_time}``, PANNs'
``Y{youtube_id}_{start:.3f}_{end:.3f}`` or the ``{audiocap_id}``, in any audio format or as the video
itself (its audio track is read). All of these are tried. The rows of one clip (five per clip in the
validation and test files) become one captioning example with every caption as a reference.
"""

from __future__ import annotations

from csv import DictReader
from csv import Error as CSVError
from pathlib import Path

from ..errors import BadInputError
from ..media.audio import AUDIO_EXTENSIONS
from ..media.video import VIDEO_EXTENSIONS
from .examples import Example, MediaFolder, none_found

COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")
CLIP_SECONDS = 10  # every AudioCaps clip is a 10 s AudioSet segment


def read_csv(path: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """The rows of a CSV file with a header naming at least ``columns``, each with a value for all of them."""
    file = Path(path)
    try:
        with file.open(newline="", encoding="utf-8-sig") as handle:
            reader = DictReader(handle)
            missing = [column for column in columns if column not in (reader.fieldnames or [])]
            if missing:
                raise BadInputError(f"{file}: missing column(s) {', '.join(missing)} "
                                    f"(expected a header with {', '.join(columns)})")
            rows = []
            for row in reader:
                short = [column for column in columns if row[column] is None]
                if short:  # a row with fewer cells than the header
                    raise BadInputError(f"{file}:{reader.line_num}: no value for {', '.join(short)}")
                rows.append(row)
            return rows
    except FileNotFoundError as error:
        raise BadInputError(f"{file}: file not found") from error
    except (CSVError, UnicodeDecodeError) as error:
        raise BadInputError(f"{file}: malformed CSV ({error})") from error


def _stems(youtube_id: str, start_time: str, audiocap_ids: list[str]) -> list[str]:
    stems = [youtube_id, f"Y{youtube_id}", f"{youtube_id}_{start_time}"]
    try:
        start = float(start_time)
        stems += [f"{youtube_id}_{start:g}", f"Y{youtube_id}_{start:.3f}_{start + CLIP_SECONDS:.3f}"]
    except ValueError:
        pass
    return stems + audiocap_ids


def read(csv: str, audio: str) -> list[Example]:
    """One example per clip (YouTube id and start time) with all its captions.

    A clip missing from the folder keeps its expected path, so training reports it (or skips it with
    ``--skip-bad``: downloads of AudioCaps always miss some videos); a folder holding none is an error here.
    """
    clips: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in read_csv(csv, COLUMNS):
        clips.setdefault((row["youtube_id"].strip(), row["start_time"].strip()), []).append(row)
    starts_per_video: dict[str, int] = {}
    for youtube_id, _ in clips:
        starts_per_video[youtube_id] = starts_per_video.get(youtube_id, 0) + 1
    folder = MediaFolder(audio, AUDIO_EXTENSIONS + VIDEO_EXTENSIONS, "audio", ".wav")
    examples, found = [], 0
    for (youtube_id, start_time), rows in clips.items():
        path, exists = folder.find(_stems(youtube_id, start_time, [row["audiocap_id"].strip() for row in rows]))
        clip_id = youtube_id if starts_per_video[youtube_id] == 1 else f"{youtube_id}_{start_time}"
        examples.append(Example(media=str(path), question="", answers=[row["caption"].strip() for row in rows],
                                answer_type="caption", question_id=clip_id))
        found += exists
    if examples and not found:
        raise none_found(audio, f"the {len(examples)} clips of {csv}", Path(examples[0].media).stem,
                         " as .wav, .flac, .mp3, ...")
    return examples
