"""Evaluation metrics, computed the way the benchmarks' official tools compute them."""

from sensorium.metrics.captions import CaptionReport, score_captions, write_coco_results
from sensorium.metrics.vqa import GroupScore, VQAReport, normalize_answer, summarize, vqa_accuracy

__all__ = [
    "CaptionReport", "GroupScore", "VQAReport", "normalize_answer", "score_captions", "summarize", "vqa_accuracy",
    "write_coco_results",
]
