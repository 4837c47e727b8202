"""Video decoding: a fixed number of frames sampled uniformly over a clip's duration, streamed with PyAV.

Frames are chosen by presentation timestamp, never by frame index: each sample is the frame on screen
at a target time, so variable frame rates, B-frame reordering and containers without a trustworthy
duration all give what a viewer sees at evenly spread moments. The clip is read twice: once demuxed
without decoding (cheap) to learn the timestamps of its frames, once decoded while keeping only the
chosen frames, so memory holds one decoded frame besides those, however long the video.

Sampling is deterministic on purpose: the feature cache encodes a clip once, so frames drawn at random
per epoch would be computed once and frozen anyway.
"""

from __future__ import annotations

import bisect
import io
from pathlib import Path

import av
from PIL import Image

from ..errors import BadInputError
from ..files import MAX_MEDIA_BYTES, regular_file
from .ffmpeg import first_stream, open_container

DEFAULT_FRAMES = 8
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v")

# Counter-clockwise quarter turns that make a frame upright, from the display matrix's angle.
_QUARTER_TURNS = {0: None, 90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180,
                  270: Image.Transpose.ROTATE_270}


class FramesTooLargeError(BadInputError):
    """Frames larger than the caller accepts, known from the stream's header before any is decoded."""


def sample_times(start: float, end: float, count: int) -> list[float]:
    """Centres of ``count`` equal segments of [start, end): every part of the clip is represented once."""
    step = (end - start) / count
    return [start + (index + 0.5) * step for index in range(count)]


def upright(image: Image.Image, rotation: float) -> Image.Image:
    """The frame as players show it: rotated counter-clockwise by the display matrix's angle.

    Phones store portrait video as landscape frames plus this angle; the encoder must see what a
    viewer sees. Angles are rounded to quarter turns, the only ones cameras write.
    """
    turn = _QUARTER_TURNS[round(rotation / 90) % 4 * 90]
    return image if turn is None else image.transpose(turn)


def _name(source: str | Path | bytes, name: str | None) -> str:
    """What errors call the video: ``name`` for an upload's bytes, the path for a file."""
    return name or ("upload" if isinstance(source, bytes) else str(source))


def _open(source: str | Path | bytes, name: str) -> av.container.InputContainer:
    """A file by its path, or an upload from its bytes (each open reads them from the start)."""
    if isinstance(source, bytes):
        if not source:
            raise BadInputError(f"{name}: empty file")
        target: str | io.BytesIO = io.BytesIO(source)
    else:
        path = regular_file(source, MAX_MEDIA_BYTES)
        if path.stat().st_size == 0:
            raise BadInputError(f"{name}: empty file")
        target = str(path)
    return open_container(target, name, "video")


def _timestamp(packet_or_frame: av.Packet | av.VideoFrame) -> int | None:
    """Presentation time, or the decoding time where a container (some AVI) records only that."""
    return packet_or_frame.pts if packet_or_frame.pts is not None else packet_or_frame.dts


def frame_times(source: str | Path | bytes, name: str | None = None) -> tuple[list[int], int]:
    """Sorted presentation timestamps of every frame (in the stream's time base) and the clip's end.

    Read from the packets without decoding them. The end is the last frame's timestamp plus its
    duration, so a clip's last frame owns a share of the time like every other.
    """
    name = _name(source, name)
    with _open(source, name) as container:
        stream = first_stream(container, name, "video")
        times, durations = [], []
        try:
            for packet in container.demux(stream):
                stamp = _timestamp(packet)
                if packet.size and stamp is not None:
                    times.append(stamp)
                    durations.append(packet.duration or 0)
        except av.error.FFmpegError as error:
            raise BadInputError(f"{name}: corrupt video data ({error})") from error
    if not times:
        raise BadInputError(f"{name}: no video frames")
    order = sorted(range(len(times)), key=times.__getitem__)
    times = [times[i] for i in order]
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False) if later > earlier]
    last = durations[order[-1]] or (sorted(gaps)[len(gaps) // 2] if gaps else 1)
    return times, times[-1] + last


def frames_on_screen(times: list[int], targets: list[float]) -> list[int]:
    """For each target time, the timestamp of the frame shown then: the last one starting at or before it."""
    return [times[max(bisect.bisect_right(times, target) - 1, 0)] for target in targets]


def load_video(source: str | Path | bytes, num_frames: int = DEFAULT_FRAMES, name: str | None = None,
               max_pixels: int | None = None) -> list[Image.Image]:
    """``num_frames`` upright RGB frames at uniform times over the clip, or a BadInputError naming the file.

    ``source`` is a path, or an upload's bytes (``name`` then names it in errors). A clip with fewer
    frames than asked repeats its frames (each target time takes the frame on screen), so every clip
    gives exactly ``num_frames`` frames in time order. Frames of more than ``max_pixels`` are refused
    from the stream's header (FramesTooLargeError), before one is decoded into memory.
    """
    name = _name(source, name)
    times, end = frame_times(source, name)
    wanted = frames_on_screen(times, sample_times(times[0], end, num_frames))
    needed, images = set(wanted), {}
    with _open(source, name) as container:
        stream = first_stream(container, name, "video")
        width, height = stream.codec_context.width, stream.codec_context.height
        if max_pixels is not None and width * height > max_pixels:
            raise FramesTooLargeError(f"{name}: video frames of {width}x{height} pixels; at most {max_pixels:,} "
                                      "pixels are accepted")
        try:
            for frame in container.decode(stream):
                stamp = _timestamp(frame)
                if stamp in needed and stamp not in images:
                    images[stamp] = upright(frame.to_image(), frame.rotation)
                    if len(images) == len(needed):
                        break
        except av.error.FFmpegError as error:
            raise BadInputError(f"{name}: corrupt video data ({error})") from error
    missing = sorted(needed - set(images))
    if missing:
        raise BadInputError(f"{name}: corrupt video (frame at timestamp {missing[0]} could not be decoded)")
    return [images[stamp] for stamp in wanted]
