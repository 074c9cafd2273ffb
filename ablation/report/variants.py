"""Which variants exist, in which order the report lists them, and what it calls them.

The variants are the files in ``conf/variant/``, and a sweep's runs carry their names: no list is kept here. The
report's own variants come first, in the order of its tables (``ablation/reported/table1.csv`` then
``table2.csv``), then every other variant of the sweep alphabetically. The
display names are the report's column headings (``ablation/reported/labels.csv``); a variant the report never
ran is shown by its key.
"""

from __future__ import annotations

from functools import cache

import pandas as pd

from ablation.paths import REPORTED_DIR

#: The report's tables, in its order: name -> title.
TABLE_TITLES = {
    "table1": "Table 1: Performance with different modified models",
    "table2": "Table 2: Original model against VGG16 + tanh",
}


@cache
def reported_table(name: str) -> pd.DataFrame:
    """The report's own figures for ``table1`` or ``table2``, indexed by variant (runtimes in seconds)."""
    return pd.read_csv(REPORTED_DIR / f"{name}.csv").set_index("variant")


def table_variants(name: str) -> list[str]:
    """The variants of the report's table ``name``, in its column order."""
    return list(reported_table(name).index)


def reported_variants() -> list[str]:
    """Every variant the report ran, in the order of its tables."""
    return list(dict.fromkeys(v for name in TABLE_TITLES for v in table_variants(name)))


def variant_order(variants: list[str]) -> list[str]:
    """``variants`` in the report's order: its own variants as its tables list them, then the others alphabetically."""
    rank = {v: i for i, v in enumerate(reported_variants())}
    return sorted(set(variants), key=lambda v: (rank.get(v, len(rank)), v))


@cache
def _labels() -> dict[str, str]:
    frame = pd.read_csv(REPORTED_DIR / "labels.csv")
    return dict(zip(frame["variant"], frame["label"], strict=True))


def label(variant: str) -> str:
    """The report's name for ``variant`` ("Average pooling"), or the key itself for a variant it never ran."""
    return _labels().get(variant, variant)


def named(variant: str) -> str:
    """The display name with the key beside it, so a reader finds the variant file: 'Average pooling (`avg_pool`)'."""
    name = label(variant)
    return f"`{variant}`" if name == variant else f"{name} (`{variant}`)"
