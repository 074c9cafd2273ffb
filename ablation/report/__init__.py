"""The report of a sweep: MLflow runs -> pandas -> the report's tables, its claims judged, figures -> Markdown,
HTML and CSV, published to the sweep's parent run.

    load      store -> pandas (one row per run of the sweep)      claims    Section 3.1's claims, three verdicts
    tables    Tables 1 and 2, judge, optimisers, tuned, runs      readings  which reading of tanh the report ran
    hardware  runtimes by hardware class                          figures   image grid, loss curves
    conditions  where the claims hold (experiment=conditions)     stats     p-values, Holm, seeds needed
    evidence  stated magnitudes and seeds needed, laid out
    render    report.md (and html_page: report.html)              __main__  the command line; publishes to the parent
    variants  order and names of the variants                     formats   the report's number formats
    quantities  runtime and the losses: own, judge and reported columns, labels

``python -m ablation.report --help`` for the command line.
"""

from __future__ import annotations

from ablation.report.load import ReportError, load_sweep
from ablation.report.render import write_report

__all__ = ["ReportError", "load_sweep", "write_report"]
