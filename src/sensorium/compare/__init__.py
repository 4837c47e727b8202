"""``sensorium compare CONFIG``: connectors trained and scored on equal footing, their costs measured beside them.

A comparison file (YAML, see recipes/compare/) names a base training recipe and the methods to compare, each
a set of recipe overrides (``model: {connector: mapl}``). Every method gets the same data, steps, batch and
seeds; only its connector learning rate is tuned, on a grid, against a validation split held out of the
training data (by media file, so no validation image is trained on). The chosen rate is then trained with
every seed and scored on the base recipe's eval set. The table gives the score (mean ± std over seeds) and
the costs, each relative to the baseline method (eP-ALM): trainable parameters, adapter size on disk,
training time, generation latency per sample (same process, same batch, answers forced to one length) and
KV-cache bytes per sample (from the layout length and the LM's configuration).

Finished runs are reused when the comparison is run again with the same settings (their folder holds the
recipe they were trained with), so an interrupted comparison continues where it stopped. It runs on the GPU
when there is one. With ``jobs`` > 1, methods train in that many worker processes at once (spread over the
GPUs when there are several): small frozen models leave one GPU mostly idle between kernel launches, so a
few processes share it well. The costs are then measured afterwards in the main process alone, so that no
worker's load skews a latency. ``--smoke`` runs the same methods end to end in seconds on tiny random
models and data, as a test of the whole path.

One module per job: ``comparison`` reads the file, ``runs`` trains the runs and drives the whole comparison,
``measure`` scores them and measures their costs, ``report`` writes the table and the plot, ``dryrun``
checks every method's recipe, ``smoke`` swaps in tiny models and data.
"""

from .comparison import Comparison, Method, load_comparison, merge_recipe, only
from .dryrun import dry_run
from .measure import TEST_RESULT
from .runs import method_recipe, run, split_validation, trained
from .smoke import smoke

__all__ = ["TEST_RESULT", "Comparison", "Method", "dry_run", "load_comparison", "merge_recipe", "method_recipe",
           "only", "run", "smoke", "split_validation", "trained"]
