"""The OpenAI chat API of `sensorium serve`, through the official `openai` client against a live server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from conftest import save_steered_adapter
from test_audio import audio_config, tiny_audio_model, tone, wav_bytes
from test_serve import encoded, picture
from test_video import write_clip

from sensorium import AdapterConfig
from sensorium.model import generate_mixed
from sensorium.serve import batching
from sensorium.serve.adapters import AdapterRegistry
from sensorium.serve.app import create_app, load_registry, running_server
from sensorium.serve.settings import ServeSettings

QUESTION = "what is the shape ?"


@pytest.fixture(scope="module")
def registry(tiny_adapter_folders, tiny_lm_folder, tiny_vit_folder, tmp_path_factory) -> AdapterRegistry:
    """Image adapters "shapes" (questions) and "captions", "sounds" over a tiny wav2vec2, "clips" over 4 frames."""
    sounds = save_steered_adapter(audio_config(tiny_lm_folder, tiny_audio_model("wav2vec2", tmp_path_factory.mktemp(
        "wav2vec2"))), 4, tmp_path_factory.mktemp("adapter-sounds"))
    clips = save_steered_adapter(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=f"frames:{tiny_vit_folder}",
                                               num_frames=4, temporal="frames", num_blocks=2, inject_layers=[2, 3]),
                                 3, tmp_path_factory.mktemp("adapter-clips"))
    return load_registry([*tiny_adapter_folders.items(), ("sounds", sounds), ("clips", clips)])


@contextmanager
def served(registry: AdapterRegistry, **settings) -> Iterator[tuple[openai.OpenAI, httpx.Client]]:
    """A live server on a free loopback port: the openai client and a plain HTTP client on it."""
    with running_server(create_app(registry, ServeSettings(**settings))) as url, httpx.Client(base_url=url,
                                                                                              timeout=60) as http:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60), http


@pytest.fixture(scope="module")
def server(registry) -> Iterator[tuple[openai.OpenAI, httpx.Client]]:
    with served(registry) as clients:
        yield clients


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_message(image: bytes, question: str = QUESTION) -> list[dict]:
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "text", "text": question},
                                         {"type": "image_url", "image_url": {"url": data_url(image, "image/png")}}]}]


def ask(http: httpx.Client, adapter: str, media: bytes, question: str = QUESTION, **options) -> str:
    """/v1/ask's answer (/v1/caption's without a question)."""
    path, fields = ("/v1/ask", {"question": question}) if question else ("/v1/caption", {})
    response = http.post(path, data={"adapter": adapter, **fields, **options}, files={"media": ("m", media)})
    assert response.status_code == 200, response.text
    return response.json()["answer"]


# ---- answers ------------------------------------------------------------------------------------------------


def test_plain_and_streamed_answers_equal_ask(server, registry):
    client, http = server
    image = encoded(picture(0))
    completion = client.chat.completions.create(model="shapes", messages=image_message(image), max_tokens=5)
    text = completion.choices[0].message.content
    assert text == ask(http, "shapes", image, max_new_tokens=5) != ""
    assert completion.model == "shapes" and completion.choices[0].message.role == "assistant"
    model = registry.get("shapes").model
    completion_tokens = len(model.tokenizer(text, add_special_tokens=False).input_ids)
    prompt_tokens = model.prefix_length + len(model.prompt_ids([QUESTION])[0])
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)
    assert completion.choices[0].finish_reason == ("length" if completion_tokens >= 5 else "stop")

    chunks = list(client.chat.completions.create(model="shapes", messages=image_message(image), max_tokens=5,
                                                 stream=True, stream_options={"include_usage": True}))
    deltas = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(deltas) == text and len(deltas) >= 3  # the role, the text's pieces, the finish
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == \
        completion.choices[0].finish_reason
    assert chunks[-1].usage.model_dump() == completion.usage.model_dump()
    # Without max_tokens or temperature, the adapter's own decoding, as /v1/ask without options.
    default = client.chat.completions.create(model="shapes", messages=image_message(image))
    assert default.choices[0].message.content == ask(http, "shapes", image)


def test_server_sent_events_end_with_done(server):
    _, http = server
    body = {"model": "shapes", "messages": image_message(encoded(picture(1))), "max_tokens": 3, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(event.startswith("data: ") for event in events) and events[-1] == "data: [DONE]"


def test_audio_video_and_captions_answer_as_the_form_endpoints(server, tmp_path):
    client, http = server
    sound = wav_bytes(tone(440, 0.8))
    audio = client.chat.completions.create(model="sounds", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "text", "text": "is there speech ?"},
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(sound).decode(), "format": "wav"}}]}])
    assert audio.choices[0].message.content == ask(http, "sounds", sound, "is there speech ?", max_new_tokens=4)

    clip = Path(write_clip(tmp_path / "clip.mp4", 12, pixels=lambda i: np.asarray(picture(i, 32)))).read_bytes()
    video = client.chat.completions.create(model="clips", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": data_url(clip, "video/mp4")}}, {"type": "text", "text": QUESTION}]}])
    assert video.choices[0].message.content == ask(http, "clips", clip, max_new_tokens=4)

    # A captioning adapter reads past the text, as /v1/caption takes none.
    image = encoded(picture(2))
    caption = client.chat.completions.create(model="captions", messages=image_message(image, "Describe it."),
                                             max_tokens=6)
    assert caption.choices[0].message.content == ask(http, "captions", image, "", max_new_tokens=6)


def test_greedy_sampling_seed_and_stop(server):
    client, http = server
    image = encoded(picture(3))

    def answer(**options) -> str:
        completion = client.chat.completions.create(model="shapes", messages=image_message(image), max_tokens=8,
                                                    **options)
        return completion.choices[0].message.content

    assert answer(temperature=0) == ask(http, "shapes", image, max_new_tokens=8, num_beams=1)
    sampled = [answer(temperature=2.0, top_p=1.0, seed=seed) for seed in range(4)]
    assert [answer(temperature=2.0, top_p=1.0, seed=seed) for seed in range(4)] == sampled  # repeatable
    assert len(set(sampled)) > 1  # and sampled: a tiny random LM at temperature 2 says different things
    greedy = answer(temperature=0)
    stop = greedy.split()[1] if len(greedy.split()) > 1 else greedy[1:]
    cut = client.chat.completions.create(model="shapes", messages=image_message(image), max_tokens=8, temperature=0,
                                         stop=[stop, "never said"])
    assert cut.choices[0].message.content == greedy[:greedy.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_unknown_fields_are_read_past(server):
    client, http = server
    image = encoded(picture(4))
    completion = client.chat.completions.create(model="shapes", messages=image_message(image), max_tokens=4,
                                                user="someone", extra_body={"no_such_field": [1, 2]})
    assert completion.choices[0].message.content == ask(http, "shapes", image, max_new_tokens=4)


def test_models_lists_the_hosted_adapters(server):
    client, _ = server
    assert [model.id for model in client.models.list()] == ["shapes", "captions", "sounds", "clips"]
    assert client.models.retrieve("sounds").owned_by == "sensorium"
    with pytest.raises(openai.NotFoundError) as refused:
        client.models.retrieve("nope")
    assert refused.value.code == "model_not_found" and "unknown adapter 'nope'" in refused.value.message


# ---- batching --------------------------------------------------------------------------------------------------


def test_chat_requests_batch_with_ask_requests(registry, monkeypatch):
    sizes: list[int] = []

    def counted(samples, **options):
        sizes.append(len(samples))
        return generate_mixed(samples, **options)

    monkeypatch.setattr(batching, "generate_mixed", counted)
    images = [encoded(picture(seed)) for seed in (5, 6)]
    # A long window, closed by the second request: both arrive in it however slow the machine.
    with served(registry, max_batch_size=2, max_wait_ms=5000) as (client, http), ThreadPoolExecutor(2) as pool:
        chat = pool.submit(client.chat.completions.create, model="shapes", messages=image_message(images[0]),
                           max_tokens=4)
        form = pool.submit(ask, http, "captions", images[1], "", max_new_tokens=4, num_beams=1)
        chat_answer, form_answer = chat.result().choices[0].message.content, form.result()
    assert sizes == [2]
    shapes, captions = registry.get("shapes").model, registry.get("captions").model
    assert chat_answer == shapes.ask([picture(5)], [QUESTION], max_new_tokens=4)[0]
    assert form_answer == captions.caption([picture(6)], max_new_tokens=4, num_beams=1)[0]


# ---- errors ------------------------------------------------------------------------------------------------------


def test_oversized_requests_are_refused_in_openais_shape(registry):
    image = encoded(picture(7, 200))  # about 120 KB of noise
    with served(registry, max_upload_bytes=2**16, max_pixels=30 * 30) as (client, _):
        # A body past the chat limit, refused before it is parsed.
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="shapes", messages=image_message(image * 3))
        assert refused.value.status_code == 413 and refused.value.code == "request_too_large"
        assert "request body larger than" in refused.value.message
        # A body within the limit whose medium is past the upload limit, refused before its base64 is decoded.
        with pytest.raises(openai.APIStatusError, match="larger than 65,536 bytes") as refused:
            client.chat.completions.create(model="shapes", messages=image_message(image))
        assert refused.value.status_code == 413
        # An image under the byte limit but past the pixel limit, refused from its header.
        with pytest.raises(openai.APIStatusError, match="40x40 pixels") as refused:
            client.chat.completions.create(model="shapes", messages=image_message(encoded(picture(8))))
        assert refused.value.status_code == 413
        # Tokens: no more than the server's --max-new-tokens.
        with pytest.raises(openai.BadRequestError, match="max_tokens"):
            client.chat.completions.create(model="shapes", messages=image_message(encoded(picture(8, 8))),
                                           max_tokens=65)


@pytest.mark.parametrize(("body", "words"), [
    ({"model": "shapes"}, "messages"),
    ({"model": "shapes", "messages": "hello"}, "messages"),
    ({"model": "shapes", "messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}, "messages"),
    ({"model": "shapes", "messages": [{"role": "user", "content": "what color ?"}]}, "0 media parts"),
    ({"model": "shapes", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}, "fetches nothing"),
    ({"model": "shapes", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,not base64!"}}]}]}, "not base64"),
    ({"model": "shapes", "n": 2, "messages": [{"role": "user", "content": "hi"}]}, "n"),
    ({"model": "shapes", "temperature": 1e-309, "messages": [{"role": "user", "content": "hi"}]}, "temperature"),
    ({"model": "shapes", "top_p": 1e-300, "messages": [{"role": "user", "content": "hi"}]}, "top_p"),
])
def test_malformed_requests_are_400_in_openais_shape(server, body, words):
    _, http = server
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and words in error["message"], error


def test_malformed_json_and_wrong_media_through_the_client(server):
    client, http = server
    response = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.APIStatusError, match="'sounds' reads audio, not image") as refused:
        client.chat.completions.create(model="sounds", messages=image_message(encoded(picture(9))))
    assert refused.value.status_code == 415
    with pytest.raises(openai.NotFoundError, match="unknown adapter 'nope'"):
        client.chat.completions.create(model="nope", messages=image_message(encoded(picture(9))))
    # The form API keeps its own error shape.
    assert http.post("/v1/ask", data={"adapter": "nope", "question": "q"}, files={"media": (
        "m", encoded(picture(9)))}).json() == {"error": "unknown adapter 'nope'; hosted: captions, clips, shapes, "
                                                        "sounds"}


def test_the_schema_declares_the_openai_routes(server):
    _, http = server
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/models", "/v1/models/{model}"} <= set(paths)
    responses = paths["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "404", "413", "415"} <= set(responses)
    assert {"application/json", "text/event-stream"} <= set(responses["200"]["content"])


def test_an_image_as_a_file_like_the_clients_send_it(server):
    """The shape of the openai client's own example: a JPEG read from a file, base64 in a data URL."""
    client, http = server
    buffer = io.BytesIO()
    picture(10).save(buffer, format="JPEG")
    completion = client.chat.completions.create(model="shapes", max_tokens=4, messages=[{"role": "user", "content": [
        {"type": "text", "text": QUESTION},
        {"type": "image_url", "image_url": {"url": data_url(buffer.getvalue(), "image/jpeg"), "detail": "low"}}]}])
    assert completion.choices[0].message.content == ask(http, "shapes", buffer.getvalue(), max_new_tokens=4)
