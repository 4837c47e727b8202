"""Caption metrics as the COCO caption evaluation (pycocoevalcap) computes them.

BLEU-1..4, ROUGE-L and CIDEr are pure Python. METEOR and the PTB tokeniser that the official evaluation
runs first are Java jars shipped inside pycocoevalcap, used whenever ``java`` is on the PATH. Without Java,
METEOR is reported unavailable and captions are tokenised by a simple rule instead (lower-case, punctuation
replaced by spaces, split on whitespace); the report names the tokeniser, since numbers from the two are
close but not identical. SPICE needs Stanford CoreNLP models that pycocoevalcap downloads on first use, so
it is reported unavailable rather than run.

Scores use the 0-100 scale of caption papers (CIDEr 111.6, BLEU-4 33.4). Names are the official
evaluation's keys, so tables line up with its output.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

# The official evaluation's metric keys, in the order its tables list them.
METRICS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
TOKENIZERS: dict[str, str] = {
    "ptb": "Stanford PTB tokenizer, as the official evaluation",
    "simple": "no Java: lower-cased, punctuation removed, split on whitespace",
}
SPICE_UNAVAILABLE = "needs Stanford CoreNLP models that pycocoevalcap downloads on first use; not run offline"
_PUNCTUATION = re.compile(r"[^\w\s]")


@dataclass(frozen=True)
class CaptionReport:
    """Corpus scores (0-100) over ``count`` images, the metrics that could not run and why, and the tokenizer."""

    scores: dict[str, float]
    unavailable: dict[str, str]
    count: int
    tokenizer: str

    def format(self) -> str:
        """Render an aligned table in the official metric order, unavailable metrics with their reason."""
        names = [name for name in METRICS if name in self.scores or name in self.unavailable]
        width = max(len("metric"), *(len(name) for name in names))
        lines = [f"{'metric':<{width}}  {'score':>6}"]
        for name in names:
            if name in self.scores:
                lines.append(f"{name:<{width}}  {self.scores[name]:6.1f}")
            else:
                lines.append(f"{name:<{width}}  {'n/a':>6}  {self.unavailable[name]}")
        lines.append(f"{self.count} images; tokenizer: {self.tokenizer} ({TOKENIZERS[self.tokenizer]})")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def simple_tokenize(caption: str) -> str:
    """The tokenization used without Java: close to PTB's output once its punctuation tokens are dropped."""
    return " ".join(_PUNCTUATION.sub(" ", caption.lower()).split())


def _tokenize(captions: dict[str, list[str]], tokenizer: str) -> dict[str, list[str]]:
    if tokenizer == "simple":
        return {key: [simple_tokenize(caption) for caption in values] for key, values in captions.items()}
    # The jar reads one caption per line: any line break inside a caption would shift every later one.
    return PTBTokenizer().tokenize(
        {key: [{"caption": " ".join(caption.split())} for caption in values] for key, values in captions.items()}
    )


def _meteor(references: dict[str, list[str]], predictions: dict[str, list[str]]) -> float:
    """Corpus METEOR from the official jar; a RuntimeError with Java's last words if the jar cannot score."""
    meteor = Meteor()
    try:
        score, _ = meteor.compute_score(references, predictions)
    except (ValueError, OSError) as error:
        meteor.meteor_p.kill()
        # Words still buffered for the dead jar: closing here, not in the wrapper's finaliser, keeps the broken
        # pipe out of garbage collection (a closed file closes again quietly).
        with contextlib.suppress(BrokenPipeError):
            meteor.meteor_p.stdin.close()
        java_said = meteor.meteor_p.stderr.read().decode(errors="replace").strip().splitlines()
        # The wrapper keeps its lock when the jar fails, and its finaliser would wait on that lock forever.
        meteor.lock.release()
        raise RuntimeError(java_said[-1] if java_said else str(error)) from error
    return float(score)


def score_captions(predictions: dict[str, str], references: dict[str, list[str]]) -> CaptionReport:
    """Score one predicted caption per image against that image's reference captions.

    The images scored are those in ``predictions``, each of which needs references; references of images
    without a prediction are ignored, as when the official evaluation is limited to the result's images.
    """
    if not predictions:
        raise ValueError("score_captions needs at least one prediction")
    unreferenced = [key for key in predictions if not references.get(key)]
    if unreferenced:
        raise ValueError(f"no reference captions for image id(s) {', '.join(unreferenced[:5])}")
    has_java = shutil.which("java") is not None
    tokenizer = "ptb" if has_java else "simple"
    gts = _tokenize({key: references[key] for key in predictions}, tokenizer)
    res = _tokenize({key: [caption] for key, caption in predictions.items()}, tokenizer)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = dict(zip(METRICS[:4], bleu, strict=True))
    scores["ROUGE_L"], _ = Rouge().compute_score(gts, res)
    scores["CIDEr"], _ = Cider().compute_score(gts, res)
    unavailable = {"SPICE": SPICE_UNAVAILABLE}
    if has_java:
        try:
            scores["METEOR"] = _meteor(gts, res)
        except RuntimeError as error:
            unavailable["METEOR"] = f"the METEOR jar failed under Java ({error})"
    else:
        unavailable["METEOR"] = "needs Java (no 'java' on the PATH)"
    return CaptionReport(
        scores={name: 100.0 * float(scores[name]) for name in METRICS if name in scores},
        unavailable={name: unavailable[name] for name in METRICS if name in unavailable},
        count=len(predictions), tokenizer=tokenizer,
    )


def write_coco_results(records: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Write evaluation records (``question_id`` = image id, ``prediction``) in the COCO results format.

    ``[{"image_id": 42, "caption": "..."}]`` is what the official tools and evaluation servers read; they
    index images by integer id, so a numeric id is written as an int.
    """
    results, seen = [], set()
    for record in records:
        image_id = str(record["question_id"])
        if image_id in seen:
            raise ValueError(f"more than one caption for image id {image_id}; COCO results hold one per image")
        seen.add(image_id)
        results.append({"image_id": int(image_id) if image_id.isascii() and image_id.isdigit() else image_id,
                        "caption": record["prediction"]})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
