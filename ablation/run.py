"""One style transfer, configured by Hydra, logged to MLflow: the command line.

    python -m ablation.run variant=vgg16_tanh
    python -m ablation.run variant=avg_pool weights=random images.width=64 run.iterations=20
    python -m ablation.run --help          # every group and key, with defaults

Compose (``ablation.schema`` checks types and choices), hand over to :func:`ablation.job.execute`, and turn
user errors (:class:`~ablation.engine.errors.UserError`) into one line and exit code 2. Anything else is a bug:
its traceback is shown, the exit code is 1 and its run ends FAILED.
"""

from __future__ import annotations

import gc

#: The imports below run without the collector, and what they made is frozen once they are done (the package's
#: docstring says why), whether this is the command or a SLURM job unpickling its task.
_COLLECTING = gc.isenabled()
gc.disable()

import os
import re
import sys
from typing import Any

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from ablation import schema, sweep
from ablation.engine.errors import UserError
from ablation.engine.transfer import DivergenceError
from ablation.job import execute
from ablation.stopping import Interrupted
from ablation.store import outbox, reader
from ablation.store.outcome import Outcome, outcome_record
from ablation.store.tolerance import TrackingLost

gc.freeze()
if _COLLECTING:
    gc.enable()

#: Errors that mean "bad input": one line, exit code 2, nothing stored is touched.
USER_ERRORS = (UserError,)
#: The exit code of a job that gave up on an absent tracking server: sysexits.h's EX_TEMPFAIL, "try again later".
TRACKING_LOST_EXIT = 75


def tune_value(results: dict[str, Any], objective: str) -> float:
    """The objective of a finished or skipped job (read back from its run); +inf for a failed one.

    A job skipped because a live RUNNING run has its fingerprint has no value yet: an error, not +inf, so the
    trial fails instead of misleading the sampler (a tuner re-run within ``run.heartbeat_limit_s`` of a SIGKILL).
    """
    if results.get("status") == Outcome.SKIPPED:
        run = reader.get_run(results["run_id"])
        if run.info.status != "FINISHED":
            raise UserError(
                f"trial's run {run.info.run_id} is {run.info.status} with a recent heartbeat (run.heartbeat_limit_s): "
                "its value is not known yet; run the tuner again when that run has ended or its heartbeat is older"
            )
        return float(run.data.metrics.get(objective, float("inf")))
    return float(results.get(objective, float("inf")))


#: Set by :func:`cli` when it turns on HYDRA_FULL_ERROR itself (to catch Hydra's errors), so that jobs
#: it starts can tell that the user did not ask for tracebacks.
_CLI_MARK = "ABLATION_CLI_SET_HYDRA_FULL_ERROR"


def debug_requested(config: dict[str, Any]) -> bool:
    """Tracebacks were asked for: HYDRA_FULL_ERROR=1 set by the user, or run.debug=true."""
    by_user = os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_CLI_MARK) != "1"
    return by_user or bool(config.get("run", {}).get("debug", False))


def schema_error(err: BaseException) -> str | None:
    """A value the schema refused, as ``key=value: what is allowed`` (None when ``err`` is not one)."""
    cause = err.__cause__
    key = getattr(cause, "full_key", None)
    if not key:
        return None
    first = str(getattr(cause, "msg", cause)).splitlines()[0]
    if choice := re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", first):
        return f"{key}={choice[1]!r}: choose one of {choice[2]}"
    if kind := re.match(r"Value '(.*)' of type '.*' could not be converted to (\w+)", first):
        return f"{key}={kind[1]!r} is not {'an' if kind[2][0] in 'AEIOU' else 'a'} {kind[2].lower()}"
    if re.match(r"Key '.*' not in '.*'", first):
        return f"{key} is not a key here: python -m ablation.run --help lists them (+{key}=... does not help)"
    return f"{key}: {first}"


def one_line(err: BaseException) -> str:
    """Hydra's multi-line configuration errors as one line; an unknown group option lists the choices."""
    refused = schema_error(err)
    if refused is not None:
        return refused
    text = str(err)
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    options = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)
    if missing and options:
        group, value = missing.groups()
        choices = ", ".join(o.strip() for o in options[1].splitlines() if o.strip())
        return f"{group}={value} is not a choice: choose one of {choices} (or add conf/{group}/{value}.yaml)"
    skip = ("Config search path", "provider=", "full_key", "object_type", "Set the environment variable")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(skip)]
    cause = err.__cause__
    if cause is not None and str(cause).strip() and str(cause).strip().splitlines()[0] not in lines:
        lines.append(str(cause).strip().splitlines()[0])
    return "; ".join(lines[:3]) or type(err).__name__


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any] | float | None:
    """One job. A single run exits 2 on bad input; in a sweep a failed job returns ``status: failed`` so
    the others go on, and under Optuna (``tune.objective``) every job returns its objective."""
    config = schema.plain(cfg)
    job = sweep.current_job()
    try:
        results = execute(config, job)
    except TrackingLost as err:  # the store kept on disk (outbox.keep): a re-run sends it and continues the run
        print(f"tracking lost: {err}{outbox.outbox().kept_note()}", file=sys.stderr)
        if job is not None:
            sweep.record_outcome(job, config, outcome_record(Outcome.KILLED, err.run_id, str(err)))
        sys.exit(TRACKING_LOST_EXIT)
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        if job is not None:  # a re-run of the sweep (or submitit's requeue, below) continues it
            sweep.record_outcome(job, config, outcome_record(Outcome.KILLED, err.run_id, str(err)))
        err.stop.hand_over()  # SLURM's warning signal: submitit requeues the job and exits
        sys.exit(err.stop.exit_code)
    except Exception as err:
        expected = isinstance(err, (*USER_ERRORS, DivergenceError))
        if debug_requested(config) or (job is None and not expected):
            raise
        message = str(err) if expected else f"{type(err).__name__}: {err}"
        print(f"error: {message}", file=sys.stderr)
        if job is None:
            sys.exit(2)
        results = outcome_record(Outcome.FAILED, None, message)
    objective = (config.get("tune") or {}).get("objective")
    if objective:  # the Optuna sweeper minimises what the job returns, a bare number
        if job is not None:
            sweep.record_outcome(job, config, results)
        return tune_value(results, objective)
    for seed_results in results.get("seed_results", [results]) if results["status"] == Outcome.FINISHED else []:
        print(
            f"{seed_results['run_id']}: total {seed_results['final_total']:.6g} (content "
            f"{seed_results['final_content']:.6g}, style {seed_results['final_style']:.6g}, tv "
            f"{seed_results['final_tv']:.6g}) in {seed_results['total_s']:.1f} s",
            file=sys.stderr,
        )
    return results


def cli() -> None:
    """``python -m ablation.run``: Hydra's entry point, with its configuration errors (an unknown variant,
    a misspelt key) as one line and exit code 2 instead of a multi-line report.

    Hydra prints those itself unless HYDRA_FULL_ERROR=1, in which case it raises them; so this sets it
    (marked, see :func:`debug_requested`) and catches them. A user's own HYDRA_FULL_ERROR=1 is left alone.
    """
    if os.environ.get("HYDRA_FULL_ERROR") == "1" and os.environ.get(_CLI_MARK) != "1":
        main()
        return
    os.environ["HYDRA_FULL_ERROR"] = os.environ[_CLI_MARK] = "1"
    try:
        main()
    except (HydraException, OmegaConfBaseException, *USER_ERRORS) as err:  # a user error from a sweeper, too
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
