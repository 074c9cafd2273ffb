"""Where the project keeps things: its root, the MLflow store (``runs/``), generated reports (``reports/``)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
RUNS_DIR = PROJECT_ROOT / "runs"
REPORTS_DIR = PROJECT_ROOT / "reports"
REPORTED_DIR = Path(__file__).resolve().parent / "reported"


def variant_names() -> tuple[str, ...]:
    """The variants: one file each in conf/variant (the only list; a new file is a new variant)."""
    return tuple(sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml")))
