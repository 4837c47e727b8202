"""Media decoding: images, video frames and sound, each turned into what an encoder takes, or a BadInputError
naming the file and why it cannot be read."""

from .audio import Waveform, load_audio
from .image import load_image
from .video import load_video

__all__ = ["Waveform", "load_audio", "load_image", "load_video"]
