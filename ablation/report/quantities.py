"""What the report compares, each quantity named once: its own column, its judge's, the report's, its words.

The losses are the engine's (:data:`ablation.engine.transfer.LOSS_NAMES`, in its order): a run logs each one's
final value as ``final_<name>`` and the judge's score as ``judge_<name>``; the report's tables
(``ablation/reported/table*.csv``) hold ``<name>_loss``. Runtime is compared too (its own column is the run's
``total_s``, the runs frame's ``runtime_s``), with no judge. Load, tables, claims and readings read this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from ablation.engine.transfer import LOSS_NAMES


@dataclass(frozen=True)
class Quantity:
    name: str  # as claims.csv names it
    own: str | None  # column of the runs frame: the run's own measure (losses: the MLflow metric's name too)
    judge: str | None  # column of the judge's measure; None: no judge (runtime)
    reported: str | None  # column of the report's tables; None: the report has no such figure
    label: str  # words in a sentence ("TV loss"); a row's label starts with a capital (``title``)

    @property
    def title(self) -> str:
        return self.label[:1].upper() + self.label[1:]


_LOSS_LABELS = {"content": "content loss", "style": "style loss", "tv": "TV loss", "total": "total loss"}
RUNTIME = Quantity("runtime", "runtime_s", None, "runtime_s", "runtime")
#: The engine's losses, in its order.
LOSSES = tuple(Quantity(n, f"final_{n}", f"judge_{n}", f"{n}_loss", _LOSS_LABELS[n]) for n in LOSS_NAMES)
#: The judge's measure that needs no network: SSIM of the output against the content photo.
SSIM = Quantity("ssim", None, "ssim_content", None, "SSIM(output, content)")
#: What a claim can be about (claims.csv's ``quantity``), by name.
QUANTITIES = {q.name: q for q in (RUNTIME, *LOSSES)}
TOTAL_LOSS = QUANTITIES["total"]
#: Every metric the judge logs for a run, in the judge table's order.
JUDGE_METRICS = tuple(q.judge for q in (*LOSSES, SSIM))
