"""The server's decoding caps hold whatever sets the options (a hosted adapter's own defaults, the request), and a
request nobody waits for any more (timed out, its client gone, the server stopping) stops generating: a live
server on 127.0.0.1, an LM slowed to a known pace per token."""

from __future__ import annotations

import io
import socket
import threading
import time

import httpx
import pytest
from conftest import save_steered_adapter
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sensorium import AdapterConfig
from sensorium.config import Decoding
from sensorium.schema import BOUNDS
from sensorium.serve import app as app_module
from sensorium.serve.app import create_app, load_registry, running_server
from sensorium.serve.settings import ServeSettings

LONG = 100  # the hosted adapter's own decoding: exactly this many new tokens (the tiny LM reads 128 positions)
STEP_S = 0.05  # each forward of the slowed LM: a whole answer of LONG tokens takes 5 s or more


@pytest.fixture(scope="module")
def slowed(tiny_lm_folder, tiny_vit_folder, tmp_path_factory):
    """(registry hosting "long", an adapter whose own defaults decode LONG tokens; the LM's forward calls so far)."""
    config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=2, inject_layers=[2, 3],
                           generation={"max_new_tokens": LONG, "min_new_tokens": LONG})
    registry = load_registry([("long", save_steered_adapter(config, 7, tmp_path_factory.mktemp("long")))])
    forwards = [0]

    def slow(module, args, output):
        forwards[0] += 1
        time.sleep(STEP_S)

    handle = registry.get("long").model.lm.register_forward_hook(slow)
    yield registry, forwards
    handle.remove()


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def ask(url: str, **fields) -> httpx.Response:
    return httpx.post(f"{url}/v1/ask", data={"adapter": "long", "question": "color ?", **fields},
                      files={"media": ("red.png", png(), "image/png")}, timeout=60)


def tokens(registry, answer: str) -> int:
    return len(registry.get("long").model.tokenizer(answer, add_special_tokens=False).input_ids)


def test_an_adapters_own_decoding_is_capped_by_the_server(slowed):
    registry, _ = slowed
    with running_server(create_app(registry, ServeSettings(max_new_tokens=4))) as url:
        response = ask(url)
        assert response.status_code == 200, response.text
        assert 1 <= tokens(registry, response.json()["answer"]) <= 4


def test_a_timed_out_request_stops_generating(slowed):
    """Its generation ends at the next token, so the next request is answered within its own timeout."""
    registry, forwards = slowed
    with running_server(create_app(registry, ServeSettings(max_new_tokens=LONG, request_timeout_s=2))) as url:
        started = forwards[0]
        timed_out = ask(url)
        assert timed_out.status_code == 504 and "no answer within 2 s" in timed_out.json()["error"]
        quick = ask(url, max_new_tokens="1")
        assert quick.status_code == 200, quick.text
        assert forwards[0] - started < LONG  # the first generation never reached its 100 tokens


def _post_and_leave(url: str) -> None:
    """A whole request sent over a socket, which is then closed before the answer."""
    body = httpx.Request("POST", f"{url}/v1/ask", data={"adapter": "long", "question": "color ?"},
                         files={"media": ("red.png", png(), "image/png")})
    head = "".join(f"{name}: {value}\r\n" for name, value in body.headers.items())
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(f"POST /v1/ask HTTP/1.1\r\n{head}\r\n".encode() + body.read())
        time.sleep(10 * STEP_S)  # generation under way


def test_a_request_whose_client_leaves_stops_generating(slowed):
    registry, forwards = slowed
    with running_server(create_app(registry, ServeSettings(max_new_tokens=LONG, request_timeout_s=60))) as url:
        started = forwards[0]
        _post_and_leave(url)
        quick = ask(url, max_new_tokens="1")
        assert quick.status_code == 200, quick.text
        assert forwards[0] - started < LONG


def test_a_stopping_server_stops_the_generation_in_flight(slowed, monkeypatch):
    """What SIGTERM does (uvicorn's should_exit): requests in flight get a grace period, then their generation ends."""
    registry, forwards = slowed
    monkeypatch.setattr(app_module, "SHUTDOWN_GRACE_S", 0.5)
    started, answers = forwards[0], []
    with running_server(create_app(registry, ServeSettings(max_new_tokens=LONG, request_timeout_s=60))) as url:
        waiting = threading.Thread(target=lambda: answers.append(_attempt(url)))
        waiting.start()
        for _ in range(200):  # until its generation is under way
            if forwards[0] > started + 2:
                break
            time.sleep(STEP_S)
    waiting.join()
    assert forwards[0] - started < LONG
    assert answers and answers[0] != 200


def _attempt(url: str) -> int | str:
    try:
        return ask(url).status_code
    except httpx.HTTPError as error:  # the server closed the connection without an answer
        return type(error).__name__


CAPS = st.builds(ServeSettings, max_new_tokens=st.integers(*BOUNDS["max_new_tokens"]),
                 max_beams=st.integers(*BOUNDS["num_beams"]))
DECODING = st.fixed_dictionaries({"max_new_tokens": st.integers(*BOUNDS["max_new_tokens"])}, optional={
    "min_new_tokens": st.integers(*BOUNDS["min_new_tokens"]), "num_beams": st.integers(*BOUNDS["num_beams"]),
    "repetition_penalty": st.floats(*BOUNDS["repetition_penalty"])}).filter(
    lambda options: options.get("min_new_tokens", 0) <= options["max_new_tokens"])


@settings(max_examples=300, deadline=None)
@given(caps=CAPS, options=DECODING)
def test_any_decoding_is_capped_within_the_servers_limits(caps, options):
    """Options any source may set come out within the caps, still valid, and unchanged where they already fit."""
    capped = caps.capped(options)
    assert Decoding.checked(capped) == capped
    assert capped["max_new_tokens"] == min(options["max_new_tokens"], caps.max_new_tokens)
    assert capped["num_beams"] == min(options.get("num_beams", 1), caps.max_beams)
    assert capped.get("min_new_tokens", 0) <= capped["max_new_tokens"]
    if options.get("min_new_tokens", 0) <= caps.max_new_tokens:
        assert capped.get("min_new_tokens") == options.get("min_new_tokens")
