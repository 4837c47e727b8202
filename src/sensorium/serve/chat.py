"""The OpenAI chat API over the hosted adapters: ``POST /v1/chat/completions`` and ``GET /v1/models``.

Clients that speak to vLLM, llama.cpp or Ollama (the ``openai`` package, LangChain, Open WebUI) speak to this
server unchanged. ``model`` names a hosted adapter or composed model. A request carries ONE medium, as an
``image_url``, ``input_audio`` or ``video_url`` part of a user message, always inline (a ``data:`` URL or
base64: the server fetches nothing), and the text of the last user message is the question; system and
assistant messages are read past, since an adapter was trained on one question about one medium.

The medium then takes the very path of a ``/v1/ask`` upload (``answer`` in ``app``): recognised by its content,
bounded in bytes before decoding and in pixels before its pixels are decoded, answered in the same dynamic
batches as form requests. Without ``temperature`` the adapter decodes as it does for ``/v1/ask``, so both
endpoints give the same answer. ``stop`` cuts the finished answer where a stop string first appears. With
``stream`` the finished answer is sent as server-sent chunks (the batch it was decoded in finishes together).

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and a body that does not fit the
schema is a 400, as OpenAI answers it (``OpenAIErrors``).

No ``from __future__ import annotations``, as in ``app``: the request model is built from the settings.
"""

import base64
import binascii
import io
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BadInputError
from ..schema import BOUNDS
from .adapters import HostedAdapter, HostedComposition
from .media import MediaTooLargeError
from .settings import ServeSettings

CHAT_PATH, MODELS_PATH = "/v1/chat/completions", "/v1/models"
# Room in a chat body beside the medium's base64: the messages' text (a conversation's history and a system
# prompt included) and the JSON around them.
CHAT_OVERHEAD_BYTES = 256 * 2**10
DATA_URL = re.compile(r"data:[\w.+-]*/?[\w.+-]*(?:;[\w.+-]+=[^;,]*)*;base64,", re.ASCII)
OWNER = "sensorium"


def chat_request_bytes(settings: ServeSettings) -> int:
    """The largest chat body: the largest upload in base64 (4 characters for 3 bytes) and the messages' text."""
    return 4 * -(-settings.max_upload_bytes // 3) + CHAT_OVERHEAD_BYTES


def chat_body_limit(settings: ServeSettings) -> dict[str, tuple[int, str]]:
    """The chat path's entry for ``BodyLimit``."""
    limit = chat_request_bytes(settings)
    return {CHAT_PATH: (limit, f"request body larger than {limit:,} bytes (a medium of at most "
                               f"{settings.max_upload_bytes:,} bytes in base64 and "
                               f"{CHAT_OVERHEAD_BYTES:,} bytes of messages)")}


# ---- the request ---------------------------------------------------------------------------------


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class URL(BaseModel):
    url: str  # a data: URL


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: URL


class VideoPart(BaseModel):
    type: Literal["video_url"]  # as vLLM reads a video
    video_url: URL


class InputAudio(BaseModel):
    data: str  # base64
    format: Literal["wav", "mp3"]


class AudioPart(BaseModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


Part = Annotated[TextPart | ImagePart | VideoPart | AudioPart, Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[Part] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


def chat_request_model(settings: ServeSettings) -> type[BaseModel]:
    """The request body within this server's limits; fields OpenAI defines that an adapter has no use for (tools,
    logprobs, response_format, ...) are read past, as unknown fields are."""

    class ChatRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")

        model: str = Field(description="a hosted adapter or composed model: one of GET /v1/models")
        messages: list[ChatMessage] = Field(min_length=1)
        max_tokens: int | None = Field(None, ge=1, le=settings.max_new_tokens)
        max_completion_tokens: int | None = Field(None, ge=1, le=settings.max_new_tokens)
        temperature: float | None = Field(None, ge=0, le=2, description="absent: the adapter's own decoding; "
                                                                        "0: greedy; above 0: sampling")
        top_p: float | None = Field(None, ge=BOUNDS["top_p"].low, le=1,
                                    description="nucleus sampling, with a temperature above 0")
        seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1,
                                 description="sampling from it is repeatable (the request then decodes alone)")
        stop: str | list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1, max_length=4)
        n: Literal[1] | None = Field(None, description="one choice per request")
        stream: bool | None = False
        stream_options: StreamOptions | None = None

        @field_validator("temperature")
        @classmethod
        def _greedy_or_sampling(cls, temperature: float | None) -> float | None:
            """0 is greedy; a sampling temperature is within the bound every decoding option has (schema.BOUNDS):
            one of 1e-309 would overflow the scores it divides."""
            lowest = BOUNDS["temperature"].low
            if temperature is not None and 0 < temperature < lowest:
                raise ValueError(f"temperature must be 0 (greedy) or at least {lowest:g}, not {temperature!r}")
            return temperature

        def decoding(self) -> dict[str, Any]:
            """generate() options; None: the adapter's own."""
            options = {"max_new_tokens": self.max_completion_tokens or self.max_tokens}
            if self.temperature is None:
                return options
            if self.temperature == 0:
                return {**options, "num_beams": 1}
            return {**options, "num_beams": 1, "do_sample": True, "temperature": self.temperature,
                    "top_p": self.top_p, "seed": self.seed}

        def stops(self) -> list[str]:
            return [self.stop] if isinstance(self.stop, str) else self.stop or []

    return ChatRequest


def read_messages(messages: list[ChatMessage], settings: ServeSettings) -> tuple[str, bytes, str]:
    """(the question: the last user message's text, the medium's bytes, the medium's name for errors)."""
    users = [(number, message) for number, message in enumerate(messages) if message.role == "user"]
    if not users:
        raise BadInputError("messages: no user message")
    media = [(f"messages[{number}].content[{index}]", part) for number, message in users
             if isinstance(message.content, list)
             for index, part in enumerate(message.content) if not isinstance(part, TextPart)]
    if len(media) != 1:
        raise BadInputError(f"messages: {len(media)} media parts; a request carries exactly one image_url, "
                            "input_audio or video_url part")
    name, part = media[0]
    content = users[-1][1].content
    question = content if isinstance(content, str) else " ".join(
        piece.text for piece in content or [] if isinstance(piece, TextPart))
    question = question.strip()
    if len(question) > settings.max_question_chars:
        raise BadInputError(f"messages: a question of {len(question):,} characters; at most "
                            f"{settings.max_question_chars:,} are read")
    return question, medium_bytes(part, name, settings.max_upload_bytes), name


def medium_bytes(part: ImagePart | VideoPart | AudioPart, name: str, max_bytes: int) -> bytes:
    """The part's base64 decoded, its size checked from its length first."""
    if isinstance(part, AudioPart):
        encoded = part.input_audio.data
    else:
        url = part.image_url.url if isinstance(part, ImagePart) else part.video_url.url
        found = DATA_URL.match(url)
        if found is None:
            raise BadInputError(f"{name}: only data: URLs (data:MIME;base64,...) are read; the server fetches "
                                f"nothing, so '{url:.40}' is refused")
        encoded = url[found.end():]
    if 3 * len(encoded) // 4 - encoded[-2:].count("=") > max_bytes:
        raise MediaTooLargeError(f"{name}: a medium larger than {max_bytes:,} bytes")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        raise BadInputError(f"{name}: not base64 ({error})") from error


def chat_task(hosted: HostedAdapter | HostedComposition, question: str) -> str:
    """Answer the question where the model answers questions; else caption (the text is then read past)."""
    config = hosted.model.config
    if question and config.does("vqa"):
        return "vqa"
    if config.does("caption"):
        return "caption"
    raise BadInputError(f"model '{hosted.name}' answers questions: the last user message needs text")


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """(the text before the first stop string, whether one was found)."""
    cut = min((index for index in (text.find(stop) for stop in stops) if index >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


# ---- the response --------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int  # what the LM reads: the learned prefix and the template around the question
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = OWNER


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: ErrorDetail


def usage(hosted: HostedAdapter | HostedComposition, question: str, text: str) -> Usage:
    """Token counts: the prompt as the LM reads it, the answer as the tokenizer splits it."""
    model = hosted.model
    prompt = model.prefix_length + len(model.prompt_ids([question])[0])
    completion = len(model.tokenizer(text, add_special_tokens=False).input_ids)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def stream(completion: ChatCompletion, include_usage: bool) -> StreamingResponse:
    """The completion as server-sent chunks: the role, the text piece by piece, the finish reason, the usage
    where asked for, then ``[DONE]``."""
    head = {"id": completion.id, "object": "chat.completion.chunk", "created": completion.created,
            "model": completion.model}
    choice = completion.choices[0]

    def chunk(delta: dict[str, str], finish: str | None = None) -> str:
        return event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    async def events() -> AsyncIterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        for piece in re.findall(r"\s*\S+|\s+", choice.message.content):
            yield chunk({"content": piece})
        yield chunk({}, choice.finish_reason)
        if include_usage:
            yield event({**head, "choices": [], "usage": completion.usage.model_dump()})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def event(value: dict[str, Any]) -> str:
    return f"data: {json.dumps(value)}\n\n"


# ---- the routes ----------------------------------------------------------------------------------

# answer(request, task, adapter, upload, question, options): the /v1/ask request path (app.create_app).
Answer = Callable[[Request, str, str, UploadFile, str, dict[str, Any]], Awaitable[Any]]

CHAT_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIError, "description": description} for status, description in [
        (400, "malformed body, unreadable medium, not one medium, a remote URL"), (404, "unknown model"),
        (413, "body or medium too large"), (415, "unsupported media type, or not what the model reads"),
        (500, "generation failed"), (504, "request timed out")]
}


# One server-sent event: its data is a chat.completion.chunk in JSON, or [DONE] at the end.
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}}}


def add_chat_routes(app: FastAPI, answer: Answer, settings: ServeSettings) -> None:
    """The OpenAI routes over ``app``'s registry, answering through ``answer``."""
    registry, started = app.state.registry, int(time.time())
    ChatRequest = chat_request_model(settings)

    @app.get(MODELS_PATH, response_model=ModelList, responses=CHAT_ERRORS)
    def models() -> ModelList:
        """The hosted adapters and composed models, as OpenAI lists models."""
        return ModelList(data=[ModelCard(id=name, created=started) for name in registry.adapters])

    @app.get(MODELS_PATH + "/{model}", response_model=ModelCard, responses=CHAT_ERRORS)
    def model(model: str) -> ModelCard:
        return ModelCard(id=registry.get(model).name, created=started)

    @app.post(CHAT_PATH, response_model=ChatCompletion, responses={
        **CHAT_ERRORS, 200: {"content": {"text/event-stream": {"schema": SSE_EVENT}},
                             "description": "the completion; with stream: true, server-sent chunks"}})
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        """Answer the last user message about the one medium of the messages, with a hosted adapter."""
        hosted = registry.get(body.model)
        question, data, name = read_messages(body.messages, settings)
        task = chat_task(hosted, question)
        question = question if task == "vqa" else ""
        options = body.decoding()
        result = await answer(request, task, body.model, UploadFile(io.BytesIO(data), filename=name), question,
                              options)
        text, stopped = cut_at_stop(result.answer, body.stops())
        counts = usage(hosted, question, text)
        longest = options["max_new_tokens"] or hosted.model.config.generation_defaults(task)["max_new_tokens"]
        finish = "length" if not stopped and counts.completion_tokens >= longest else "stop"
        completion = ChatCompletion(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=body.model,
                                    choices=[Choice(message=AssistantMessage(content=text), finish_reason=finish)],
                                    usage=counts)
        if body.stream:
            return stream(completion, bool(body.stream_options and body.stream_options.include_usage))
        return completion


class OpenAIErrors:
    """ASGI middleware: on the OpenAI paths, an error answer ``{"error": message}`` (whichever layer raised it: a
    route, the body limit, validation) becomes OpenAI's error body, and a body that fails the schema a 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith((CHAT_PATH, MODELS_PATH)):
            return await self.app(scope, receive, send)
        start: Message | None = None
        body = bytearray()

        async def reshaped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and message["status"] >= 400:
                start = message
                return
            if start is None:
                return await send(message)
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            status, content = openai_error(start["status"], bytes(body))
            headers = [(key, value) for key, value in start["headers"] if key.lower() != b"content-length"]
            await send({**start, "status": status, "headers": [*headers, (b"content-length", b"%d" % len(content))]})
            await send({"type": "http.response.body", "body": content})

        await self.app(scope, receive, reshaped)


ERROR_CODES = {404: "model_not_found", 413: "request_too_large", 415: "unsupported_media_type", 504: "timeout"}


def openai_error(status: int, body: bytes) -> tuple[int, bytes]:
    """(status, OpenAI's error body) for an error answered as ``{"error": message}``."""
    try:
        message = str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        message = body.decode("utf-8", "replace")
    status = 400 if status == 422 else status
    detail = ErrorDetail(message=message, type="server_error" if status >= 500 else "invalid_request_error",
                         code=ERROR_CODES.get(status))
    return status, OpenAIError(error=detail).model_dump_json().encode()
