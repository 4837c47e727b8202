"""`sensorium serve` hosting composed models: a video sense and an audio sense over one frozen LM, answering one
uploaded video with its sound track; composed from hosted adapters (--compose) or from a composed folder."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import save_steered_adapter
from fastapi.testclient import TestClient
from test_audio import encode_pyav, tiny_audio_model, tone, wav_bytes
from test_video import write_clip

from sensorium import AdapterConfig, cli
from sensorium.compose import COMPOSITION_NAME, ComposedLM, load_composed
from sensorium.config import WEIGHTS_NAME
from sensorium.model import generate_mixed
from sensorium.routing import question_stats
from sensorium.serve import app as app_module
from sensorium.serve import batching
from sensorium.serve.adapters import HostedComposition
from sensorium.serve.app import create_app, load_registry
from sensorium.serve.settings import ServeSettings

QUESTION = "what do you see and hear ?"
ADAPTERS = ("clips", "sounds", "still")


@pytest.fixture(scope="module")
def sense_folders(tiny_lm_folder, tiny_vit_folder, tmp_path_factory) -> dict[str, str]:
    """Three adapters of one tiny LM injecting into the same layers: video frames, a sound, an image; and one
    adapter of another LM."""
    audio = tiny_audio_model("wav2vec2", tmp_path_factory.mktemp("wav2vec2"))
    common = {"lm": tiny_lm_folder("llama"), "num_blocks": 2, "inject_layers": [2, 3]}
    configs = {"clips": AdapterConfig(**common, encoder=f"frames:{tiny_vit_folder}", num_frames=4, temporal="frames"),
               "sounds": AdapterConfig(**common, encoder=audio),
               "still": AdapterConfig(**common, encoder=tiny_vit_folder),
               "other-lm": AdapterConfig(lm=tiny_lm_folder("opt"), encoder=tiny_vit_folder, num_blocks=2,
                                         inject_layers=[2, 3])}
    return {name: save_steered_adapter(config, seed, tmp_path_factory.mktemp(f"sense-{name}"))
            for seed, (name, config) in enumerate(configs.items(), start=3)}


@pytest.fixture(scope="module")
def registry(sense_folders):
    return load_registry([(name, sense_folders[name]) for name in ADAPTERS],
                         compositions=[("av", ["clips", "sounds"]), ("seen-heard", ["still", "sounds"])],
                         weights="float32")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    """An MP4 of 10 frames (H.264) with an AAC sound track."""
    return encode_pyav(tmp_path_factory.mktemp("clip") / "clip.mp4", tone(440, 1.0), 16_000, "aac", video_frames=10)


def upload(data: bytes, name: str = "clip.mp4") -> dict:
    return {"media": (name, data, "video/mp4")}


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert all(word in message for word in words) and "\n" not in message, message


def test_composing_hosted_adapters_shares_their_models(sense_folders, registry):
    alone = load_registry([(name, sense_folders[name]) for name in ADAPTERS])
    assert registry.frozen_models == alone.frozen_models == 4  # one LM; frames, sound and image encoders
    composed = registry.get("av")
    assert isinstance(composed, HostedComposition) and isinstance(composed.model, ComposedLM)
    assert [sense.model for sense in composed.senses] == [registry.get("clips").model, registry.get("sounds").model]
    assert list(composed.model.senses) == [registry.get("clips").model, registry.get("sounds").model]
    assert composed.model.lm is registry.get("clips").model.lm is registry.get("sounds").model.lm
    # The same hosted sense serves in two composed models.
    assert registry.get("seen-heard").model.senses[1] is registry.get("sounds").model
    assert (composed.modality, composed.upload_modality) == ("audiovisual", "video")
    assert registry.get("seen-heard").modality == "image+audio"


def test_adapters_endpoint_describes_composed_models(registry, sense_folders, tiny_lm_folder):
    with TestClient(create_app(registry)) as client:
        described = {entry["name"]: entry for entry in client.get("/v1/adapters").json()}
        health = client.get("/health").json()
    assert set(described) == {*ADAPTERS, "av", "seen-heard"}
    assert health["adapters"] == 5 and health["frozen_models"] == 4
    av = described["av"]
    assert (av["task"], av["modality"], av["senses"], av["lm"]) == ("vqa", "audiovisual", ["clips", "sounds"],
                                                                     tiny_lm_folder("llama"))
    assert av["size_bytes"] == sum((Path(sense_folders[name]) / WEIGHTS_NAME).stat().st_size
                                   for name in ("clips", "sounds"))
    assert av["trainable_parameters"] == sum(described[name]["trainable_parameters"] for name in ("clips", "sounds"))
    assert described["seen-heard"]["modality"] == "image+audio" and described["clips"]["senses"] is None


def test_a_video_with_sound_is_answered_as_the_composed_model_does(registry, clip):
    data = Path(clip).read_bytes()
    with TestClient(create_app(registry)) as client:
        for name in ("av", "seen-heard"):
            response = client.post("/v1/ask", data={"adapter": name, "question": QUESTION, "max_new_tokens": "4"},
                                   files=upload(data, "upload.bin"))
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["adapter"], body["batch_size"]) == (name, 1)
            if name == "av":  # the file read offline by each sense: its 4 frames, its sound track
                assert body["answer"] == registry.get(name).model.ask([clip], [QUESTION], max_new_tokens=4)[0]
            else:  # the image sense reads the middle frame
                media = registry.get(name).read(data, "clip.mp4", ServeSettings().media_limits)
                assert body["answer"] == registry.get(name).model.ask([media], [QUESTION], max_new_tokens=4)[0]


def test_composed_requests_batch_together_and_apart_from_single_adapters(registry, clip, monkeypatch):
    sizes: list[tuple[int, bool]] = []

    def counted(samples, **options):
        sizes.append((len(samples), isinstance(samples[0][0], ComposedLM)))
        return generate_mixed(samples, **options)

    monkeypatch.setattr(batching, "generate_mixed", counted)
    data, sound = Path(clip).read_bytes(), wav_bytes(tone(440, 0.5))
    names = ["av", "clips", "av", "sounds", "av"]
    fields = {"question": QUESTION, "max_new_tokens": "4"}
    with TestClient(create_app(registry, ServeSettings(max_batch_size=5, max_wait_ms=5000))) as client:
        with ThreadPoolExecutor(len(names)) as pool:
            responses = list(pool.map(lambda name: client.post(
                "/v1/ask", data={"adapter": name, **fields},
                files=upload(sound, "x.wav") if name == "sounds" else upload(data)), names))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    # The composed model's three requests in one call; the video and audio adapters (different slots) apart.
    assert sorted(sizes) == [(1, False), (1, False), (3, True)]
    assert [r.json()["batch_size"] for r in responses] == [3, 1, 3, 1, 3]
    alone = registry.get("av").model.ask([clip], [QUESTION], max_new_tokens=4)[0]
    assert {r.json()["answer"] for r, name in zip(responses, names, strict=True) if name == "av"} == {alone}


def test_uploads_a_composed_model_cannot_read_are_refused(registry, tmp_path):
    silent = Path(write_clip(tmp_path / "silent.mp4", 10)).read_bytes()
    picture = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(picture, format="PNG")
    with TestClient(create_app(registry)) as client:
        ask = {"adapter": "av", "question": QUESTION}
        assert_error(client.post("/v1/ask", data=ask, files=upload(silent, "silent.mp4")), 400, "silent.mp4",
                     "without a sound track", "composed model 'av' needs the sound track", "'sounds'")
        assert_error(client.post("/v1/ask", data=ask, files=upload(picture.getvalue(), "x.png")), 415,
                     "'av' reads video with a sound track, not image")
        assert_error(client.post("/v1/ask", data=ask, files=upload(wav_bytes(tone(440, 0.5)), "x.wav")), 415,
                     "not audio")
        assert_error(client.post("/v1/ask", data=ask, files=upload(silent[:len(silent) // 2], "half.mp4")), 400,
                     "half.mp4")
        # The server goes on answering.
        assert client.get("/health").json()["status"] == "ok"


def test_a_composed_folder_is_hosted_over_the_shared_models(registry, sense_folders, clip, tmp_path):
    folder = tmp_path / "composed"
    registry.get("av").model.save_pretrained(folder)
    hosted = load_registry([("clips", sense_folders["clips"]), ("sounds", sense_folders["sounds"]),
                            ("saved", folder)], weights="float32")
    assert hosted.frozen_models == 3  # the composed folder's senses reuse the LM and both encoders
    saved = hosted.get("saved")
    assert isinstance(saved, HostedComposition) and saved.modality == "audiovisual"
    assert saved.model.lm is hosted.get("clips").model.lm
    with TestClient(create_app(hosted)) as client:
        entry = {e["name"]: e for e in client.get("/v1/adapters").json()}["saved"]
        assert entry["senses"] == ["clips", "sounds"]
        assert entry["size_bytes"] == sum((folder / name / WEIGHTS_NAME).stat().st_size for name in ("clips", "sounds"))
        response = client.post("/v1/ask", data={"adapter": "saved", "question": QUESTION, "max_new_tokens": "4"},
                               files=upload(Path(clip).read_bytes()))
    assert response.status_code == 200, response.text
    in_process = load_composed(folder, weights="float32")
    assert response.json()["answer"] == in_process.ask([clip], [QUESTION], max_new_tokens=4)[0]


def test_a_composed_folder_is_served_under_its_select_rule(registry, sense_folders, clip, tmp_path):
    """A composition that routes each question to a sense is served routing, answering as it does in process."""
    folder = tmp_path / "routed"
    model = registry.get("av").model
    model.save_pretrained(folder)
    for name, questions in (("clips", ["what do you see ?"]), ("sounds", ["what do you hear ?", QUESTION])):
        question_stats(model.lm, model.tokenizer, questions).save(folder / name)
    composition = json.loads((folder / COMPOSITION_NAME).read_text())
    (folder / COMPOSITION_NAME).write_text(json.dumps({**composition, "rule": "route"}))
    hosted = load_registry([("clips", sense_folders["clips"]), ("sounds", sense_folders["sounds"]),
                            ("routed", folder)], weights="float32")
    assert hosted.get("routed").model.composition.rule == "route"
    with TestClient(create_app(hosted)) as client:
        response = client.post("/v1/ask", data={"adapter": "routed", "question": QUESTION, "max_new_tokens": "4"},
                               files=upload(Path(clip).read_bytes()))
    assert response.status_code == 200, response.text
    assert response.json()["answer"] == load_composed(folder, weights="float32").ask([clip], [QUESTION],
                                                                                     max_new_tokens=4)[0]


# ---- the command line --------------------------------------------------------------------------------


def test_cli_serve_composes_hosted_adapters(monkeypatch, sense_folders):
    served = {}
    monkeypatch.setattr(app_module.uvicorn, "run", lambda app, host, port, **options: served.update(app=app))
    assert cli.main(["serve", "--adapter", f"v={sense_folders['clips']}", "--adapter", f"a={sense_folders['sounds']}",
                     "--compose", "av=v,a", "--compose", "va=a,v"]) == 0
    with TestClient(served["app"]) as client:
        described = {entry["name"]: entry for entry in client.get("/v1/adapters").json()}
        assert client.get("/health").json()["frozen_models"] == 3
    assert described["av"]["senses"] == ["v", "a"] and described["va"]["senses"] == ["a", "v"]
    assert described["av"]["modality"] == described["va"]["modality"] == "audiovisual"


@pytest.mark.parametrize(("compose", "words"), [
    (["av=clips,nope"], ["unknown adapter 'nope'", "clips"]),
    (["av=clips"], ["at least two hosted adapters"]),
    (["av=clips,other"], ["composed model 'av'", "has its own LM"]),
    (["clips=clips,sounds"], ["adapter name 'clips' given twice"]),
    (["av=clips,sounds", "av=sounds,clips"], ["adapter name 'av' given twice"]),
    (["av=clips,sounds", "more=av,clips"], ["'av' is itself composed"]),
    (["av=clips,clips"], ["repeat"]),
])
def test_cli_compose_errors_are_one_line(sense_folders, capsys, compose, words):
    adapters = ["--adapter", f"clips={sense_folders['clips']}", "--adapter", f"sounds={sense_folders['sounds']}",
                "--adapter", f"other={sense_folders['other-lm']}"]
    assert cli.main(["serve", *adapters, *[part for spec in compose for part in ("--compose", spec)]]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("sensorium: error: ") and all(word in error for word in words), error


def test_cli_compose_spec_is_checked_by_argparse(sense_folders, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--adapter", f"clips={sense_folders['clips']}", "--compose", "av"])
    assert exit_info.value.code == 2 and "expected NAME=A,B" in capsys.readouterr().err


def test_frames_of_a_clip_are_decoded_once_per_reading(registry, clip):
    """A video sense reads its sampled frames, an audio sense the track, an image sense the middle frame."""
    data = Path(clip).read_bytes()
    limits = ServeSettings().media_limits
    frames, sound = registry.get("av").read(data, "clip.mp4", limits)
    assert len(frames) == 4 and sound.sampling_rate == 16_000 and 0.95 < sound.seconds < 1.2
    still, heard = registry.get("seen-heard").read(data, "clip.mp4", limits)
    assert still.size == (32, 32) and np.array_equal(heard.samples, sound.samples)
