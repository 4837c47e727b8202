"""Video input: frame sampling by timestamp, bad files, video encoders, temporal aggregation, cache, CLI."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from conftest import tiny_training_recipe
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModel, TimesformerConfig, VideoMAEConfig
from transformers.models.videomae.image_processing_pil_videomae import VideoMAEImageProcessorPil

from sensorium import AdapterConfig, PerceptualLM, load
from sensorium import train as training
from sensorium.cache import FeatureCache
from sensorium.cli import main
from sensorium.encoders import FrameEncoder, HFVideoEncoder, load_encoder
from sensorium.errors import BadInputError
from sensorium.media import load_video
from sensorium.media import video as video_io
from sensorium.media.video import sample_times, upright

LEVEL = 8  # frame i is a flat grey of brightness LEVEL * i, so a decoded frame tells its index


def write_clip(path, count: int, fps: int = 10, codec: str = "libx264", size=(32, 32), pts_ms=None,
               rotation: int | None = None, pixels=None) -> str:
    """A clip whose frame i is grey level LEVEL * i (or ``pixels(i)``); ``pts_ms`` gives irregular times."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv444p" if codec == "ffv1" else "yuv420p"
        if pts_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for index in range(count):
            array = pixels(index) if pixels else np.full((height, width, 3), LEVEL * index, np.uint8)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def indices(frames: list[Image.Image]) -> list[int]:
    return [round(np.asarray(frame, dtype=np.float32).mean() / LEVEL) for frame in frames]


# ---- sampling --------------------------------------------------------------------------------------
def test_sample_times_are_segment_centres():
    assert sample_times(0.0, 8.0, 4) == [1.0, 3.0, 5.0, 7.0]
    assert sample_times(2.0, 3.0, 1) == [2.5]


def test_uniform_sampling_takes_the_frames_on_screen_at_the_centres(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 30)
    # 30 frames in 3 s; centres of 8 segments at 1.875, 5.625, 9.375, ... frame periods.
    assert indices(load_video(clip, 8)) == [1, 5, 9, 13, 16, 20, 24, 28]


def test_variable_frame_rate_is_sampled_by_time_not_by_frame_index(tmp_path):
    pts = [0, 30, 60, 90, 120, 150, 180, 210, 240, 270, 600, 1400]  # ms: a burst, then two lone frames
    clip = write_clip(tmp_path / "vfr.mp4", len(pts), pts_ms=pts)
    # Centres near 0.18, 0.55, 0.92 and 1.28 s; sampling by frame index would give [1, 4, 7, 10].
    assert indices(load_video(clip, 4)) == [6, 9, 10, 10]


def test_a_one_frame_clip_repeats_its_frame(tmp_path):
    frames = load_video(write_clip(tmp_path / "still.mp4", 1), 8)
    assert len(frames) == 8 and len({frame.tobytes() for frame in frames}) == 1


def test_a_short_clip_repeats_frames_in_time_order(tmp_path):
    assert indices(load_video(write_clip(tmp_path / "short.mp4", 3), 7)) == [0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize(("suffix", "codec"), [("mp4", "libx264"), ("webm", "libvpx-vp9"), ("avi", "mpeg4"),
                                               ("mkv", "libx264")])
def test_common_containers(tmp_path, suffix, codec):
    clip = write_clip(tmp_path / f"clip.{suffix}", 12, codec=codec)
    frames = load_video(clip, 4)
    assert indices(frames) == [1, 4, 7, 10]
    assert all(frame.mode == "RGB" and frame.size == (32, 32) for frame in frames)


def test_odd_frame_sizes_are_kept(tmp_path):
    frames = load_video(write_clip(tmp_path / "odd.mkv", 3, codec="ffv1", size=(33, 17)), 2)
    assert [frame.size for frame in frames] == [(33, 17), (33, 17)]


def red_corner(index: int) -> np.ndarray:
    """64x32 white frame with a red block in its top-left corner."""
    array = np.full((32, 64, 3), 255, np.uint8)
    array[:10, :10] = (255, 0, 0)
    return array


@pytest.mark.parametrize(("rotation", "corner"), [(0, "top-left"), (90, "bottom-left"), (-90, "top-right"),
                                                  (180, "bottom-right")])
def test_display_rotation_is_applied(tmp_path, rotation, corner):
    """The display matrix turns the stored frame counter-clockwise by its angle, as players show it."""
    [frame] = load_video(write_clip(tmp_path / "phone.mp4", 2, size=(64, 32), rotation=rotation, pixels=red_corner), 1)
    assert frame.size == ((64, 32) if rotation in (0, 180) else (32, 64))
    array = np.asarray(frame).astype(int)
    red = (array[..., 0] > 200) & (array[..., 1] < 80)
    rows, columns = np.nonzero(red)
    vertical = "top" if rows.mean() < frame.height / 2 else "bottom"
    horizontal = "left" if columns.mean() < frame.width / 2 else "right"
    assert f"{vertical}-{horizontal}" == corner


def test_a_still_image_is_a_one_frame_clip(tmp_path):
    Image.new("RGB", (40, 30), (0, 0, 255)).save(tmp_path / "blue.png")
    frames = load_video(tmp_path / "blue.png", 4)
    assert len(frames) == 4 and frames[0].size == (40, 30) and frames[3].getpixel((5, 5)) == (0, 0, 255)


def test_upright_rounds_to_quarter_turns():
    image = Image.new("RGB", (4, 2))
    assert upright(image, 89.6).size == (2, 4) and upright(image, -180).size == (4, 2)
    assert upright(image, 0) is image


def test_only_the_chosen_frames_are_converted(tmp_path, monkeypatch):
    """Streaming: however long the clip, only the sampled frames become images."""
    clip = write_clip(tmp_path / "long.mp4", 120, pixels=lambda index: np.full((32, 32, 3), index, np.uint8))
    converted = []
    monkeypatch.setattr(video_io, "upright", lambda image, rotation: converted.append(image) or image)
    assert len(load_video(clip, 4)) == 4
    assert len(converted) == 4


@pytest.mark.parametrize(("make", "reason"), [
    (lambda path: path.write_bytes(b""), "empty file"),
    (lambda path: path.write_bytes(os.urandom(4000)), "not a video file"),
    (lambda path: None, "file not found"),
])
def test_unusable_files_are_one_line_errors_naming_them(tmp_path, make, reason):
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(BadInputError, match=reason) as failure:
        load_video(path)
    message = str(failure.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_audio_only_and_truncated_files_are_reported(tmp_path):
    sound = tmp_path / "sound.m4a"
    with av.open(str(sound), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(BadInputError, match="no video stream \\(audio only\\)"):
        load_video(sound)
    whole = (tmp_path / write_clip(tmp_path / "whole.mp4", 10)).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadInputError, match=str(truncated)):
        load_video(truncated)


# ---- encoders --------------------------------------------------------------------------------------
def test_frame_encoder_keeps_each_frames_block_tokens(tiny_vit_folder, tmp_path):
    encoder = load_encoder(f"frames:{tiny_vit_folder}", num_frames=4)
    assert isinstance(encoder, FrameEncoder)
    assert (encoder.modality, encoder.num_tokens, encoder.num_blocks, encoder.dim) == ("video", 4, 4, 32)
    clips = [encoder.load(write_clip(tmp_path / f"{n}.mp4", 10 + n)) for n in range(2)]
    pixels = encoder.preprocess(clips)
    assert pixels.shape == (2, 4, 3, 32, 32)
    tokens = encoder(pixels)
    assert tokens.shape == (2, 4, 4, 32)  # [batch, blocks, frames, dim]
    image_encoder = load_encoder(tiny_vit_folder)
    for clip, clip_tokens in zip(clips, tokens, strict=True):
        torch.testing.assert_close(clip_tokens, image_encoder(image_encoder.preprocess(clip)).transpose(0, 1))


def test_encoder_names_and_frame_counts(tiny_vit_folder):
    assert load_encoder(f"frames:{tiny_vit_folder}").num_tokens == 8
    assert load_encoder(tiny_vit_folder).modality == "image"
    with pytest.raises(ValueError, match="num_frames applies to video encoders"):
        load_encoder(tiny_vit_folder, num_frames=4)
    with pytest.raises(ValueError, match="unknown encoder 'frames:nothing-here'|unknown encoder 'nothing-here'"):
        load_encoder("frames:nothing-here")


VIDEO_MODELS = {
    "timesformer": (TimesformerConfig, True),
    "videomae": (VideoMAEConfig, False),  # no [CLS]: mean over space-time positions
}


def save_video_model(kind: str, folder, processor: bool = True) -> str:
    config_class, _ = VIDEO_MODELS[kind]
    torch.manual_seed(0)
    config = config_class(image_size=32, patch_size=8, num_frames=4, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64)
    AutoModel.from_config(config).save_pretrained(folder)
    if processor:
        VideoMAEImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
            folder)
    return str(folder)


@pytest.mark.parametrize("kind", list(VIDEO_MODELS))
def test_transformers_video_models_give_one_token_per_block(kind, tmp_path):
    folder = save_video_model(kind, tmp_path / kind)
    encoder = load_encoder(folder)
    assert isinstance(encoder, HFVideoEncoder)
    assert (encoder.modality, encoder.num_frames, encoder.num_tokens, encoder.uses_cls) == (
        "video", 4, None, VIDEO_MODELS[kind][1])
    clip = write_clip(tmp_path / "clip.mp4", 9, size=(48, 40))
    pixels = encoder.preprocess([encoder.load(clip)])
    assert pixels.shape == (1, 4, 3, 32, 32)
    tokens = encoder(pixels)
    assert tokens.shape == (1, 2, 32)
    reference = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = reference(pixel_values=pixels, output_hidden_states=True).hidden_states[1:]
    expected = torch.stack([h[:, 0] if encoder.uses_cls else h.mean(dim=1) for h in hidden], dim=1)
    torch.testing.assert_close(tokens, expected)


def test_video_models_refuse_other_frame_counts_and_need_their_processor(tmp_path):
    folder = save_video_model("timesformer", tmp_path / "timesformer")
    with pytest.raises(ValueError, match="built for 4 frames"):
        load_encoder(folder, num_frames=8)
    bare = save_video_model("videomae", tmp_path / "bare", processor=False)
    with pytest.raises(ValueError, match="preprocessor_config.json"):
        load_encoder(bare)


# ---- model: temporal aggregation -------------------------------------------------------------------
def video_config(tiny_lm_folder, tiny_vit_folder, temporal: str, **overrides) -> AdapterConfig:
    return AdapterConfig(lm=tiny_lm_folder("llama"), encoder=f"frames:{tiny_vit_folder}", num_frames=3,
                         temporal=temporal, num_blocks=2, inject_layers=[2, 3], **overrides)


def test_mean_aggregation_gives_an_images_tokens(tiny_lm_folder, tiny_vit_folder):
    model = PerceptualLM(video_config(tiny_lm_folder, tiny_vit_folder, "mean"))
    features = torch.randn(2, 4, 3, 32)  # [batch, blocks, frames, dim]
    tokens = model.map_features(features)
    assert tokens.shape == (2, 2, 32) and model.slot_count == 1
    layout = model.layout
    torch.testing.assert_close(tokens, model.connector(features[:, layout.blocks].mean(dim=2))[:, layout.layer_tokens])
    assert "connector.frame_position" not in model.adapter_state()


def test_frames_aggregation_keeps_the_order(tiny_lm_folder, tiny_vit_folder):
    model = PerceptualLM(video_config(tiny_lm_folder, tiny_vit_folder, "frames"))
    assert model.slot_count == 3 and model.prefix_length == model.slot_index + 3
    with torch.no_grad():
        model.connector.frame_position.normal_()
    features = torch.randn(2, 4, 3, 32)
    tokens = model.map_features(features)
    assert tokens.shape == (2, 2, 3, 32)  # [batch, layers, frames, width]
    reversed_tokens = model.map_features(features.flip(2))
    assert not torch.allclose(reversed_tokens, tokens.flip(2)), "frame positions should make order matter"
    with pytest.raises(ValueError, match="3 frame tokens"):
        model.map_features(features.mean(dim=2))


def test_change_aggregation_gives_the_mean_and_the_change_over_the_clip(tiny_lm_folder, tiny_vit_folder):
    model = PerceptualLM(video_config(tiny_lm_folder, tiny_vit_folder, "change"))
    assert model.slot_count == 2 and model.connector.frame_position.shape == (2, 32)
    with torch.no_grad():
        model.connector.frame_position.normal_()
    features = torch.randn(2, 4, 3, 32)
    tokens = model.map_features(features)
    assert tokens.shape == (2, 2, 2, 32)  # [batch, layers, mean and change, width]
    chosen = features[:, model.layout.blocks]
    expected = torch.stack([chosen.mean(dim=2), chosen[:, :, 2] - chosen[:, :, 0]], dim=2)
    torch.testing.assert_close(tokens, model.connector(expected))
    reversed_tokens = model.map_features(features.flip(2))  # same mean, the opposite change
    torch.testing.assert_close(reversed_tokens[:, :, 0], tokens[:, :, 0])
    assert not torch.allclose(reversed_tokens[:, :, 1], tokens[:, :, 1])


def test_adapters_saved_before_video_load_as_they_were(tiny_lm_folder, tiny_vit_folder, tmp_path):
    """An adapter_config.json without the video settings rebuilds the same one-column model."""
    model = PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, num_blocks=2,
                                       inject_layers=[2, 3])).eval()
    model.save_pretrained(tmp_path / "adapter")
    config_file = tmp_path / "adapter" / "adapter_config.json"
    values = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({k: v for k, v in values.items() if k not in ("num_frames", "temporal")}))
    restored = load(tmp_path / "adapter")
    assert (restored.slot_count, restored.prefix_length) == (1, model.prefix_length)
    assert set(restored.adapter_state()) == {"prompt", "slot_embedding", "connector.linear.weight",
                                             "connector.linear.bias"}
    features = torch.randn(2, 4, 32)
    questions = ["what is the shape ?", "color ?"]
    assert restored.generate(features, questions, max_new_tokens=4) == model.generate(features, questions,
                                                                                         max_new_tokens=4)


def test_frames_aggregation_needs_per_frame_tokens(tiny_lm_folder, tiny_vit_folder):
    with pytest.raises(ValueError, match="one token per frame"):
        PerceptualLM(AdapterConfig(lm=tiny_lm_folder("llama"), encoder=tiny_vit_folder, temporal="frames",
                                   num_blocks=2, inject_layers=[2, 3]))
    with pytest.raises(ValueError, match="unknown temporal aggregation"):
        AdapterConfig(temporal="max")


# ---- cache, training, command line -----------------------------------------------------------------
def test_feature_cache_keeps_frames_and_is_keyed_by_the_frame_count(tiny_vit_folder, tmp_path):
    clips = [write_clip(tmp_path / f"{n}.mp4", 6 + n) for n in range(2)]
    four = FeatureCache(load_encoder(f"frames:{tiny_vit_folder}", num_frames=4), root=tmp_path / "cache")
    eight = FeatureCache(load_encoder(f"frames:{tiny_vit_folder}", num_frames=8), root=tmp_path / "cache")
    assert four.folder != eight.folder
    features, rows, errors = four.features(clips, workers=0)
    assert features.shape == (2, 4, 4, 32) and sorted(rows) == sorted(clips) and not errors
    encoder = four.encoder
    torch.testing.assert_close(features[rows[clips[1]]], encoder(encoder.preprocess([encoder.load(clips[1])]))[0])


@pytest.fixture
def clip_manifest(tmp_path):
    """Clips of a shape moving left or right, asked which way it moves."""
    lines = []
    for name, step in (("left", -6), ("right", 6)):
        def square(index, step=step):
            array = np.full((32, 32, 3), 230, np.uint8)
            x = 13 + step * (index - 1)
            array[12:20, x:x + 6] = (255, 0, 0)
            return array

        write_clip(tmp_path / f"{name}.mp4", 3, pixels=square)
        lines.append({"media": f"{name}.mp4", "question": "what is the shape ?", "answers": [name]})
    path = tmp_path / "clips.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_training_with_frames_saves_an_order_aware_adapter(tiny_lm_folder, tiny_vit_folder, clip_manifest, tmp_path):
    model = {"lm": tiny_lm_folder("llama"), "encoder": f"frames:{tiny_vit_folder}", "num_frames": 3,
             "temporal": "frames", "num_blocks": 2, "inject_layers": [2, 3]}
    recipe = tiny_training_recipe(model, clip_manifest, tmp_path / "run", max_new_tokens=3)
    summary = training.train(recipe)
    assert summary["eval_questions"] == 2
    adapter = tmp_path / "run" / "adapter"
    weights = load_file(adapter / "adapter.safetensors")
    assert weights["connector.frame_position"].shape == (3, 32)
    assert weights["connector.frame_position"].abs().sum() > 0, "the frame positions did not train"
    restored = load(adapter)
    clip = str(clip_manifest.parent / "left.mp4")
    assert restored.ask([clip], ["what is the shape ?"], max_new_tokens=3) == \
        restored.generate(restored.encode([clip]), ["what is the shape ?"], max_new_tokens=3)


@pytest.fixture(scope="module")
def video_adapter(tiny_lm_folder, tiny_vit_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("video-adapter")
    config = AdapterConfig(lm=tiny_lm_folder("llama"), encoder=f"frames:{tiny_vit_folder}", num_frames=4,
                           temporal="frames", num_blocks=2, inject_layers=[2, 3])
    PerceptualLM(config).save_pretrained(folder)
    return str(folder)


def test_ask_about_a_clip_on_the_command_line(video_adapter, tmp_path, capsys):
    clip = write_clip(tmp_path / "clip.mp4", 20)
    assert main(["ask", video_adapter, clip, "which way does the red circle move?", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()


def test_ask_about_a_broken_clip_names_it(video_adapter, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(3000))
    assert main(["ask", video_adapter, str(bad), "which way?"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sensorium: error: ") and str(bad) in err and "\n" not in err


def test_caption_clips_in_batches_on_the_command_line(tiny_lm_folder, tiny_vit_folder, tmp_path, capsys):
    adapter = tmp_path / "captioner"
    PerceptualLM(video_config(tiny_lm_folder, tiny_vit_folder, "mean", task="caption")).save_pretrained(adapter)
    clips = [write_clip(tmp_path / f"{n}.mp4", 5 + n) for n in range(3)]
    assert main(["caption", str(adapter), *clips, "--batch-size", "2", "--max-new-tokens", "3",
                 "--num-beams", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == clips
