"""A/B comparison: a configuration pinned as "A" while the user keeps exploring as "B".

The pinned configuration is a frozen snapshot; its per-tensor results are computed on demand
(and found among the results kept for undo when they were measured before), its end-to-end
evaluation is kept while the model, statistics and evaluation data stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from qviz.core.calibration.config import QuantConfig
from qviz.core.document.jobs import EvaluationOutcome


@dataclass(frozen=True)
class Pinned:
    """The configuration the current one is compared with."""

    config: QuantConfig
    label: str                      # what the user pinned, e.g. the history step's name
    data_revision: int              # the model/statistics/data it was measured against
    evaluation: EvaluationOutcome | None = None

    def with_evaluation(self, outcome: EvaluationOutcome) -> Pinned:
        return Pinned(self.config, self.label, self.data_revision, outcome)
