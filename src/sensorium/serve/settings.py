"""The server's settings, apart from the web framework so that the command line reads them cheaply."""

from __future__ import annotations

from typing import Any

from pydantic.dataclasses import dataclass

from ..config import SETTINGS
from ..schema import bounded
from .media import MediaLimits

# Room in a request body for the multipart boundaries and headers and the text fields (a question of
# max_question_chars is at most 4 bytes a character), beside the upload itself.
FORM_OVERHEAD_BYTES = 64 * 2**10


@dataclass(frozen=True, config=SETTINGS)
class ServeSettings:
    """Batching and the limits that protect the server from its clients, each within its bound (schema.BOUNDS): a
    limit of 0, a negative one or NaN would start a server that refuses or times out every request."""

    max_batch_size: bounded("requests") = 8  # 1 turns batching off
    max_wait_ms: bounded("wait_ms") = 10.0  # how long the first request of a batch waits for company
    max_upload_bytes: bounded("upload_bytes") = 10 * 2**20
    max_pixels: bounded("pixels") = 40_000_000
    max_audio_seconds: bounded("seconds") = 600.0
    max_question_chars: bounded("question_chars") = 500
    max_new_tokens: bounded("max_new_tokens") = 64  # the most any answer gets, whoever asks for more
    max_beams: bounded("num_beams") = 8
    request_timeout_s: bounded("seconds") = 60.0  # queueing included
    # torch.compile backend of the decode step, compiled once per shape bucket (decoding.py); None: not compiled.
    # Off by default: it pays on a GPU, not on a CPU, and the first request of each bucket waits for its compile
    # (docs/performance.md).
    compile_backend: str | None = None

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

    def capped(self, decoding: dict[str, Any]) -> dict[str, Any]:
        """Decoding options, whatever set them (a hosted adapter's own defaults, the request), within this server's
        caps: an adapter trained to write 10,000 tokens writes ``max_new_tokens`` here, as a request asking for
        them would be refused."""
        longest = min(decoding.get("max_new_tokens", self.max_new_tokens), self.max_new_tokens)
        capped = {**decoding, "max_new_tokens": longest,
                  "num_beams": min(decoding.get("num_beams", 1), self.max_beams)}
        if "min_new_tokens" in decoding:
            capped["min_new_tokens"] = min(decoding["min_new_tokens"], longest)
        return capped
