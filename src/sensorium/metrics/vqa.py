"""VQA accuracy exactly as the official VQA v2 evaluation scores it.

Numbers are only comparable with published eP-ALM (and other VQA) results when answers are normalised
and scored by the same rules as the official ``vqaEval.py``, quirks included, so the tables below are
the official data and the functions reproduce its behaviour.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Kept verbatim from the official table. The capitalised keys ("Im", "Ive", ...) can never match because
# words are lower-cased first, and "somebody'd" maps to "somebodyd"; both are official behaviour.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# Apostrophes, colons and periods are deliberately absent: the official list keeps them.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip

# A comma between two digits means a number like "1,000" that must collapse to "1000".
_NUMBER_COMMA = re.compile(r"\d,\d")
# The official pattern's look-behind is malformed and never fires, so a period is dropped whenever no
# digit follows it: "yes." -> "yes" and "3." -> "3", while "3.5" survives.
_PERIOD = re.compile(r"\.(?!\d)")

# Humans needed to agree with a prediction for it to count as fully correct.
_AGREEMENT = 3


def normalize_answer(text: str) -> str:
    """Map an answer to the canonical form under which the official evaluation compares answers."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _canonical_words(_strip_punctuation(text))


def _strip_punctuation(text: str) -> str:
    """Delete or blank out punctuation with the official rule.

    A mark is deleted when it touches a space somewhere in the text ("red, white") or when the text holds
    a digit-comma-digit number; otherwise it becomes a space so glued words split ("black/white").
    """
    has_number_comma = _NUMBER_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        spaced = f"{mark} " in text or f" {mark}" in text
        out = out.replace(mark, "" if spaced or has_number_comma else " ")
    return _PERIOD.sub("", out)


def _canonical_words(text: str) -> str:
    """Lower-case, turn number words into digits, drop articles and restore contraction apostrophes."""
    words = (NUMBER_WORDS.get(word, word) for word in text.lower().split())
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Score one prediction against its human answers, in [0, 1].

    With several answers this is the official rule: average, over every way of leaving one human out,
    of ``min(matches / 3, 1)``, so agreeing with 3 of 10 humans scores 0.9 and with 4 scores 1.0. A
    single reference (easy-vqa, GQA) has no one to leave out, so it is scored by exact match.
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer")
    target = normalize_answer(prediction)
    hits = [normalize_answer(answer) == target for answer in answers]
    if len(hits) == 1:
        return float(hits[0])
    matches = sum(hits)
    return sum(min((matches - hit) / _AGREEMENT, 1.0) for hit in hits) / len(hits)


@dataclass(frozen=True)
class GroupScore:
    """Accuracy of a group of questions, in percent, with the number of questions behind it."""

    n: int
    accuracy: float


@dataclass(frozen=True)
class VQAReport:
    """Overall and per-answer-type accuracy, the breakdown VQA results are reported with."""

    overall: GroupScore
    per_type: dict[str, GroupScore]

    def format(self) -> str:
        """Render an aligned table: overall first, then answer types by name."""
        rows = [("overall", self.overall), *sorted(self.per_type.items())]
        name_width = max(len("answer type"), *(len(name) for name, _ in rows))
        count_width = max(len("n"), *(len(str(score.n)) for _, score in rows))
        lines = [f"{'answer type':<{name_width}}  {'n':>{count_width}}  accuracy"]
        lines += [
            f"{name:<{name_width}}  {score.n:>{count_width}}  {score.accuracy:8.1f}" for name, score in rows
        ]
        return "\n".join(lines)


def summarize(records: Iterable[Mapping[str, Any]]) -> VQAReport:
    """Aggregate per-question records (keys ``accuracy`` in [0, 1] and ``answer_type``) into a report."""
    by_type: dict[str, list[float]] = defaultdict(list)
    for record in records:
        by_type[record["answer_type"]].append(float(record["accuracy"]))
    if not by_type:
        raise ValueError("summarize needs at least one record")
    overall = [accuracy for accuracies in by_type.values() for accuracy in accuracies]
    return VQAReport(
        overall=_group_score(overall),
        per_type={answer_type: _group_score(scores) for answer_type, scores in by_type.items()},
    )


def _group_score(accuracies: list[float]) -> GroupScore:
    """Average per-question accuracies and express them in percent, as VQA tables do."""
    return GroupScore(n=len(accuracies), accuracy=100.0 * sum(accuracies) / len(accuracies))
