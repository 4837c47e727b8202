"""``python -m sensorium.bench SUITE [options]``: one sub-command per suite."""

from __future__ import annotations

import argparse
from typing import Any

from . import adapters, compiled, encode, floor, generation, gpu, ladder, serve, training

SUITES = {"generation": generation, "training": training, "encode": encode, "gpu": gpu, "serve": serve,
          "adapters": adapters, "floor": floor, "compile": compiled, "ladder": ladder}


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each option, and the suite's docstring kept as written."""


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m sensorium.bench", description=__doc__)
    suites = root.add_subparsers(dest="suite", required=True)
    for name, module in SUITES.items():
        sub = suites.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                                formatter_class=_Help)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return root


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs one suite; returns the JSON line it appended."""
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    main()
