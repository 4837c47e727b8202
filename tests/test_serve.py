"""`sensorium serve`: shared frozen models, the API, dynamic batching across adapters, every error answer."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import schemathesis
import torch
import torch._dynamo
from conftest import save_steered_adapter
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette import formparsers
from test_video import write_clip

from sensorium import AdapterConfig, cli
from sensorium.config import WEIGHTS_NAME
from sensorium.model import generate_mixed
from sensorium.serve import app as app_module
from sensorium.serve import batching
from sensorium.serve import media as media_module
from sensorium.serve.adapters import AdapterRegistry
from sensorium.serve.app import create_app, load_registry, running_server
from sensorium.serve.settings import ServeSettings

STATIC = Path(app_module.__file__).parent / "static"


def picture(seed: int, size: int = 40) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def upload(data: bytes, name: str = "image.png", content_type: str = "image/png") -> dict:
    return {"media": (name, data, content_type)}


@pytest.fixture(scope="module")
def registry(tiny_adapter_folders) -> AdapterRegistry:
    return load_registry(list(tiny_adapter_folders.items()))


@pytest.fixture
def serve_app(registry):
    """serve_app(**settings): a TestClient on a fresh app (and model thread) over the module's adapters."""

    @contextmanager
    def start(**settings):
        with TestClient(create_app(registry, ServeSettings(**settings))) as client:
            yield client

    return start


@pytest.fixture
def client(serve_app):
    with serve_app() as client:
        yield client


@pytest.fixture
def generate_calls(monkeypatch) -> list[int]:
    """The batch size of every generate() call the server makes."""
    sizes: list[int] = []

    def counted(samples, **options):
        sizes.append(len(samples))
        return generate_mixed(samples, **options)

    monkeypatch.setattr(batching, "generate_mixed", counted)
    return sizes


def post_together(client: TestClient, requests: list[tuple[str, dict, bytes]]) -> list:
    """(path, form fields, image bytes) requests sent at once from as many threads."""
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda r: client.post(r[0], data=r[1], files=upload(r[2])), requests))


# ---- shared models --------------------------------------------------------------------------------


def test_adapters_share_one_frozen_lm_and_encoder(tiny_adapter_folders):
    registry = AdapterRegistry()
    shapes = registry.add("shapes", tiny_adapter_folders["shapes"])
    captions = registry.add("captions", tiny_adapter_folders["captions"])
    # The same folder spelled differently is still the same model.
    again = registry.add("again", str(Path(tiny_adapter_folders["shapes"]) / ".." / Path(tiny_adapter_folders[
        "shapes"]).name))
    for other in (captions, again):
        assert other.model.lm is shapes.model.lm
        assert other.model.tokenizer is shapes.model.tokenizer
        assert other.model.encoder is shapes.model.encoder
        assert other.model.prompt is not shapes.model.prompt  # each adapter keeps its own weights
    assert registry.frozen_models == 2
    assert not torch.equal(captions.model.prompt, shapes.model.prompt)
    with pytest.raises(ValueError, match="given twice"):
        registry.add("shapes", tiny_adapter_folders["captions"])


def test_the_registry_holds_its_lms_in_the_weight_format_given(tiny_adapter_folders, image):
    """serve --dtype: int8 weight-only LMs answer over the same adapters, reading fewer bytes per token."""
    from sensorium.lm import weight_bytes_per_token

    full, int8 = AdapterRegistry(weights="float32"), AdapterRegistry(weights="int8")
    for registry in (full, int8):
        registry.add("shapes", tiny_adapter_folders["shapes"])
    lms = [registry.get("shapes").model.lm for registry in (full, int8)]
    assert weight_bytes_per_token(lms[1]) < weight_bytes_per_token(lms[0]) / 2
    assert int8.get("shapes").model.ask([image], ["what color ?"], max_new_tokens=2)
    with pytest.raises(ValueError, match="unknown weight format 'int3'"):
        AdapterRegistry(weights="int3")


def test_auto_keeps_float32_when_a_hosted_adapter_writes_captions(tiny_adapter_folders, monkeypatch):
    """bf16 weights moved captions (CIDEr) where they left answers unchanged: auto only picks it for questions."""
    from sensorium import lm

    monkeypatch.setenv(lm.NATIVE_BF16_ENV, "1")
    assert load_registry([("shapes", tiny_adapter_folders["shapes"])]).weights == "bfloat16"
    assert load_registry(list(tiny_adapter_folders.items())).weights == "float32"


def test_adapters_endpoint_describes_each(client, tiny_adapter_folders, tiny_lm_folder, tiny_vit_folder):
    described = {entry["name"]: entry for entry in client.get("/v1/adapters").json()}
    assert set(described) == {"shapes", "captions"}
    assert described["shapes"]["task"] == "vqa" and described["captions"]["task"] == "caption"
    for name, entry in described.items():
        assert entry["lm"] == tiny_lm_folder("llama") and entry["encoder"] == tiny_vit_folder
        assert entry["modality"] == "image"
        assert entry["size_bytes"] == (Path(tiny_adapter_folders[name]) / WEIGHTS_NAME).stat().st_size
        assert 0 < 4 * entry["trainable_parameters"] < entry["size_bytes"]


def test_health_and_openapi(client):
    assert client.get("/health").json() == {"status": "ok", "adapters": 2, "frozen_models": 2, "max_batch_size": 8,
                                            "waiting": 0, "generate_calls": 0, "compile_backend": None}
    schema = client.get("/openapi.json").json()
    assert {"/v1/ask", "/v1/caption", "/v1/adapters", "/health"} <= set(schema["paths"])
    assert {"404", "413", "415", "504"} <= set(schema["paths"]["/v1/ask"]["post"]["responses"])


def test_health_fails_once_the_model_thread_is_gone(serve_app):
    with serve_app() as client:
        client.app.state.batcher.stop()
        response = client.get("/health")
        assert response.status_code == 503 and response.json()["status"] == "stopped"


# ---- answers ----------------------------------------------------------------------------------------


def test_ask_answers_as_the_model_does(client, registry):
    image, question = picture(0), "what is the shape ?"
    model = registry.get("shapes").model
    response = client.post("/v1/ask", data={"adapter": "shapes", "question": question, "max_new_tokens": "5"},
                           files=upload(encoded(image)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == model.ask([image], [question], max_new_tokens=5)[0]
    assert (body["adapter"], body["task"], body["batch_size"]) == ("shapes", "vqa", 1)
    timings = body["timings"]
    assert min(timings.values()) >= 0
    assert timings["total_ms"] >= timings["queue_ms"] + timings["encode_ms"] + timings["generate_ms"]
    # Without options, the adapter's own decoding settings apply.
    default = client.post("/v1/ask", data={"adapter": "shapes", "question": question}, files=upload(encoded(image)))
    assert default.json()["answer"] == model.ask([image], [question])[0]


def test_caption_answers_as_the_model_does(client, registry):
    image = picture(1)
    response = client.post("/v1/caption", data={"adapter": "captions", "max_new_tokens": "6", "num_beams": "2"},
                           files=upload(encoded(image)))
    assert response.status_code == 200, response.text
    assert response.json()["answer"] == registry.get("captions").model.caption([image], max_new_tokens=6,
                                                                                 num_beams=2)[0]


# ---- batching ---------------------------------------------------------------------------------------


def test_concurrent_requests_of_two_adapters_share_one_generate_call(serve_app, registry, generate_calls):
    options = {"max_new_tokens": 5, "num_beams": 1}
    images = [picture(seed) for seed in range(6)]
    questions = ["what is the shape ?", "color ?", "is there a red circle in the image ?"]
    requests = [("/v1/ask", {"adapter": "shapes", "question": questions[i // 2], **options}, encoded(images[i]))
                if i % 2 == 0 else ("/v1/caption", {"adapter": "captions", **options}, encoded(images[i]))
                for i in range(6)]
    # A long window, closed by the sixth request: the batch is complete however slow the machine.
    with serve_app(max_batch_size=6, max_wait_ms=5000) as client:
        responses = post_together(client, requests)
    assert generate_calls == [6]
    assert [r.json()["batch_size"] for r in responses] == [6] * 6
    shapes, captions = registry.get("shapes").model, registry.get("captions").model
    alone = [shapes.ask([images[i]], [questions[i // 2]], **options)[0] if i % 2 == 0
             else captions.caption([images[i]], **options)[0] for i in range(6)]
    assert [r.json()["answer"] for r in responses] == alone


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method. is deprecated:DeprecationWarning")  # torch's own
def test_a_compiling_server_answers_as_an_eager_one(serve_app, registry, generate_calls):
    """Decode steps compiled in shape buckets (traced by the eager backend): a batch of 3 runs padded to 4 rows and
    answers each request as the uncompiled model does alone."""
    options = {"max_new_tokens": 5, "min_new_tokens": 5, "num_beams": 1}
    images = [picture(seed) for seed in range(3)]
    questions = ["what is the shape ?", "color ?", "is there a red circle in the image ?"]
    requests = [("/v1/ask", {"adapter": "shapes", "question": question, **options}, encoded(image))
                for question, image in zip(questions, images, strict=True)]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with serve_app(max_batch_size=3, max_wait_ms=5000, compile_backend="eager") as client:
        responses = post_together(client, requests)
        assert client.get("/health").json()["compile_backend"] == "eager"
    assert generate_calls == [3]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    torch._dynamo.reset()
    shapes = registry.get("shapes").model
    assert [r.json()["answer"] for r in responses] == [shapes.ask([image], [question], **options)[0]
                                                       for question, image in zip(questions, images, strict=True)]


def test_requests_with_different_options_are_generated_apart(serve_app, generate_calls):
    requests = [("/v1/ask", {"adapter": "shapes", "question": "color ?", "max_new_tokens": tokens},
                 encoded(picture(seed))) for seed, tokens in enumerate([3, 5, 3, 5])]
    with serve_app(max_batch_size=4, max_wait_ms=5000) as client:
        responses = post_together(client, requests)
    assert all(r.status_code == 200 for r in responses)
    assert generate_calls == [2, 2]


def test_without_batching_each_request_has_its_own_call(serve_app, generate_calls):
    requests = [("/v1/ask", {"adapter": "shapes", "question": "color ?"}, encoded(picture(seed))) for seed in range(3)]
    with serve_app(max_batch_size=1) as client:
        responses = post_together(client, requests)
        assert client.get("/health").json()["generate_calls"] == 3
    assert generate_calls == [1, 1, 1]
    assert [r.json()["batch_size"] for r in responses] == [1, 1, 1]


# ---- errors -----------------------------------------------------------------------------------------


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert all(word in message for word in words), message


def test_unknown_adapter_is_404(client):
    response = client.post("/v1/ask", data={"adapter": "nope", "question": "color ?"},
                           files=upload(encoded(picture(0))))
    assert_error(response, 404, "unknown adapter 'nope'", "shapes")
    assert_error(client.get("/v2/nothing"), 404, "Not Found")


def test_wrong_task_for_the_endpoint_is_400(client):
    image = encoded(picture(0))
    assert_error(client.post("/v1/ask", data={"adapter": "captions", "question": "color ?"}, files=upload(image)),
                 400, "does caption", "/v1/caption")
    assert_error(client.post("/v1/caption", data={"adapter": "shapes"}, files=upload(image)), 400, "/v1/ask")


def test_media_type_comes_from_the_content(client):
    image = picture(0)
    ask = {"adapter": "shapes", "question": "color ?"}
    # An image is accepted whatever its name and declared type ...
    assert client.post("/v1/ask", data=ask, files=upload(encoded(image, "JPEG"), "notes.txt", "text/plain")
                       ).status_code == 200
    # ... and text is refused whatever its name and declared type.
    assert_error(client.post("/v1/ask", data=ask, files=upload(b"just some text\n" * 10, "photo.png")),
                 415, "photo.png", "unsupported media type", "PNG")
    # A decodable format that is not on the accepted list.
    assert_error(client.post("/v1/ask", data=ask, files=upload(encoded(image, "TIFF"), "scan.png")), 415)
    truncated = encoded(image)[:200]
    assert_error(client.post("/v1/ask", data=ask, files=upload(truncated, "cut.png")), 400, "cut.png", "unreadable")
    assert_error(client.post("/v1/ask", data=ask, files=upload(b"", "nothing.png")), 400, "empty file")


def test_limits_are_enforced(serve_app):
    limits = {"max_upload_bytes": 6000, "max_pixels": 10_000, "max_question_chars": 20, "max_new_tokens": 8,
              "max_beams": 2}
    small = encoded(picture(0))
    ask = {"adapter": "shapes", "question": "color ?"}
    with serve_app(**limits) as client:
        assert client.post("/v1/ask", data=ask, files=upload(small)).status_code == 200
        assert_error(client.post("/v1/ask", data=ask, files=upload(encoded(picture(0, size=100)))),
                     413, "larger than 6,000 bytes")
        # Few bytes, many pixels: refused from the header, before decoding.
        flat = encoded(Image.new("RGB", (200, 200), "red"))
        assert len(flat) < limits["max_upload_bytes"]
        assert_error(client.post("/v1/ask", data=ask, files=upload(flat)), 413, "200x200")
        for fields, words in [({"question": "x" * 21}, ["question", "20 characters"]),
                              ({"max_new_tokens": "9"}, ["max_new_tokens", "8"]),
                              ({"num_beams": "3"}, ["num_beams"]), ({"num_beams": "0"}, ["num_beams"]),
                              ({"max_new_tokens": "many"}, ["max_new_tokens", "integer"])]:
            assert_error(client.post("/v1/ask", data={**ask, **fields}, files=upload(small)), 422, *words)
        blank = client.post("/v1/ask", data={**ask, "question": "   "}, files=upload(small))
        assert_error(blank, 400, "empty question")
        missing = client.post("/v1/ask", data={"adapter": "shapes"}, files=upload(small))
        assert_error(missing, 422, "question", "required")
        assert_error(client.post("/v1/ask", data=ask), 422, "media")


def test_timeout_is_504(serve_app):
    # The batching window outlasts the timeout, so the request cannot be answered in time.
    with serve_app(request_timeout_s=0.2, max_wait_ms=2000) as client:
        response = client.post("/v1/ask", data={"adapter": "shapes", "question": "color ?"},
                               files=upload(encoded(picture(0))))
        assert_error(response, 504, "0.2 s")
        assert client.get("/health").json()["status"] == "ok"


def test_server_survives_bad_input_and_failures(client, monkeypatch):
    ask = {"adapter": "shapes", "question": "color ?"}
    good = upload(encoded(picture(0)))
    corrupt = encoded(picture(1))[:300]
    assert_error(client.post("/v1/ask", data=ask, files=upload(corrupt, "corrupt.png")), 400, "corrupt.png")
    assert client.post("/v1/ask", data=ask, files=good).status_code == 200

    def broken(samples, **options):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(batching, "generate_mixed", broken)
    assert_error(client.post("/v1/ask", data=ask, files=good), 500, "generation failed", "out of memory")
    monkeypatch.setattr(batching, "generate_mixed", generate_mixed)
    assert client.post("/v1/ask", data=ask, files=good).status_code == 200


# ---- page and command line --------------------------------------------------------------------------


def test_page_is_served_and_needs_no_network(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text
        assert client.get(asset).status_code == 200
    for path in STATIC.iterdir():
        assert "http:" not in path.read_text() and "https:" not in path.read_text(), f"{path.name} reaches out"


def test_cli_serve_hosts_the_named_adapters(monkeypatch, tiny_adapter_folders):
    served = {}
    monkeypatch.setattr(app_module.uvicorn, "run", lambda app, host, port, **options: served.update(app=app, port=port))
    folders = tiny_adapter_folders
    assert cli.main(["serve", "--adapter", f"a={folders['shapes']}", "--adapter", f"b={folders['captions']}",
                     "--port", "8123", "--no-batching"]) == 0
    assert served["port"] == 8123
    with TestClient(served["app"]) as client:
        assert [entry["name"] for entry in client.get("/v1/adapters").json()] == ["a", "b"]
        assert client.get("/health").json()["max_batch_size"] == 1


def test_cli_serve_reports_bad_adapters(tiny_adapter_folders, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--adapter", tiny_adapter_folders["shapes"]])
    assert exit_info.value.code == 2 and "expected NAME=DIR" in capsys.readouterr().err
    assert cli.main(["serve", "--adapter", f"a={tmp_path}"]) == 2
    assert "not an adapter folder" in capsys.readouterr().err
    folder = tiny_adapter_folders["shapes"]
    assert cli.main(["serve", "--adapter", f"a={folder}", "--adapter", f"a={folder}"]) == 2
    assert "given twice" in capsys.readouterr().err


# ---- the request body is bounded before it is parsed ---------------------------------------------------


@pytest.fixture
def spooled(monkeypatch) -> list[int]:
    """Bytes the multipart parser writes into its temporary files (which go to disk past 1 MiB)."""
    written = [0]

    class Recorded(formparsers.SpooledTemporaryFile):
        def write(self, data: bytes) -> int:
            written[0] += len(data)
            return super().write(data)

    monkeypatch.setattr(formparsers, "SpooledTemporaryFile", Recorded)
    return written


def multipart_head(boundary: str = "b0undary") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"adapter\"\r\n\r\nshapes\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"question\"\r\n\r\ncolor ?\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"big.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()


def call_asgi(app, headers: dict[str, str], chunks: Iterator[bytes]) -> tuple[int, dict, int]:
    """POST /v1/ask straight into the ASGI app, the body pulled chunk by chunk as a streaming server gives it:
    (status, JSON body, bytes of the body the app pulled)."""
    pulled, sent = [0], []

    async def receive() -> dict:
        chunk = next(chunks, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/ask", "raw_path": b"/v1/ask", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
             "headers": [(key.lower().encode(), value.encode()) for key, value in headers.items()]}
    asyncio.run(app(scope, receive, send))
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body), pulled[0]


def endless(head: bytes, chunk: int = 2**16, total: int = 300 * 2**20) -> Iterator[bytes]:
    """A multipart body whose upload would run to ``total`` bytes, made only as far as it is read."""
    yield head
    for _ in range(total // chunk):
        yield os.urandom(chunk)


MULTIPART = "multipart/form-data; boundary=b0undary"


def test_a_body_declaring_300_mib_is_refused_unread(registry, spooled):
    app = create_app(registry, ServeSettings(max_upload_bytes=2**20))
    status, body, pulled = call_asgi(app, {"content-type": MULTIPART, "content-length": str(300 * 2**20)},
                                     endless(multipart_head()))
    assert status == 413 and "request body larger than 1,114,112 bytes" in body["error"]
    assert pulled == 0 and spooled == [0]


def test_a_streamed_body_without_length_is_cut_at_the_limit(registry, spooled):
    settings = ServeSettings(max_upload_bytes=2**20)
    app = create_app(registry, settings)
    status, body, pulled = call_asgi(app, {"content-type": MULTIPART, "transfer-encoding": "chunked"},
                                     endless(multipart_head()))
    assert status == 413 and "request body larger than" in body["error"]
    assert settings.max_request_bytes < pulled <= settings.max_request_bytes + 2**16  # one chunk past the limit
    assert spooled[0] <= settings.max_request_bytes


def test_a_body_declaring_too_much_is_refused_over_a_real_socket(registry):
    with running_server(create_app(registry, ServeSettings(max_upload_bytes=2**20))) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(f"POST /v1/ask HTTP/1.1\r\nHost: {host}\r\nContent-Type: {MULTIPART}\r\n"
                               f"Content-Length: {300 * 2**20}\r\n\r\n".encode() + multipart_head())
            reply = connection.makefile("rb").read()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"application/json" in head and b"request body larger than" in body


def test_an_upload_at_the_limit_still_passes_the_body_bound(serve_app):
    # The body bound leaves room for the form beside the upload: a media file just under
    # --max-upload-mb reaches the media checks (here: an unsupported type, 415, not 413).
    limit = 50_000
    with serve_app(max_upload_bytes=limit) as client:
        response = client.post("/v1/ask", data={"adapter": "shapes", "question": "x" * 500},
                               files=upload(b"t" * limit, "notes.txt"))
    assert_error(response, 415, "unsupported media type")


# ---- no upload makes a 5xx: every decoder error is a JSON 400 --------------------------------------------


def gif_declaring(width: int, height: int) -> bytes:
    """A 35-byte GIF whose header and one frame declare width x height pixels."""
    size = struct.pack("<HH", width, height)
    return b"GIF89a" + size + b"\x00\x00\x00" + b"," + b"\x00\x00\x00\x00" + size + b"\x00\x02\x02\x44\x01\x00;"


@pytest.mark.parametrize(("data", "words"), [
    (encoded(picture(0), "JPEG")[:100], ["cut.bin", "unreadable"]),  # Pillow: OSError "Truncated File Read"
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, ["cut.bin", "unreadable"]),  # a PNG signature, then junk
    (b"\x89PNG\r\n\x1a\n" + b"junk" * 50, ["cut.bin", "unreadable"]),
    (gif_declaring(65535, 65535), ["cut.bin", "GIF", "decompression bomb"]),
], ids=["jpeg-cut-at-100-bytes", "png-signature-then-bytes", "png-signature-then-text", "gif-of-65535x65535"])
def test_undecodable_images_are_json_400(client, data, words):
    response = client.post("/v1/ask", data={"adapter": "shapes", "question": "color ?"}, files=upload(data, "cut.bin"))
    assert response.headers["content-type"] == "application/json"
    assert_error(response, 400, *words)


def test_any_decoder_exception_is_a_400_naming_the_upload(client, monkeypatch):
    # Decoders of hostile bytes raise more kinds of exception than any list names; all are the upload's fault.
    def decoder_fails(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(media_module, "load_image", decoder_fails)
    response = client.post("/v1/ask", data={"adapter": "shapes", "question": "color ?"},
                           files=upload(encoded(picture(0)), "odd.png"))
    assert_error(response, 400, "odd.png: unreadable image (error: unpack requires a buffer of 4 bytes)")


# ---- video adapters are served video uploads -----------------------------------------------------------


@pytest.fixture(scope="module")
def video_registry(tiny_adapter_folders, tiny_lm_folder, tiny_vit_folder, tmp_path_factory) -> AdapterRegistry:
    """The image adapter "shapes" and "clips", a video adapter sampling 4 frames, over the same frozen LM."""
    folder = tmp_path_factory.mktemp("adapter-clips")
    config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=f"frames:{tiny_vit_folder}", num_frames=4,
                           temporal="frames", num_blocks=2, inject_layers=[2, 3])
    save_steered_adapter(config, 3, folder)
    return load_registry([("shapes", tiny_adapter_folders["shapes"]), ("clips", folder)])


@pytest.mark.parametrize(("suffix", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("mkv", "libx264"),
                                               ("avi", "mpeg4")])
def test_video_adapters_answer_video_uploads(video_registry, tmp_path, suffix, codec):
    clip = write_clip(tmp_path / f"clip.{suffix}", 12, codec=codec, pixels=lambda i: np.asarray(picture(i, 32)))
    question = "what is the shape ?"
    with TestClient(create_app(video_registry)) as client:
        # Named and typed as something else: the container is read from the content.
        response = client.post("/v1/ask", data={"adapter": "clips", "question": question, "max_new_tokens": "4"},
                               files=upload(Path(clip).read_bytes(), "upload.bin", "application/octet-stream"))
    assert response.status_code == 200, response.text
    model = video_registry.get("clips").model
    assert model.encoder.num_frames == 4  # the adapter's own frame count, not the default 8
    assert response.json()["answer"] == model.ask([clip], [question], max_new_tokens=4)[0]


def test_bad_video_uploads_are_json_errors(video_registry, tmp_path):
    whole = Path(write_clip(tmp_path / "clip.mp4", 10)).read_bytes()
    ask = {"adapter": "clips", "question": "color ?"}
    with TestClient(create_app(video_registry, ServeSettings(max_pixels=32 * 32 - 1))) as client:
        assert_error(client.post("/v1/ask", data=ask, files=upload(whole[:len(whole) // 2], "half.mp4")),
                     400, "half.mp4")
        assert_error(client.post("/v1/ask", data=ask, files=upload(whole[:8] + os.urandom(2000), "noise.mp4")),
                     400, "noise.mp4")
        assert_error(client.post("/v1/ask", data=ask, files=upload(b"\x1a\x45\xdf\xa3" + b"\x00" * 100, "x.webm")),
                     400, "x.webm")
        # Frames over the pixel limit are refused from the stream's header, before decoding.
        assert_error(client.post("/v1/ask", data=ask, files=upload(whole, "big.mp4")), 413, "big.mp4", "32x32")
        # Each adapter reads its own modality, whichever way round.
        assert_error(client.post("/v1/ask", data=ask, files=upload(encoded(picture(0)))), 415,
                     "'clips' reads video, not image")
        assert_error(client.post("/v1/ask", data={"adapter": "shapes", "question": "color ?"},
                                 files=upload(whole, "clip.mp4")), 415, "'shapes' reads image, not video")


# ---- fuzzed from the API's own schema ------------------------------------------------------------------

FUZZ_EXAMPLES = 100  # per generation mode (data that fits the schema, data that does not)
FUZZ_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(cases: st.SearchStrategy[Case], mode: str, examples: Counter[str]) -> None:
    """Call and check FUZZ_EXAMPLES cases (fewer where the schema allows fewer), counting them by outcome."""

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(cases)
    def call_and_check(case: Case) -> None:
        response = case.call()
        case.validate_response(response, checks=FUZZ_CHECKS)
        examples[f"{mode} {case.method} {case.path} {response.status_code}"] += 1

    call_and_check()


def test_fuzzing_from_the_openapi_schema_finds_no_server_error(registry, capsys):
    """schemathesis, in-process (ASGI: no network, no port): every response is below 500, its status is one the
    schema declares for the operation, and its body conforms to the declared model; then the server still answers.

    Generated adapter names are random, so some cases name a hosted adapter and some upload a real image: those
    reach decoding and generation, with generated decoding options, and must answer as the schema says too.
    """
    app = create_app(registry)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    good_image = encoded(picture(0))
    good_image_base64 = base64.b64encode(good_image).decode()
    examples: Counter[str] = Counter()

    def aimed(drawn: tuple[Case, str | None, bool]) -> Case:
        case, adapter, real_image = drawn
        if adapter is not None and case.path_parameters and "model" in case.path_parameters:
            case.path_parameters["model"] = adapter
        if isinstance(case.body, dict):
            for field in ("adapter", "model"):
                if adapter is not None and field in case.body:
                    case.body[field] = adapter
            if real_image and "media" in case.body:
                case.body["media"] = good_image
            if real_image and "messages" in case.body:  # the chat API's one medium, and a question
                case.body["messages"] = [{"role": "user", "content": [
                    {"type": "text", "text": "color ?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + good_image_base64}}]}]
        return case

    try:
        for mode in GenerationMode:
            fuzz(st.tuples(schema.as_strategy(mode), st.sampled_from([None, "shapes", "captions"]), st.booleans())
                 .map(aimed), mode.value, examples)
    finally:
        shutdown_lifespans()  # the model thread schemathesis's ASGI client started with the app
    total = sum(examples.values())
    with capsys.disabled():
        print(f"\nschemathesis: {total} examples, no 5xx, every response as the schema declares; by mode, "
              f"operation and status: {dict(sorted(examples.items()))}")
    statuses = {key.rsplit(" ", 1)[1] for key in examples}
    assert {"200", "404", "422"} <= statuses  # hosted adapters were reached, and refused input was answered
    # The chat API's answers, plain and streamed, as its schema declares them (drawn bodies rarely hold a medium).
    chat = schema["/v1/chat/completions"]["POST"]
    messages = [{"role": "user", "content": [{"type": "text", "text": "color ?"}, {
        "type": "image_url", "image_url": {"url": "data:image/png;base64," + good_image_base64}}]}]
    try:
        for stream in (False, True):
            case = chat.Case(body={"model": "shapes", "messages": messages, "max_tokens": 3, "stream": stream})
            response = case.call()
            assert response.status_code == 200, response.text
            case.validate_response(response, checks=FUZZ_CHECKS)
    finally:
        shutdown_lifespans()
    with TestClient(app) as client:
        response = client.post("/v1/ask", data={"adapter": "shapes", "question": "color ?"}, files=upload(good_image))
    assert response.status_code == 200 and response.json()["answer"] == registry.get("shapes").model.ask(
        [picture(0)], ["color ?"])[0]
