"""The rows of the benchmark tables (model, start, mode) and the run kinds they need."""

from __future__ import annotations

from dataclasses import dataclass

from missrec_recbole.bench.settings import MODES, PRETRAINED_TABLES
from missrec_recbole.bench.worker import RUN_KINDS


@dataclass(frozen=True)
class Row:
    """One row of a results table."""

    table: str  # a key of TABLES
    kind: str  # a key of RUN_KINDS
    mode: str | None  # inductive | transductive | None (SASRec)
    pretrained: bool
    all_weights: bool = False  # pre-trained and every weight fine-tuned (default: adapters only)

    @property
    def name(self) -> str:
        if self.mode is None:
            return RUN_KINDS[self.kind].label
        start = "pre-trained (all weights)" if self.all_weights else "pre-trained" if self.pretrained else "scratch"
        return f"{RUN_KINDS[self.kind].label} {start} {self.mode}"

    @property
    def own_settings(self) -> dict:
        """The options the row sets itself, on top of the command line's."""
        return {"adapters_only": False} if self.all_weights else {}


def suite_rows(tables=("pretrained", "full")) -> list[Row]:
    """Every row of ``tables``, in table order. The transfer table adds MISSRec fine-tuning all weights."""
    rows = []
    for table in tables:
        rows.append(Row(table, "sasrec", None, False))
        for kind in ("unisrec", "missrec"):
            starts = [(False, False)]
            if table in PRETRAINED_TABLES:
                starts.append((True, False))
            if table == "transfer" and kind == "missrec":
                starts.append((True, True))
            for pretrained, all_weights in starts:
                rows += [Row(table, kind, mode, pretrained, all_weights) for mode in MODES]
    return rows

