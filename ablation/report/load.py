"""The store -> pandas: a sweep's parent run, its job records and one row per run it ran or reused.

The sweep's jobs record their outcome on the parent run (:mod:`ablation.store.sweeps`); a skipped
job points to the earlier run with its fingerprint, so a sweep's rows can come from runs made elsewhere, on other
hardware: each row carries its ``hardware_class`` ("unknown" for runs older than that tag).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ablation.engine.errors import UserError
from ablation.report.quantities import JUDGE_METRICS, LOSSES, TOTAL_LOSS
from ablation.report.variants import variant_order
from ablation.store import reader, sweeps
from ablation.store.connection import tracking_uri
from ablation.store.outcome import status_of
from ablation.store.reader import Run

OWN_LOSSES = [q.own for q in LOSSES]
METRICS = [*OWN_LOSSES, "total_s", "loop_s", "iter_ms", "peak_mem_mb", *JUDGE_METRICS, "calibration_gflops"]
#: MLflow param -> column.
PARAMS = {
    "device": "device",
    "torch_version": "torch",
    "torchvision_version": "torchvision",
    "weights_source": "weights_source",
    "weights_sha256": "weights_sha256",
    "content_size_wh": "content_size",
    "style_sizes_wh": "style_sizes",
    "run.iterations": "iterations",
    "run.precision": "precision",
    "optim.name": "optim",
    "variant.arch": "arch",
}
#: Loss weights a tuned run is described by (param -> column).
TUNED_PARAMS = {
    "loss.content_weight": "content_weight",
    "loss.style_weight": "style_weight",
    "loss.tv_weight": "tv_weight",
}
#: The tag naming a run's hardware ("cpu:AMD EPYC 7763 x16", "cuda:NVIDIA H100 80GB HBM3"); runs without it are one
#: class, this one.
HARDWARE_TAG = "hardware_class"
UNKNOWN_HARDWARE = "unknown"


class ReportError(UserError):
    """No sweep to report on, or a sweep without usable runs."""


@dataclass
class Sweep:
    """One sweep: its parent run, its job records and one row per run it produced or reused."""

    sweep_id: str
    parent: Run
    jobs: dict[int, dict]
    runs: pd.DataFrame  # variant, seed, run_id, job_status, condition, hardware_class, metrics, params
    params: dict[str, dict[str, str]] = field(default_factory=dict)  # run id -> every param (what a condition set)


def find_parent(experiment_id: str, wanted: str | None) -> Run:
    """The parent run of sweep ``wanted`` (sweep id or parent run id), or the newest sweep's."""
    parents = reader.sweep_parents(experiment_id)
    if not parents:
        raise ReportError(f"no sweep in the store {tracking_uri()}: run one with make sweep")
    if wanted is None:
        return parents[0]
    for run in parents:
        if wanted in (run.data.tags.get("sweep_id"), run.info.run_id):
            return run
    known = ", ".join(r.data.tags.get("sweep_id", r.info.run_id) for r in parents[:5])
    raise ReportError(f"--sweep {wanted!r} is not a sweep in {tracking_uri()}: the latest are {known}")


def run_row(run: Run, job_num: int, job: dict[str, Any]) -> dict[str, Any]:
    """One run as a flat row: identity, hardware, the metrics and params the report reads."""
    tags = run.data.tags
    row = {
        "job": job_num,
        "variant": tags.get("variant", job.get("variant")),
        "seed": int(tags.get("seed", job.get("seed"))),
        "run_id": run.info.run_id,
        "job_status": job["status"],
        "condition": job.get("condition", ""),  # a file of conf/condition/ (experiment=conditions), else ""
        "run_status": run.info.status,
        HARDWARE_TAG: tags.get(HARDWARE_TAG) or UNKNOWN_HARDWARE,
        **{m: run.data.metrics.get(m, float("nan")) for m in METRICS},
        **{name: run.data.params.get(key, "") for key, name in PARAMS.items()},
    }
    row["runtime_s"] = row["total_s"]
    return row


def load_sweep(parent: Run) -> Sweep:
    """The runs the sweep's jobs ran or reused (skipped jobs point to the earlier run with their fingerprint)."""
    jobs = sweeps.read_job_records(parent.info.run_id)
    found = {
        num: (reader.get_run(job["run_id"]), job)
        for num, job in sorted(jobs.items())
        if (status := status_of(job)) is not None and status.has_run and job.get("run_id")
    }
    rows = [run_row(run, num, job) for num, (run, job) in found.items()]
    params = {run.info.run_id: dict(run.data.params) for run, _ in found.values()}
    sweep_id = parent.data.tags.get("sweep_id", parent.info.run_id)
    if not rows:
        raise ReportError(f"sweep {sweep_id} has no finished runs yet: let it finish, or re-run it to fill the gaps")
    frame = pd.DataFrame(rows)
    order = {
        "variant": {v: i for i, v in enumerate(variant_order(list(frame["variant"].unique())))},
        "condition": {c: i for i, c in enumerate(dict.fromkeys(frame.sort_values("job")["condition"]))},  # the sweep's
    }
    frame = frame.sort_values(
        ["variant", "condition", "seed"], key=lambda c: c.map(order[c.name]) if c.name in order else c
    )
    return Sweep(sweep_id, parent, jobs, frame.reset_index(drop=True), params)


def tuned_runs(experiment_id: str, iterations: str, content_size: str) -> pd.DataFrame:
    """Finished tuning trials (experiment=tune) at the sweep's iterations and content size, one row each."""
    judged = TOTAL_LOSS.judge
    found = reader.search(
        experiment_id,
        f"params.`tune.objective` = '{judged}' and params.`run.iterations` = '{iterations}' "
        f"and params.content_size_wh = '{content_size}' and attributes.status = 'FINISHED'",
    )
    rows = [
        {
            "variant": r.data.tags.get("variant", ""),
            "run_id": r.info.run_id,
            judged: r.data.metrics.get(judged, float("nan")),
            **{column: float(r.data.params[key]) for key, column in TUNED_PARAMS.items()},
        }
        for r in found
    ]
    return pd.DataFrame(rows, columns=["variant", "run_id", judged, *TUNED_PARAMS.values()])
