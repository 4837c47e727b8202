"""Evaluation metrics, computed the way the benchmarks' official tools compute them."""

from sensorium.metrics.vqa import GroupScore, VQAReport, normalize_answer, summarize, vqa_accuracy

__all__ = ["GroupScore", "VQAReport", "normalize_answer", "summarize", "vqa_accuracy"]
