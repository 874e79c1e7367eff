"""The latency row reads true: its ratio is the ratio of the two medians beside it, and the
paired-runs median is named only where a loaded machine made them disagree."""

from __future__ import annotations

from qviz.core.evaluation.display import latency_ratio_text
from qviz.core.evaluation.results import Latency


def test_the_ratio_is_of_the_medians_shown() -> None:
    lat = Latency(6.0, 4.0, 64, 20, paired_speedup=1.55)
    assert latency_ratio_text(lat) == "×1.50 faster"


def test_a_paired_ratio_that_tells_another_story_is_named() -> None:
    lat = Latency(6.22, 6.06, 64, 20, paired_speedup=1.28)
    assert latency_ratio_text(lat) == "×1.03 faster (paired runs ×1.28 faster)"
    assert latency_ratio_text(Latency(5.0, 6.0, 8, 3)) == "×0.83 slower"
