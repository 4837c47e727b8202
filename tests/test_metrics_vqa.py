"""The VQA metric must agree with the official evaluation, or reported numbers are not comparable."""

from __future__ import annotations

import pytest

from sensorium.metrics import GroupScore, VQAReport, normalize_answer, summarize, vqa_accuracy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("a dog", "dog"),
        ("The Two Dogs", "2 dogs"),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("isnt", "isn't"),
        ("whats", "what's"),
        ("it's", "it's"),
        ("1,000", "1000"),
        ("yes.", "yes"),
        ("3.5", "3.5"),
        ("  Red  ", "red"),
        ("line\nbreak\ttab", "line break tab"),
        ("red, white", "red white"),
        ("black/white", "black white"),
        ("yes!", "yes"),
        ("(a) cat", "cat"),
        ("10:30", "10:30"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_ten_humans_leave_one_out(matches: int, expected: float) -> None:
    answers = ["cat"] * matches + ["dog"] * (10 - matches)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected)


def test_prediction_and_answers_are_normalised_before_matching() -> None:
    answers = ["2", "two", "Two.", "3", "3", "3", "3", "3", "3", "3"]
    assert vqa_accuracy("the two", answers) == pytest.approx(0.9)


def test_other_answer_counts_use_the_same_rule() -> None:
    # Leaving out one of the 2 matches leaves 1 (1/3) twice; leaving out a miss leaves 2 (2/3) three times.
    assert vqa_accuracy("cat", ["cat", "cat", "dog", "dog", "dog"]) == pytest.approx(8 / 15)


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [("circle", "circle", 1.0), ("The Circle.", "circle", 1.0), ("square", "circle", 0.0)],
)
def test_single_reference_is_exact_match(prediction: str, answer: str, expected: float) -> None:
    assert vqa_accuracy(prediction, [answer]) == expected


def test_no_reference_is_an_error() -> None:
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


RECORDS = [
    {"accuracy": 1.0, "answer_type": "yes/no"},
    {"accuracy": 0.0, "answer_type": "yes/no"},
    {"accuracy": 0.9, "answer_type": "number"},
    {"accuracy": 0.3, "answer_type": "other"},
    {"accuracy": 0.6, "answer_type": "other"},
    {"accuracy": 1.0, "answer_type": "other"},
]


def test_summarize_per_answer_type() -> None:
    report = summarize(RECORDS)
    assert report.overall.n == 6
    assert report.overall.accuracy == pytest.approx(100 * 3.8 / 6)
    assert report.per_type["yes/no"] == GroupScore(n=2, accuracy=50.0)
    assert report.per_type["number"].accuracy == pytest.approx(90.0)
    assert report.per_type["other"].n == 3
    assert report.per_type["other"].accuracy == pytest.approx(100 * 1.9 / 3)


def test_summarize_rejects_no_records() -> None:
    with pytest.raises(ValueError):
        summarize([])


def test_format_lists_overall_then_types_by_name() -> None:
    report = VQAReport(
        overall=GroupScore(n=12, accuracy=62.5),
        per_type={"shape": GroupScore(n=4, accuracy=75.0), "color": GroupScore(n=8, accuracy=56.24)},
    )
    assert report.format().splitlines() == [
        "answer type   n  accuracy",
        "overall      12      62.5",
        "color         8      56.2",
        "shape         4      75.0",
    ]
