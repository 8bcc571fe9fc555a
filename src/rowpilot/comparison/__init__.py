"""``rowpilot compare``: choose a model on a sample before paying for the whole job.

The job's prompt runs on one stable sample (``sample.py``: the rows with the smallest
key hashes) with each model in turn. Each model's run is an ordinary run of that sample
in a state of its own, ``<job state>-compare/<model>`` beside the job's: journaled,
budgeted and resumable, so running the comparison again pays nothing and reports the
same figures. ``--budget`` is what all the models' runs may spend together: each run gets
what the earlier ones left, and a run the budget stops (exit 3), or that is interrupted or
aborted, ends the comparison, the later models not run. Every model's key, name and
(under a budget) price is checked (preflight) before the first run spends anything.

Per model (``figures.py``): cost per 1,000 rows and projected for the whole job, online
and at Batch API prices; latency p50/p95 from the journaled calls; the invalid-answer
rate; and (``agreement.py``) agreement per output field with the ``--reference`` column,
else with the first model: exact for labels, enums and booleans, within ``--tolerance``
(1% by default) for numbers, a normalised string ratio for text. ``run.py`` runs it all
and writes the answers side by side (``-o compare.csv``: key, inputs, then
``MODEL:FIELD`` columns, atomic and formula-neutralised); ``report.py`` prints it and
makes the DataFrame ``rowpilot.compare`` returns. docs/compare.md is the user's page.

Refused with a one-line error (exit 2), before any paid call: a job that is not a prompt
job, a shard of a job, a local model, an unknown model or (under a budget) one without a
price (at preflight), a sample larger than the data, a reference column the input does
not have, an output that is not a .csv, a negative tolerance.
"""

from rowpilot.comparison.report import Comparison
from rowpilot.comparison.run import CompareRequest, compare_job, write_answers

__all__ = ["CompareRequest", "Comparison", "compare_job", "write_answers"]
