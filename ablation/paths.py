"""Where the project keeps things: its root, the MLflow store (``runs/``), generated reports (``reports/``)."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"
RUNS_DIR = PROJECT_ROOT / "runs"
REPORTS_DIR = PROJECT_ROOT / "reports"
REPORTED_DIR = Path(__file__).resolve().parent / "reported"


def variant_names() -> list[str]:
    """Every variant: the files of ``conf/variant/`` (a new variant is a new file, never new code)."""
    return sorted(path.stem for path in (CONF_DIR / "variant").glob("*.yaml"))
