"""Command line: each verb maps to one plain function of the library."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

from .config import SELECT_RULES, WEIGHT_FORMATS
from .data import data_spec_forms
from .errors import BadInputError
from .outputs import adapter_files, check_outputs, data_files
from .schema import bounded_flag

USER_ERRORS = (BadInputError, FileNotFoundError, ValueError)
SELECT_WORDS = {"likelihood": "the surest kept", "route": "the sense its question resembles answers",
                "route+likelihood": "the surest kept, weighed by how much its question resembles its sense's"}


def _train(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    if args.dry_run:
        from .dryrun import dry_run

        report = dry_run(args.recipe, args.overrides, num_processes=args.num_processes, out=args.out)
        print(report.format())
        return report.exit_code
    from .recipe import load_recipe
    from .train import RUN_FILES, train

    recipe = load_recipe(args.recipe, args.overrides)
    if args.out:
        recipe.out = args.out
    check_outputs([Path(recipe.out) / name for name in RUN_FILES],
                  [args.recipe, *data_files([spec for part in recipe.data.values()
                                             for spec in (part if isinstance(part, list) else [part])])])
    summary = train(recipe, resume=args.resume, skip_bad=args.skip_bad, restart=args.restart)
    if PartialState().is_main_process:  # once, not once per process
        print(format_summary(summary, recipe.out))
    return 0


def format_summary(summary: dict[str, Any], out: str) -> str:
    from .trained import ADAPTER_FOLDER

    lines = [
        f"trainable parameters : {summary['trainable_parameters']:,} of {summary['total_parameters']:,} "
        f"({100 * summary['trainable_parameters'] / summary['total_parameters']:.3f}%)",
        f"feature cache        : {summary['feature_cache_seconds']:.1f} s",
        f"training             : {summary['train_seconds']:.1f} s",
    ]
    if "eval_seconds" in summary:
        lines.append(f"evaluation           : {summary['eval_questions']:,} examples "
                     f"in {summary['eval_seconds']:.1f} s")
    if "accuracy" in summary:
        lines.append(f"accuracy             : {summary['accuracy']:.2f}%")
        lines += [f"  {question_type:<19}: {value:.2f}%"
                  for question_type, value in sorted(summary["accuracy_per_type"].items())]
    lines += [f"{name:<21}: {value:.2f}" for name, value in summary.get("caption_scores", {}).items()]
    if "samples" in summary:
        lines.append("samples:")
        lines += [f"  {s['media']}\n    Q: {s['question']}\n    A: {s['prediction']}"
                  f"   (reference: {', '.join(s['answers'])})" for s in summary["samples"]]
    lines.append(f"adapter saved to {Path(out) / ADAPTER_FOLDER}")
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> None:
    from .data import parse_data_spec
    from .evaluate import has_references, predict_all, predictions_name, report, scoring_task, write_predictions
    from .recipe import TrainingOptions
    from .train import cached_features, task_examples
    from .trained import recorded_recipe

    model = _load_model(args)
    spec = parse_data_spec(args.data)
    if args.limit:
        spec["limit"] = args.limit
    # A blind baseline is scored as it was trained: without the visual input; a text oracle with the truth as text.
    trained = recorded_recipe(model.config, Path(args.adapter)).training
    options = TrainingOptions(blind=trained.blind, oracle=trained.oracle)
    examples, features, row_of, _ = cached_features(model, task_examples(spec, options), options, args.skip_bad)
    task = scoring_task(model.config, examples)
    predictions = args.predictions or predictions_name(task)
    check_outputs([predictions], [*adapter_files(args.adapter), *data_files(spec)], "--predictions")
    records = predict_all(model, examples, features, row_of, args.batch_size, _generation_options(args))
    write_predictions(task, records, predictions)
    print(report(task, records).format() if has_references(records) else
          f"{args.data}: no references to score against (predictions only)")
    print(f"predictions written to {predictions}")


def _ask(args: argparse.Namespace) -> None:
    if args.adapter:  # --adapter A --adapter B MEDIA... QUESTION: the adapters composed, one sense each
        media, question = args.inputs[:-1], args.inputs[-1]
    else:  # ADAPTER MEDIA... QUESTION
        args.adapter, media, question = args.inputs[0], args.inputs[1:-1], args.inputs[-1]
    if not media:
        raise BadInputError("ask needs a media file before the question")
    from .compose import ComposedLM

    model = _load_model(args)
    if len(media) > 1 and not isinstance(model, ComposedLM):
        raise BadInputError(f"{len(media)} media files for one adapter: compose adapters (--adapter A --adapter B) "
                            "to read one file per sense")
    print(model.ask([media[0] if len(media) == 1 else tuple(media)], [question], **_generation_options(args))[0])


def _compose(args: argparse.Namespace) -> None:
    import torch

    from .compose import COMPOSITION_NAME, DEFAULT_RULE, Tuning, compose, sense_names, tune
    from .data import parse_data_spec, read_dataset
    from .recipe import TrainingOptions
    from .train import cached_features

    if args.fresh and not args.tune:
        raise BadInputError("--fresh starts every sense untrained: give --tune DATA to train them")
    mode = args.mode or ("prefix" if args.tune else "select")
    if args.tune and mode != "prefix":
        raise BadInputError("--tune trains the senses as one sequence: it needs --mode prefix, not select")
    if args.rule is not None and mode != "select":
        raise BadInputError(f"--rule {args.rule} chooses among the senses' answers: it needs --mode select")
    tuning_data = parse_data_spec(args.tune) if args.tune else None
    out = Path(args.out)
    check_outputs([out / COMPOSITION_NAME, *(file for name in args.names or sense_names(args.adapters)
                                             for file in adapter_files(out / name))],
                  [*(file for folder in args.adapters for file in adapter_files(folder)),
                   *(data_files(tuning_data) if tuning_data else [])])
    torch.manual_seed(args.seed)  # fresh connectors start from the seed's draw
    model = compose(args.adapters, args.names, weights=args.dtype, fresh=args.fresh, mode=mode,
                    positions=args.positions, rule=args.rule)
    reads = f"each answers alone, {SELECT_WORDS[model.composition.rule]}" if model.selects else \
        f"{model.prefix_length} prefix columns"
    print(f"composed {', '.join(model.names)} over {model.config.lm} ({mode}): {reads}, "
          f"{model.parameter_counts()[0]:,} trainable parameters")
    if model.selects and args.rule is None and model.composition.rule != DEFAULT_RULE:
        print(f"rule likelihood, not {DEFAULT_RULE}: sense(s) {model.unrecorded} record no training questions "
              "(`sensorium questions ADAPTER --data DATA` records them)")
    if args.tune:
        examples, features, row_of, _ = cached_features(model, read_dataset(tuning_data),
                                                        TrainingOptions(), args.skip_bad)
        started = time.perf_counter()
        tuning = Tuning(args.steps, args.batch_size, args.lr, args.prompt_lr, min(args.warmup_steps, args.steps),
                        args.seed)
        losses = tune(model, examples, features, row_of, tuning)
        print(f"tuned {args.steps} steps on {len(examples):,} examples in {time.perf_counter() - started:.1f} s: "
              f"loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f} (mean of the last 10)")
    model.save_pretrained(args.out)
    print(f"composed model saved to {args.out}")


def _questions(args: argparse.Namespace) -> None:
    from .config import QUESTIONS_NAME, AdapterConfig
    from .data import parse_data_spec
    from .lm import load_lm
    from .recipe import TrainingOptions
    from .routing import question_stats
    from .train import task_examples
    from .trained import adapter_folder, recorded_recipe

    folder = adapter_folder(args.adapter)
    config = AdapterConfig.load(folder)
    recipe = recorded_recipe(config, folder)  # checked; the defaults where train recorded none
    trained_on = recipe.data.get("train") if "data" in config.training else None
    if args.data is None and trained_on is None:
        raise BadInputError(f"{folder}: records no training data (an adapter saved outside train): give --data")
    spec = parse_data_spec(args.data) if args.data else trained_on
    check_outputs([folder / QUESTIONS_NAME], data_files(spec))
    questions = [e.question for e in task_examples(spec, TrainingOptions()) if e.answers]
    lm, tokenizer = load_lm(config.lm)
    stats = question_stats(lm, tokenizer, questions, recipe.training.seed)
    stats.save(folder)
    print(f"recorded {stats.count:,} of {len(questions):,} questions (spread {stats.spread:.3g}) in "
          f"{folder / QUESTIONS_NAME}")


def _caption(args: argparse.Namespace) -> None:
    model = _load_model(args)
    for start in range(0, len(args.media), args.batch_size):
        paths = args.media[start:start + args.batch_size]
        for path, caption in zip(paths, model.caption(paths, **_generation_options(args)), strict=True):
            print(caption_line(path, caption, with_path=len(args.media) > 1))


def caption_line(path: str, caption: str, with_path: bool) -> str:
    """One line per media file, always: a caption's own line breaks and tabs become spaces, so the output
    stays one record per line and ``path<TAB>caption`` splits at the one tab."""
    flat = " ".join(caption.split())
    return f"{path}\t{flat}" if with_path else flat


def _compare(args: argparse.Namespace) -> int:
    from .compare import dry_run, load_comparison, only, run, smoke

    comparison = load_comparison(args.config)
    if args.methods:
        comparison = only(comparison, args.methods.split(","))
    if args.out:
        comparison.out = Path(args.out)
    if args.dry_run:
        code, text = dry_run(comparison)
        print(text)
        return code
    if args.smoke:
        comparison = smoke(comparison, Path(args.out or f"{comparison.out}-smoke"))
    run(comparison, jobs=args.jobs)
    return 0


def _merge(args: argparse.Namespace) -> None:
    from .merge import merge, save
    from .trained import read_ingredient

    check_outputs(adapter_files(args.out), _ingredient_files(args.adapters))
    soup = merge([read_ingredient(path) for path in args.adapters], args.weights)
    weights = ", ".join(f"{w:.3f}" for w in soup.config.merged_from["weights"])
    print(f"merged {len(args.adapters)} adapters (weights {weights}) into {save(soup, args.out)}")


def _soup(args: argparse.Namespace) -> None:
    from .data import parse_data_spec
    from .merge import HeldOutScorer, greedy_soup, merge, save
    from .trained import read_ingredient

    data = parse_data_spec(args.data)
    check_outputs(adapter_files(args.out), [*_ingredient_files(args.adapters), *data_files(data)])
    ingredients = [read_ingredient(path) for path in args.adapters]
    merge(ingredients)  # refuses mismatched layouts before any evaluation
    scorer = HeldOutScorer(ingredients[0], data, args.batch_size)
    if args.greedy:
        chosen, held_out, _ = greedy_soup(ingredients, scorer)
    else:
        chosen = ingredients
        held_out = scorer(merge(chosen).state)
    soup = merge(chosen) if len(chosen) > 1 else chosen[0]
    save(soup, args.out, scorer.model.lm, scorer.model.tokenizer, scorer.model.encoder)
    kind = "greedy" if args.greedy else "uniform"
    print(f"{kind} soup of {len(chosen)} of {len(ingredients)} adapters: held-out score {held_out:.2f}; "
          f"saved to {args.out}")


def _interpolate(args: argparse.Namespace) -> None:
    import json

    from .data import parse_data_spec
    from .evaluate import headline_name
    from .merge import interpolation_table, plot_interpolation
    from .trained import read_ingredient

    out, data = Path(args.out), [parse_data_spec(args.first_data), parse_data_spec(args.second_data)]
    check_outputs([out / "interpolation.json", out / "interpolation.png"],
                  [*_ingredient_files([args.first, args.second]), *data_files(data)])
    first, second = read_ingredient(args.first), read_ingredient(args.second)
    rows = interpolation_table(first, second, *data, args.steps, args.batch_size)
    labels = tuple(f"{headline_name(i.config.task)} ({i.config.task}, {i.folder})" for i in (first, second))
    out.mkdir(parents=True, exist_ok=True)
    (out / "interpolation.json").write_text(json.dumps({"first": str(first.folder), "second": str(second.folder),
                                                        "labels": labels, "rows": rows}, indent=2) + "\n")
    plot_interpolation(rows, labels, out / "interpolation.png")
    print(f"| a | {labels[0]} | {labels[1]} |\n|---|---|---|")
    for row in rows:
        print(f"| {row['alpha']:.1f} | {row['first']:.2f} | {row['second']:.2f} |")
    print(f"table and plot written to {out}")


def _import_epalm(args: argparse.Namespace) -> None:
    from .import_epalm import import_epalm

    model = import_epalm(args.checkpoint, args.config, args.out, args.lm, args.encoder, args.task)
    config = model.config
    layers = model.layout.layers
    print(f"imported {args.checkpoint} into {args.out}: layout paper, task {config.task}, "
          f"{model.parameter_counts()[0]:,} trained parameters over {config.lm} and {config.encoder}, "
          f"{config.num_blocks} encoder blocks into LM layers {layers[0]}..{layers[-1]}")


def _ingredient_files(paths: list[str]) -> list[Path]:
    """The files of the adapters a merge reads (each an adapter folder or a training run's)."""
    from .trained import adapter_folder

    return [file for path in paths for file in adapter_files(adapter_folder(path))]


def _models(args: argparse.Namespace) -> None:
    from . import zoo

    rows = zoo.listing()
    width = max(len(row["name"]) for row in rows)
    print(f"{'name':<{width}}  {'kind':<13}  {'size':>8}  {'installed':<9}  {'converted':<9}  packages")
    for row in rows:
        kind = f"{row['modality']} encoder" if row["modality"] else row["kind"]  # "lm", "image encoder", ...
        size = f"{row['bytes'] / 2**20:,.0f} MB" if row["bytes"] else "?"
        packages = row["packages"][0] if len(row["packages"]) == 1 else \
            f"{row['packages'][0]} ... {row['packages'][-1]} ({len(row['packages'])} parts)"
        print(f"{row['name']:<{width}}  {kind:<13}  {size:>8}  {'yes' if row['installed'] else 'no':<9}  "
              f"{'yes' if row['converted'] else 'no':<9}  {packages}")
    print(f"converted copies live in {zoo.cache_dir() / 'models'}; `make models` installs the optional LMs")


def _serve(args: argparse.Namespace) -> None:
    from .serve.app import serve
    from .serve.settings import ServeSettings

    settings = ServeSettings(
        max_batch_size=1 if args.no_batching else args.max_batch_size, max_wait_ms=args.max_wait_ms,
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_question_chars=args.max_question_chars,
        max_new_tokens=args.max_new_tokens, max_beams=args.max_beams, request_timeout_s=args.request_timeout,
        compile_backend="inductor" if args.compile else None)
    names = [name for name, _ in args.adapter] + [name for name, _ in args.compose or []]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:  # before any model is loaded
        raise ValueError(f"adapter name '{twice}' given twice")
    serve(args.adapter, args.host, args.port, settings, args.device, args.compose or [], args.dtype)


def weight_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None


def adapter_spec(text: str) -> tuple[str, str]:
    """NAME=DIR of ``serve --adapter``."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"'{text}': expected NAME=DIR")
    return name, folder


def compose_spec(text: str) -> tuple[str, list[str]]:
    """NAME=A,B of ``serve --compose``."""
    name, sep, senses = text.partition("=")
    parts = [part.strip() for part in senses.split(",")]
    if not sep or not name or not all(parts):
        raise argparse.ArgumentTypeError(f"'{text}': expected NAME=A,B (names of adapters given by --adapter)")
    return name, parts


class MakeCommand(NamedTuple):
    """``sensorium data make-NAME``: what it writes, and how its output is evaluated."""

    help: str
    unit: str  # what it makes and its summary counts: "images" or "clips"
    n_test: str  # help of --n-test
    evaluate: str  # the data specs of its output, {out} standing for the folder


MAKE_COMMANDS = {
    "scenes": MakeCommand("procedural shapes scenes for captioning and VQA (train, test and a compositional "
                          "test-novel split)", "images", "images in each of test and test-novel",
                          "--data scenes:{out}/test-novel (or /train, /test)"),
    "videos": MakeCommand("procedural moving-shapes clips for video captioning and video QA (train and test)", "clips",
                          "test clips", "--data videos:{out}/test (questions) or "
                          "coco:annotations={out}/captions_test.json,images={out}/videos (captions)"),
    "audio": MakeCommand("procedural sound scenes (tones, beeps, sweeps, noise, speech) for audio captioning and "
                         "audio QA (train and test)", "clips", "test clips", "--data audio:{out}/test (questions) or "
                         "coco:annotations={out}/captions_test.json,images={out}/clips (captions)"),
    "audiovisual": MakeCommand("procedural moving-shapes clips with a sound track (beeps or a sweep) for models "
                               "with a video and an audio sense (train and test)", "clips", "test clips",
                               "--data audiovisual:{out}/test (all questions) or audiovisual:{out}/test/picture "
                               "(or /sound, /both: one type's questions)"),
}


def _make_data(args: argparse.Namespace) -> None:
    from .benchmarks import generator

    command, module = MAKE_COMMANDS[args.generator], generator(args.generator)
    make = getattr(module, f"make_{args.generator}")
    options = {"workers": args.workers} if "workers" in args else {}  # make-audio's and make-audiovisual's
    start = time.perf_counter()
    summary = make(Path(args.out), args.n_train, args.n_test, args.seed, **options)
    seconds = time.perf_counter() - start
    unit = command.unit
    total = sum(split[unit] for split in summary["splits"].values())
    width = max(map(len, summary["splits"]))
    print(f"{module.BENCHMARK.description} (seed {args.seed}) written to {args.out}")
    for name, split in summary["splits"].items():
        print(f"  {name:<{width}}: {split[unit]:,} {unit}, {split['captions']:,} captions, "
              f"{split['questions']:,} questions")
    if "held_out" in summary:
        print(f"held out of train: {', '.join(' '.join(pair) for pair in summary['held_out'])}")
    print(f"{total:,} {unit} in {seconds:.1f} s ({total / seconds:.0f} {unit}/s)")
    print(f"evaluate with {command.evaluate.format(out=args.out)}")


def _make_fashion(args: argparse.Namespace) -> None:
    from .data.fashion import make_fashion

    summary = make_fashion(Path(args.out), Path(args.source), {"train": args.n_train, "test": args.n_test})
    print(f"Fashion-MNIST from {args.source} written to {args.out}")
    for name, split in summary.items():
        print(f"  {name}: {split['photos']:,} photos, {split['questions']:,} questions, {split['captions']:,} captions")
    print(f"evaluate with --data hf:path={args.out}/vqa,split=test (or hf:path={args.out}/captions,split=test)")


SPLIT_PARTS = ("train", "held-out")  # the manifests `data split` writes


def _split_data(args: argparse.Namespace) -> None:
    from .data import parse_data_spec, read_dataset, split_validation, write_manifest

    spec, out = parse_data_spec(args.data), Path(args.out)
    check_outputs([out / f"{name}.jsonl" for name in SPLIT_PARTS], data_files(spec))
    examples = read_dataset(spec)
    try:
        training, held_out = split_validation(examples, args.held_out, args.seed)
    except ValueError as error:
        raise BadInputError(f"{args.data}: {error}") from error
    for name, part in zip(SPLIT_PARTS, (training, held_out), strict=True):
        write_manifest(part, out / f"{name}.jsonl")
        print(f"{name}: {len(part):,} examples of {len({e.media for e in part}):,} media files -> "
              f"--data {out / name}.jsonl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sensorium", description="Give a frozen language model senses (eP-ALM).")
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train an adapter from a recipe")
    train.add_argument("recipe", help="recipe YAML (see recipes/)")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.max_steps=100")
    train.add_argument("--out", help="output folder (overrides the recipe's)")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in the output")
    train.add_argument("--restart", action="store_true",
                       help="start over in an output folder holding an unfinished run, removing its checkpoints")
    train.add_argument("--skip-bad", action="store_true", help="skip and count unreadable files instead of stopping")
    train.add_argument("--dry-run", action="store_true",
                       help="check the recipe, models, data, batch arithmetic and memory per GPU (under DDP and with "
                            "the frozen LM sharded, at 1 to 8 GPUs) without loading weights")
    train.add_argument("--num-processes", type=bounded_flag("requests"),
                       help="processes (GPUs) to size the dry run for; default: WORLD_SIZE of the environment, or 1")
    train.set_defaults(run=_train)

    compare = verbs.add_parser("compare", help="train and score connectors on equal footing; table and plot of "
                                               "score against cost (see recipes/compare/)")
    compare.add_argument("config", help="comparison YAML: base recipe, methods, seeds, learning-rate grid")
    compare.add_argument("--out", help="output folder (overrides the file's)")
    compare.add_argument("--methods", help="comma-separated methods to run, the baseline among them (default: all)")
    compare.add_argument("--smoke", action="store_true",
                         help="the same methods on tiny random models and data, a few steps each: a test of the path")
    compare.add_argument("--dry-run", action="store_true",
                         help="check every method's recipe with train --dry-run, loading no weights")
    compare.add_argument("--jobs", type=bounded_flag("requests"), default=1,
                         help="methods trained at once, one worker process each (spread over the GPUs); "
                              "costs are measured afterwards in one process (default 1)")
    compare.set_defaults(run=_compare)

    evaluate = verbs.add_parser("eval", help="evaluate an adapter on a data set")
    evaluate.add_argument("adapter", help="adapter folder, or a composed model's")
    evaluate.add_argument("--data", required=True,
                          help=" | ".join(data_spec_forms()))
    evaluate.add_argument("--limit", type=bounded_flag("examples"), help="a fixed seeded sample of this many questions")
    evaluate.add_argument("--predictions", help="where to write predictions (default: predictions.jsonl for VQA, "
                          "captions_results.json in the COCO results format for captions)")
    evaluate.add_argument("--batch-size", type=bounded_flag("batch_size"), default=64)
    evaluate.add_argument("--skip-bad", action="store_true")
    _model_arguments(evaluate)
    _generation_arguments(evaluate)
    evaluate.set_defaults(run=_eval)

    ask = verbs.add_parser("ask", help="answer a question about an image, a video or a sound",
                           usage="sensorium ask ADAPTER MEDIA QUESTION | "
                                 "sensorium ask --adapter A --adapter B MEDIA [MEDIA ...] QUESTION")
    ask.add_argument("inputs", nargs="+", metavar="[ADAPTER] MEDIA... QUESTION",
                     help="an adapter folder (or a composed model's), an image or a video or sound file, and the "
                          "question; a composed model reads one file with every sense (a video and its sound "
                          "track) or one file per sense, in order")
    ask.add_argument("--adapter", action="append", help="compose adapters into one model, one sense each, in order "
                                                        "(then no ADAPTER among the inputs); one sense answers, "
                                                        "chosen by compose's default rule")
    _model_arguments(ask)
    _generation_arguments(ask)
    ask.set_defaults(run=_ask)

    caption = verbs.add_parser("caption", help="caption images, videos or sounds (one line each: path, tab, caption)")
    caption.add_argument("adapter")
    caption.add_argument("media", nargs="+", help="images, or videos or sound files for a video or audio adapter")
    caption.add_argument("--batch-size", type=bounded_flag("batch_size"), default=16)
    _model_arguments(caption)
    _generation_arguments(caption)
    caption.set_defaults(run=_caption)

    composer = verbs.add_parser("compose", help="adapters of one LM, each reading its own sense, as one model "
                                                 "(optionally tuned on data needing every sense)")
    composer.add_argument("adapters", nargs="+", help="adapter folders, in prefix order (the first leads: its "
                                                      "template, task and decoding settings)")
    composer.add_argument("--out", required=True, help="folder of the composed model")
    composer.add_argument("--names", type=lambda text: text.split(","), help="comma-separated sense names "
                                                                             "(default: the folders' names)")
    composer.add_argument("--mode", choices=("select", "prefix"),
                          help="select: each sense answers alone and --rule keeps one answer "
                               "(zero-shot; the default without --tune); prefix: one sequence reads every sense "
                               "(what --tune trains, its default)")
    composer.add_argument("--rule", choices=SELECT_RULES,
                          help="of a select composition: route (the default): the sense whose training questions "
                               "the question resembles answers (needs every adapter's questions.safetensors, which "
                               "training writes: see `sensorium questions`); likelihood: the answer its own sense is "
                               "surest of; route+likelihood: the "
                               "answer's log-likelihood plus the log-probability that the question is its sense's")
    composer.add_argument("--positions", choices=("parallel", "serial"), default="parallel",
                          help="of a prefix composition: parallel: each sense's prompt and slot at the positions it "
                               "was trained at, side by side; serial: one after another")
    composer.add_argument("--tune", metavar="DATA", help="fine-tune every sense's connector and prompt on this data: "
                          + " | ".join(data_spec_forms()))
    composer.add_argument("--fresh", action="store_true", help="start from untrained adapters of the same settings "
                                                               "(a jointly trained model; needs --tune)")
    composer.add_argument("--steps", type=bounded_flag("steps"), default=100)
    composer.add_argument("--batch-size", type=bounded_flag("batch_size"), default=16)
    composer.add_argument("--lr", type=bounded_flag("learning_rate"), default=1e-3)
    composer.add_argument("--prompt-lr", type=bounded_flag("learning_rate"), default=1e-3)
    composer.add_argument("--warmup-steps", type=bounded_flag("step_count"), default=10)
    composer.add_argument("--seed", type=int, default=0)
    composer.add_argument("--skip-bad", action="store_true")
    composer.add_argument("--dtype", choices=("auto", *WEIGHT_FORMATS), default="float32",
                          help="how the frozen LM holds its weights while tuning")
    composer.set_defaults(run=_compose)

    recorder = verbs.add_parser("questions", help="record what an adapter was trained to be asked "
                                                  "(questions.safetensors, for compose --rule route); training "
                                                  "records it, this does for adapters trained before")
    recorder.add_argument("adapter", help="adapter folder (or a training run's)")
    recorder.add_argument("--data", help="the questions it was trained on (default: the training data its config "
                                         "records): " + " | ".join(data_spec_forms()))
    recorder.set_defaults(run=_questions)

    merge = verbs.add_parser("merge", help="average adapters of one layout into one adapter (a model soup)")
    merge.add_argument("adapters", nargs="+", help="adapter folders (or training runs' output folders)")
    merge.add_argument("--weights", type=weight_list, help="comma-separated weights, normalised to sum to one "
                                                           "(default: uniform)")
    merge.add_argument("--out", required=True, help="folder of the merged adapter")
    merge.set_defaults(run=_merge)

    soup = verbs.add_parser("soup", help="uniform or greedy soup of adapters, scored on a held-out split")
    soup.add_argument("adapters", nargs="+", help="adapter folders (or training runs' output folders) of one task")
    soup.add_argument("--data", required=True, help="held-out data (not the test split), as for eval --data")
    soup.add_argument("--greedy", action="store_true",
                      help="add ingredients best first, each kept only if the held-out score does not drop")
    soup.add_argument("--batch-size", type=bounded_flag("batch_size"), default=64)
    soup.add_argument("--out", required=True, help="folder of the soup's adapter")
    soup.set_defaults(run=_soup)

    interpolate = verbs.add_parser("interpolate", help="score (1 - a) * FIRST + a * SECOND on both adapters' "
                                                       "held-out data for a = 0, 0.1, ..., 1; table and plot")
    interpolate.add_argument("first", help="adapter folder (e.g. a VQA adapter)")
    interpolate.add_argument("second", help="adapter folder of the same layout (e.g. a caption adapter)")
    interpolate.add_argument("--first-data", required=True, help="held-out data of the first adapter's task")
    interpolate.add_argument("--second-data", required=True, help="held-out data of the second adapter's task")
    interpolate.add_argument("--steps", type=bounded_flag("interpolation_steps"), default=11,
                             help="weights from 0 to 1 (default 11)")
    interpolate.add_argument("--batch-size", type=bounded_flag("batch_size"), default=64)
    interpolate.add_argument("--out", required=True, help="folder for interpolation.json and interpolation.png")
    interpolate.set_defaults(run=_interpolate)

    from .import_epalm import DEFAULT_ENCODER, DEFAULT_LM

    importer = verbs.add_parser("import-epalm", help="an adapter of layout paper from an official eP-ALM "
                                                     "checkpoint (mshukor/eP-ALM) and its config")
    importer.add_argument("checkpoint", help="the official checkpoint (checkpoint_best.pth), read with "
                                             "torch.load(weights_only=True)")
    importer.add_argument("--config", required=True, help="the official YAML it was trained with "
                                                          "(configs/image/ePALM_vqa.yaml, ...)")
    importer.add_argument("--out", required=True, help="folder of the adapter (new or empty)")
    importer.add_argument("--lm", default=DEFAULT_LM, help="the LM it was trained over (the official --text_model; "
                                                           f"default {DEFAULT_LM})")
    importer.add_argument("--encoder", help="the image encoder it was trained over (the official --vision_model; "
                                            f"default {DEFAULT_ENCODER}, for vit_base_patch16_224)")
    importer.add_argument("--task", choices=("vqa", "caption"),
                          help="default: vqa when the config has special_answer_token, else caption")
    importer.set_defaults(run=_import_epalm)

    models = verbs.add_parser("models", help="list the packaged models: kind, size, installed, converted")
    models.set_defaults(run=_models)

    data = verbs.add_parser("data", help="make data sets")
    data_verbs = data.add_subparsers(dest="data_verb", required=True)
    for name, command in MAKE_COMMANDS.items():
        maker = data_verbs.add_parser(f"make-{name}", help=command.help)
        maker.add_argument("--out", required=True, help="output folder")
        maker.add_argument("--n-train", type=bounded_flag("generated"), default=4000, help=f"training {command.unit}")
        maker.add_argument("--n-test", type=bounded_flag("generated"), default=500, help=command.n_test)
        maker.add_argument("--seed", type=int, default=0)
        maker.set_defaults(run=_make_data, generator=name)
        if name in ("audio", "audiovisual"):
            maker.add_argument("--workers", type=bounded_flag("workers"),
                               help="clips made at once, each by its own sox/espeak-ng processes (default: 1 per CPU)")

    from .data.fashion import SOURCE

    fashion = data_verbs.add_parser("make-fashion", help="Fashion-MNIST's real product photos (Debian's "
                                    "dataset-fashion-mnist) as a Hugging Face dataset: questions true by the label, "
                                    "and captions (train and test)")
    fashion.add_argument("--out", required=True, help="output folder")
    fashion.add_argument("--source", default=str(SOURCE), help="the folder of the release's IDX files")
    fashion.add_argument("--n-train", type=bounded_flag("generated"),
                         help="the first N training photos (default: all 60,000)")
    fashion.add_argument("--n-test", type=bounded_flag("generated"),
                         help="the first N test photos (default: all 10,000)")
    fashion.set_defaults(run=_make_fashion)

    splitter = data_verbs.add_parser("split", help="hold out part of a data set (whole media files) for choosing "
                                     "learning rates or soup ingredients: writes train.jsonl and held-out.jsonl")
    splitter.add_argument("data", help=" | ".join(data_spec_forms()))
    splitter.add_argument("--held-out", type=bounded_flag("examples"), required=True,
                          help="examples to hold out (whole media files move until it holds at least this many)")
    splitter.add_argument("--seed", type=int, default=0)
    splitter.add_argument("--out", required=True, help="output folder")
    splitter.set_defaults(run=_split_data)

    from .serve.settings import ServeSettings

    defaults = ServeSettings()
    serve = verbs.add_parser("serve", help="HTTP API and web page hosting adapters over shared frozen models",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    serve.add_argument("--adapter", action="append", type=adapter_spec, required=True, metavar="NAME=DIR",
                       help="an adapter (or a composed model's folder) to host under NAME; repeat for more")
    serve.add_argument("--compose", action="append", type=compose_spec, metavar="NAME=A,B",
                       help="host the adapters named A, B, ... (by --adapter) composed, one sense each in that "
                            "order, as one model under NAME, over the same loaded LM and encoders (selecting, by "
                            "compose's default rule); repeat for more")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=bounded_flag("port"), default=8000, help="port to listen on")
    serve.add_argument("--device", default="cpu", help="torch device of the models")
    serve.add_argument("--dtype", choices=("auto", *WEIGHT_FORMATS), default="auto",
                       help="how the frozen LMs hold their weights (auto: the fastest on the device)")
    serve.add_argument("--max-batch-size", type=bounded_flag("requests"), default=defaults.max_batch_size,
                       help="requests answered by one generate() call")
    serve.add_argument("--max-wait-ms", type=bounded_flag("wait_ms"), default=defaults.max_wait_ms,
                       help="how long a request waits for others to batch with")
    serve.add_argument("--no-batching", action="store_true", help="one request per generate() call")
    serve.add_argument("--max-upload-mb", type=bounded_flag("upload_mb"), default=defaults.max_upload_bytes / 2**20,
                       help="largest accepted upload")
    serve.add_argument("--max-question-chars", type=bounded_flag("question_chars"), default=defaults.max_question_chars,
                       help="longest accepted question")
    serve.add_argument("--max-new-tokens", type=bounded_flag("max_new_tokens"), default=defaults.max_new_tokens,
                       help="the most new tokens a request may ask for")
    serve.add_argument("--max-beams", type=bounded_flag("num_beams"), default=defaults.max_beams,
                       help="the most beams a request may ask for")
    serve.add_argument("--request-timeout", type=bounded_flag("seconds"), default=defaults.request_timeout_s,
                       help="seconds a request may take, queueing included")
    serve.add_argument("--compile", action="store_true",
                       help="compile the greedy and sampled decode steps (inductor; CUDA graphs on a GPU), once per "
                            "shape bucket: for a GPU; the first request of each bucket waits for its compile")
    serve.set_defaults(run=_serve)
    return parser


def _true_or_false(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return text.lower() == "true"


GENERATION_FLAGS = {  # flag -> help (its range: schema.BOUNDS); unset flags keep the adapter's own decoding settings
    "max_new_tokens": "longest answer or caption, in tokens",
    "min_new_tokens": "shortest answer or caption, in tokens",
    "num_beams": "beam search width (1: greedy)",
    "length_penalty": "beam score / length**penalty: above 0 favours longer outputs",
    "repetition_penalty": "above 1 discourages repeating tokens",
    "no_repeat_ngram_size": "never repeat an n-gram of this size",
    "use_cache": "false: recompute the whole sequence for each new token, the official eP-ALM decoding (exact for "
                 "layout: paper, slower); true: the KV cache",
}


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=("auto", *WEIGHT_FORMATS), default="auto",
                        help="how the frozen LM holds its weights (int8: weight-only, by torchao); auto: the fastest "
                             "on the device (bf16 on GPUs and on CPUs with bf16 instructions, else float32); the "
                             "adapter stays float32")
    parser.add_argument("--device-map", help="'auto': spread the LM over the visible GPUs (then CPU RAM); "
                                             "'cuda:0': all on that device. Default: CPU")


def _load_model(args: argparse.Namespace):
    """The adapter, or the composed model: a composition folder, or several ``--adapter``s composed."""
    from .compose import compose, is_composition, load_composed
    from .model import load

    composed = isinstance(args.adapter, list) or is_composition(args.adapter)
    if composed and args.device_map is not None:
        raise BadInputError("--device-map: a composed model runs on the CPU for now")
    if isinstance(args.adapter, list):
        return compose(args.adapter, weights=args.dtype)
    if composed:
        return load_composed(args.adapter, weights=args.dtype)
    return load(args.adapter, weights=args.dtype, device_map=args.device_map)


def _generation_arguments(parser: argparse.ArgumentParser) -> None:
    for name, text in GENERATION_FLAGS.items():
        kind = _true_or_false if name == "use_cache" else bounded_flag(name)  # the one switch; the rest are sizes
        parser.add_argument("--" + name.replace("_", "-"), type=kind, help=text + " (default: the adapter's)")


def _generation_options(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in GENERATION_FLAGS if getattr(args, name) is not None}


def _quiet_transformers() -> None:
    """Our own progress bars say what is happening; per-file weight-loading bars are noise."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


class _StderrHandler(logging.StreamHandler):
    """Writes to sys.stderr as it is at each message, like logging's own last-resort handler."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _warnings_to_stderr() -> None:
    """The library's warnings (a damaged cache shard or checkpoint, a torn metrics line) as one line each."""
    logger = logging.getLogger("sensorium")
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("sensorium: warning: %(message)s"))
        logger.addHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_transformers()
    _warnings_to_stderr()
    try:
        return args.run(args) or 0
    except USER_ERRORS as error:
        # One line whatever the message holds (a file name or a value quoted from the user's input).
        print(f"sensorium: error: {' '.join(str(error).splitlines())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
