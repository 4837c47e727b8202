"""Containers opened by FFmpeg through PyAV, for the video and the audio readers alike.

Whatever goes wrong is a BadInputError naming the file and saying, in the words of the stream the caller
wants ("video" or "audio"), what it holds instead.
"""

from __future__ import annotations

from typing import BinaryIO, Literal

import av

from ..errors import BadInputError

StreamKind = Literal["video", "audio"]
_OTHER_KIND: dict[str, StreamKind] = {"video": "audio", "audio": "video"}


def open_container(source: str | BinaryIO, name: str, kind: StreamKind) -> av.container.InputContainer:
    """A file by its path, or an open binary stream, ready to demux; ``kind`` is what it should hold."""
    try:
        # Tags are not ours to judge: a title in another encoding must not make the media unreadable.
        return av.open(source, metadata_errors="replace")
    except FileNotFoundError as error:
        raise BadInputError(f"{name}: file not found") from error
    except av.error.InvalidDataError as error:
        raise BadInputError(f"{name}: not {'an' if kind == 'audio' else 'a'} {kind} file "
                            "(unrecognised or corrupt data)") from error
    except (av.error.FFmpegError, OSError) as error:
        raise BadInputError(f"{name}: unreadable {kind} ({error})") from error


def first_stream(container: av.container.InputContainer, name: str, kind: StreamKind) -> av.stream.Stream:
    """The container's first ``kind`` stream, with a codec FFmpeg can decode."""
    streams = getattr(container.streams, kind)
    if not streams:
        other = _OTHER_KIND[kind]
        what = f"{other} only" if getattr(container.streams, other) else "no streams"
        raise BadInputError(f"{name}: no {kind} stream ({what})")
    stream = streams[0]
    if stream.codec_context is None:  # a damaged header, or a codec FFmpeg does not know
        raise BadInputError(f"{name}: {kind} stream of an unknown codec")
    return stream

