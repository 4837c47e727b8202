"""Command line: each verb maps to one plain function of the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .errors import BadInputError

USER_ERRORS = (BadInputError, FileNotFoundError, ValueError)


def _train(args: argparse.Namespace) -> int:
    if args.dry_run:
        from .dryrun import dry_run

        report = dry_run(args.recipe, args.overrides, num_processes=args.num_processes, out=args.out)
        print(report.format())
        return report.exit_code
    from .recipe import load_recipe
    from .train import train

    recipe = load_recipe(args.recipe, args.overrides)
    if args.out:
        recipe.out = args.out
    summary = train(recipe, resume=args.resume, skip_bad=args.skip_bad)
    print(format_summary(summary, recipe.out))
    return 0


def format_summary(summary: dict[str, Any], out: str) -> str:
    lines = [
        f"trainable parameters : {summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
        f"({100 * summary['trainable_parameters'] / summary['total_parameters']:.3f}%)",
        f"feature cache        : {summary['feature_cache_seconds']:.1f} s",
        f"training             : {summary['train_seconds']:.1f} s",
    ]
    if "accuracy" in summary:
        lines.append(f"evaluation           : {summary['eval_questions']:,} questions "
                     f"in {summary['eval_seconds']:.1f} s")
        lines.append(f"accuracy             : {summary['accuracy']:.2f}%")
        lines += [f"  {kind:<19}: {value:.2f}%" for kind, value in sorted(summary["accuracy_per_type"].items())]
        lines.append("samples:")
        lines += [f"  {s['media']}\n    Q: {s['question']}\n    A: {s['prediction']}"
                  f"   (reference: {', '.join(s['answers'])})" for s in summary["samples"]]
    lines.append(f"adapter saved to {Path(out) / 'adapter'}")
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> None:
    from .data import parse_data_spec, read_dataset
    from .evaluate import answer_all, report, write_predictions
    from .model import load
    from .recipe import TrainingOptions
    from .train import cached_features

    model = load(args.adapter)
    spec = parse_data_spec(args.data)
    if args.limit:
        spec["limit"] = args.limit
    examples, features, row_of, _ = cached_features(model, read_dataset(spec), TrainingOptions(), args.skip_bad)
    records = answer_all(model, examples, features, row_of, args.batch_size,
                         {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams})
    write_predictions(records, args.predictions)
    print(report(records).format())
    print(f"predictions written to {args.predictions}")


def _ask(args: argparse.Namespace) -> None:
    from .data import load_image
    from .model import load

    image = load_image(args.image)
    model = load(args.adapter)
    answer = model.ask([image], [args.question], max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)[0]
    print(answer)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sensorium", description="Give a frozen language model senses (eP-ALM).")
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train an adapter from a recipe")
    train.add_argument("recipe", help="recipe YAML (see recipes/)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.max_steps=100")
    train.add_argument("--out", help="output folder (overrides the recipe's)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output")
    train.add_argument("--skip-bad", action="store_true", help="skip and count unreadable files instead of stopping")
    train.add_argument("--dry-run", action="store_true",
                       help="check the recipe, models, data, batch arithmetic and memory without loading weights")
    train.add_argument("--num-processes", type=int,
                       help="processes (GPUs) to size the dry run for; default: WORLD_SIZE of the environment, or 1")
    train.set_defaults(run=_train)

    evaluate = verbs.add_parser("eval", help="evaluate an adapter on a data set")
    evaluate.add_argument("adapter", help="adapter folder")
    evaluate.add_argument("--data", required=True,
                          help="easy-vqa:test | manifest.jsonl | vqav2:questions=..,annotations=..,images=.. | "
                               "gqa:questions=..,images=..")
    evaluate.add_argument("--limit", type=int, help="a fixed seeded sample of this many questions")
    evaluate.add_argument("--predictions", default="predictions.jsonl", help="where to write predictions (JSONL)")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--skip-bad", action="store_true")
    _generation_arguments(evaluate)
    evaluate.set_defaults(run=_eval)

    ask = verbs.add_parser("ask", help="answer a question about an image")
    ask.add_argument("adapter")
    ask.add_argument("image")
    ask.add_argument("question")
    _generation_arguments(ask)
    ask.set_defaults(run=_ask)
    return parser


def _generation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--num-beams", type=int, default=1)


def _quiet_transformers() -> None:
    """Our own progress bars say what is happening; per-file weight-loading bars are noise."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_transformers()
    try:
        return args.run(args) or 0
    except USER_ERRORS as error:
        print(f"sensorium: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
