"""``sensorium compare --dry-run``: every method's recipe checked by ``train --dry-run``, loading no weights."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from ..dryrun import dry_run as dry_run_recipe
from .comparison import Comparison
from .runs import method_recipe, run_folder


def dry_run(comparison: Comparison) -> tuple[int, str]:
    """Every method's recipe through ``train --dry-run`` (base data, first rate): (exit code, reports)."""
    reports, code = [], 0
    with tempfile.TemporaryDirectory() as scratch:
        for method in comparison.methods:
            recipe = method_recipe(comparison, method, method.lr_grid[0], comparison.seeds[0],
                                   comparison.recipe["data"], run_folder(comparison, method, method.lr_grid[0],
                                                                         comparison.seeds[0]))
            path = Path(scratch) / f"{method.name}.yaml"
            path.write_text(yaml.safe_dump(recipe.to_dict()))
            result = dry_run_recipe(path)
            code = max(code, result.exit_code)
            reports.append(f"== {method.name}\n{result.format()}")
    return code, "\n".join(reports)
