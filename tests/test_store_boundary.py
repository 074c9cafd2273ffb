"""The store boundary: MLflow is imported only under ablation/store/ (DESIGN.md), so a run is read and written in one
place. ruff's banned-api rule (pyproject.toml) catches a direct import at lint time; this reads every module of
``ablation/`` and ``hydra_plugins/`` the same way, so the rule holds even where lint is not run."""

import ast

from ablation.paths import PROJECT_ROOT

STORE = PROJECT_ROOT / "ablation" / "store"


def mlflow_imports(source: str) -> list[int]:
    """Line numbers of the statements in ``source`` that import mlflow (``import mlflow.x``, ``from mlflow...``)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "mlflow" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow" and not node.level:
            lines.append(node.lineno)
    return lines


def test_the_scanner_finds_every_form_of_import() -> None:
    source = (
        "import os\nimport mlflow\nfrom mlflow.tracking import MlflowClient\ndef f():\n    import mlflow.entities\n"
    )
    assert mlflow_imports(source) == [2, 3, 5]
    assert mlflow_imports("from .mlflow import x\nimport mlflowish\n") == []


def test_only_the_store_imports_mlflow() -> None:
    modules = [*(PROJECT_ROOT / "ablation").rglob("*.py"), *(PROJECT_ROOT / "hydra_plugins").rglob("*.py")]
    outside = {
        str(p.relative_to(PROJECT_ROOT)): found
        for p in modules
        if STORE not in p.parents and (found := mlflow_imports(p.read_text()))
    }
    assert outside == {}
    assert mlflow_imports((STORE / "connection.py").read_text())  # the scan does read the store
