"""The server's settings, apart from the web framework so that the command line reads them cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from .media import MediaLimits

# Room in a request body for the multipart boundaries and headers and the text fields (a question of
# max_question_chars is at most 4 bytes a character), beside the upload itself.
FORM_OVERHEAD_BYTES = 64 * 2**10


@dataclass(frozen=True)
class ServeSettings:
    """Batching and the limits that protect the server from its clients."""

    max_batch_size: int = 8  # 1 turns batching off
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 40_000_000
    max_audio_seconds: float = 600.0
    max_question_chars: int = 500
    max_new_tokens: int = 64  # the most a request may ask for
    max_beams: int = 8
    request_timeout_s: float = 60.0  # queueing included

    @property
    def max_request_bytes(self) -> int:
        """The whole request body: the upload, its multipart framing and the form fields beside it.

        Bounded before the body is parsed, so that an oversized upload is refused as it streams in, never
        written to a temporary file first.
        """
        return self.max_upload_bytes + FORM_OVERHEAD_BYTES

    @property
    def media_limits(self) -> MediaLimits:
        return MediaLimits(max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels,
                           max_audio_seconds=self.max_audio_seconds)
