"""The HTTP API and the web page: many adapters over shared frozen models, answered in dynamic batches.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations, and those
built from the settings inside ``create_app`` must be objects, not names it cannot resolve.
"""

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from tqdm import tqdm

from .. import __version__
from ..decoding import CompiledDecoding
from ..errors import BadInputError
from .adapters import AdapterRegistry, UnknownAdapterError, writes_captions
from .batching import Batcher, ClientGone
from .body_limit import BodyLimit
from .chat import OpenAIErrors, add_chat_routes, chat_body_limit
from .media import MediaTooLargeError, UnsupportedMediaError, media_modality
from .settings import ServeSettings

STATIC = Path(__file__).parent / "static"
# Seconds a stopping server (SIGTERM, Ctrl-C) waits for requests in flight; then their handlers are cancelled, which
# stops the generation they wait for (see ``batching``).
SHUTDOWN_GRACE_S = 5
ENDPOINT_OF_TASK = {"vqa": "/v1/ask", "caption": "/v1/caption"}


class ServeError(Exception):
    """An error answered with its HTTP status and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# Errors raised below the API, answered as the client's fault (4xx) with their own message.
STATUS_OF_ERROR = {UnknownAdapterError: 404, MediaTooLargeError: 413, UnsupportedMediaError: 415, BadInputError: 400}


class Timings(BaseModel):
    queue_ms: float
    encode_ms: float
    generate_ms: float
    total_ms: float


class AnswerResponse(BaseModel):
    answer: str
    adapter: str
    task: str
    batch_size: int  # requests answered by the same generate() call
    timings: Timings


class AdapterInfo(BaseModel):
    name: str
    task: str
    modality: str
    lm: str
    encoder: str  # a composed model's: its senses' encoders, joined by " + "
    image_size: int | None
    trainable_parameters: int
    size_bytes: int  # a composed model's: its senses' adapter files together
    senses: list[str] | None = None  # a composed model's senses, in prefix order; None for an adapter


class ErrorResponse(BaseModel):
    error: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description} for status, description in [
        (400, "bad input: unreadable media, empty question, wrong task for this endpoint"),
        (404, "unknown adapter"), (413, "upload, image or sound too large"), (415, "unsupported media type"),
        (422, "missing or out-of-range field"), (500, "generation failed"), (504, "request timed out")]
}


def create_app(registry: AdapterRegistry, settings: ServeSettings | None = None) -> FastAPI:
    settings = settings or ServeSettings()
    decoding = None if settings.compile_backend is None else CompiledDecoding(backend=settings.compile_backend)
    batcher = Batcher(settings.max_batch_size, settings.max_wait_ms / 1000, decoding)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        batcher.stop()

    app = FastAPI(title="Sensorium", version=__version__, lifespan=lifespan,
                  description="Questions and captions about media, from eP-ALM adapters over shared frozen models.")
    app.state.registry, app.state.batcher, app.state.settings = registry, batcher, settings
    _add_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes,
                       message=f"request body larger than {settings.max_request_bytes:,} bytes (an upload of at most "
                               f"{settings.max_upload_bytes:,} bytes and the form fields)",
                       paths=chat_body_limit(settings))
    app.add_middleware(OpenAIErrors)

    NewTokens = Annotated[int | None, Form(ge=1, le=settings.max_new_tokens,
                                           description="default: the adapter's (its task's)")]
    Beams = Annotated[int | None, Form(ge=1, le=settings.max_beams, description="1 is greedy; default: the adapter's")]
    Media = Annotated[UploadFile, File(description="an image, a sound (for an audio adapter) or a video (for a "
                                                "video adapter, or a video with its sound track for an audiovisual "
                                                "composed model); its type is read from its content")]
    AdapterName = Annotated[str, Form(description="one of GET /v1/adapters")]

    async def answer(request: Request, task: str, adapter: str, media: UploadFile, question: str,
                     options: dict[str, int | None]) -> AnswerResponse:
        started = time.perf_counter()
        hosted = registry.get(adapter)
        if not hosted.model.config.does(task):
            raise ServeError(400, f"adapter '{adapter}' does {hosted.task}, not {task}: "
                                  f"use {ENDPOINT_OF_TASK[hosted.task]}")
        data, name = await media.read(settings.max_upload_bytes + 1), media.filename or "upload"
        modality = media_modality(data, name, settings.media_limits)  # before decoding what would be refused
        if modality != hosted.upload_modality:
            raise ServeError(415, f"adapter '{adapter}' reads {hosted.reads}, not {modality}")
        decoded = await run_in_threadpool(hosted.read, data, name, settings.media_limits)
        generation = settings.capped({**hosted.model.config.generation_defaults(task),
                                      **{key: value for key, value in options.items() if value is not None}})
        try:
            result = await batcher.submit(hosted, decoded, question, generation, settings.request_timeout_s,
                                          _disconnect(request))
        except asyncio.TimeoutError as error:
            raise ServeError(504, f"no answer within {settings.request_timeout_s:g} s") from error
        except ClientGone as error:  # nobody reads this answer; the status is for the log
            raise ServeError(499, "the client closed the connection") from error
        except BadInputError:
            raise
        except Exception as error:
            raise ServeError(500, f"generation failed: {type(error).__name__}: {error}") from error
        timings = Timings(queue_ms=result.queue_ms, encode_ms=result.encode_ms, generate_ms=result.generate_ms,
                          total_ms=1000 * (time.perf_counter() - started))
        return AnswerResponse(answer=result.text, adapter=adapter, task=task, batch_size=result.batch_size,
                              timings=timings)

    @app.post("/v1/ask", response_model=AnswerResponse, responses=ERROR_RESPONSES)
    async def ask(request: Request, media: Media, adapter: AdapterName,
                  question: Annotated[str, Form(max_length=settings.max_question_chars)],
                  max_new_tokens: NewTokens = None, num_beams: Beams = None) -> AnswerResponse:
        """Answer a question about the media with a VQA adapter."""
        if not question.strip():
            raise ServeError(400, "empty question")
        return await answer(request, "vqa", adapter, media, question.strip(),
                            {"max_new_tokens": max_new_tokens, "num_beams": num_beams})

    @app.post("/v1/caption", response_model=AnswerResponse, responses=ERROR_RESPONSES)
    async def caption(request: Request, media: Media, adapter: AdapterName,
                      max_new_tokens: NewTokens = None, num_beams: Beams = None) -> AnswerResponse:
        """Describe the media with a captioning adapter."""
        return await answer(request, "caption", adapter, media, "",
                            {"max_new_tokens": max_new_tokens, "num_beams": num_beams})

    @app.get("/v1/adapters", response_model=list[AdapterInfo])
    def adapters() -> list[dict[str, Any]]:
        """The hosted adapters; those naming the same LM and encoder share one copy of each."""
        return [hosted.describe() for hosted in registry.adapters.values()]

    add_chat_routes(app, answer, settings)

    @app.get("/health", responses={503: {"description": "the model thread is not running"}})
    def health() -> JSONResponse:
        """503 when the model thread is gone, so that a load balancer or orchestrator stops sending requests."""
        running = batcher.running
        return JSONResponse(status_code=200 if running else 503, content={
            "status": "ok" if running else "stopped", "adapters": len(registry.adapters),
            "frozen_models": registry.frozen_models, "max_batch_size": batcher.max_batch_size,
            "waiting": batcher.waiting, "generate_calls": batcher.generate_calls,
            "compile_backend": settings.compile_backend})

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _disconnect(request: Request) -> None:
    """Returns when the client goes away: its request's body is read, so the next message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": "..."}`` with its status, whichever layer raised it."""

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return error(exc.status, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = ["{}: {}".format(".".join(str(part) for part in problem["loc"][1:]) or "request", problem["msg"])
                    for problem in exc.errors()]
        return error(422, "; ".join(problems))

    for error_class, status in STATUS_OF_ERROR.items():
        async def known_error(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return error(status, str(exc))

        app.add_exception_handler(error_class, known_error)


def load_registry(adapters: list[tuple[str, str | Path]], device: str = "cpu",
                  compositions: list[tuple[str, list[str]]] = (), weights: str = "auto") -> AdapterRegistry:
    """(name, folder) pairs loaded over shared frozen models (a folder may be a composed model's), then
    (name, [hosted adapter names]) pairs composed from the hosted adapters, in the order given."""
    registry = AdapterRegistry(device, weights, captions=any(writes_captions(folder) for _, folder in adapters))
    for name, folder in tqdm(adapters, desc="loading adapters", unit="adapter"):
        registry.add(name, folder)
    for name, senses in compositions:
        registry.compose(name, senses)
    return registry


def serve(adapters: list[tuple[str, str | Path]], host: str = "127.0.0.1", port: int = 8000,
          settings: ServeSettings | None = None, device: str = "cpu",
          compositions: list[tuple[str, list[str]]] = (), weights: str = "auto") -> None:
    """Load the adapters (frozen models shared, held as ``weights``) and compose the compositions, then serve until
    interrupted."""
    uvicorn.run(create_app(load_registry(adapters, device, compositions, weights), settings), host=host, port=port,
                timeout_graceful_shutdown=SHUTDOWN_GRACE_S)


@contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1") -> Iterator[str]:
    """The app served by uvicorn from a background thread on a free port; yields its base URL."""
    listener = socket.socket()
    listener.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="sensorium-http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server stopped while starting")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        listener.close()
