"""The SqueezeNet paper's own numbers for the ablations a sweep can reproduce, for the report.

When a sweep varies one of the fields the paper ablates (squeeze ratio: Fig. 3a; share of 3x3
filters: Fig. 3b; bypass: Table 3; pool placement: Strategy 3), `sqz sweep report` sets the
paper's values beside the measured ones. The paper measured ImageNet with the full-size v1.0
macroarchitecture, so the numbers are labelled with their dataset and source and never mixed
into the measured columns or axes. Every value here is copied from docs/paper.md (the paper's
facts the code is checked against); a value docs/paper.md does not give is left out rather than
read off a plot.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class PaperPoint:
    """The paper's result at one value of the swept field (accuracies as fractions)."""

    top1: float | None = None
    top5: float | None = None
    size: str = ""  # the paper's quoted model size, as printed ("4.8MB")
    note: str = ""


@dataclasses.dataclass(frozen=True)
class PaperFigure:
    """One of the paper's ablations: its source, dataset, setting and per-value results."""

    key: str  # the swept config field
    source: str  # "Fig. 3a"
    dataset: str
    setting: str
    summary: str
    points: dict[Any, PaperPoint]  # field value (a display label for tuples) -> result

    def point(self, value: Any) -> PaperPoint | None:
        """The paper's result at a swept value (floats compared to 1e-9; tuples by label)."""
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        for known, point in self.points.items():
            both_numbers = isinstance(known, float) and isinstance(value, (int, float))
            if (both_numbers and math.isclose(known, value, abs_tol=1e-9)) or known == value:
                return point
        return None

    @property
    def label(self) -> str:
        return f"the paper's {self.source} ({self.dataset})"


_PLATEAU_SR = "no gain over SR 0.75 (paper: the curve plateaus at 0.75)"
_PLATEAU_PCT = "no gain over 50% (paper: larger, not more accurate)"

PAPER_FIGURES: dict[str, PaperFigure] = {
    "model.squeeze_ratio": PaperFigure(
        key="model.squeeze_ratio",
        source="Fig. 3a",
        dataset="ImageNet",
        setting="SqueezeNet v1.0 macroarchitecture, base_e = incr_e = 128, pct_3x3 = 0.5",
        summary="top-5 rises from 80.3% at 4.8MB (SR 0.125) to 86.0% at 19MB (SR 0.75) and "
        "plateaus; SR 1.0 is larger with no gain",
        points={
            0.125: PaperPoint(top5=0.803, size="4.8MB"),
            0.75: PaperPoint(top5=0.860, size="19MB", note="plateau"),
            1.0: PaperPoint(note=_PLATEAU_SR),
        },
    ),
    "model.pct_3x3": PaperFigure(
        key="model.pct_3x3",
        source="Fig. 3b",
        dataset="ImageNet",
        setting="SqueezeNet v1.0 macroarchitecture, SR = 0.5",
        summary="top-5 plateaus at 85.6% at 50% 3x3 filters (13MB); more 3x3 filters make the "
        "model larger without making it more accurate",
        points={
            0.5: PaperPoint(top5=0.856, size="13MB", note="plateau"),
            0.625: PaperPoint(note=_PLATEAU_PCT),
            0.75: PaperPoint(note=_PLATEAU_PCT),
            0.875: PaperPoint(note=_PLATEAU_PCT),
            0.99: PaperPoint(note=_PLATEAU_PCT),
        },
    ),
    "model.bypass": PaperFigure(
        key="model.bypass",
        source="Table 3",
        dataset="ImageNet",
        setting="SqueezeNet v1.0",
        summary="simple bypass is the most accurate of the three (60.4% top-1)",
        points={
            "none": PaperPoint(top1=0.575, top5=0.803, size="4.8MB"),
            "simple": PaperPoint(top1=0.604, top5=0.825, size="4.8MB", note="best"),
            "complex": PaperPoint(top1=0.588, top5=0.820, size="7.7MB"),
        },
    ),
    "model.pool_after": PaperFigure(
        key="model.pool_after",
        source="Strategy 3",
        dataset="ImageNet",
        setting="pool placement; the paper has no pooling ablation of its own",
        summary="downsample late (argued from He & Sun, 2015); v1.1 pools earlier than v1.0 for "
        "2.35x fewer MACs at 224 'without sacrificing accuracy' (release notes)",
        points={
            "conv1,fire4,fire8": PaperPoint(
                top1=0.575, top5=0.803, size="4.8MB", note="SqueezeNet v1.0's pools"
            ),
            "conv1,fire3,fire5": PaperPoint(
                note="SqueezeNet v1.1's pools (v1.1 also shrinks conv1): v1.0's accuracy "
                "(release notes; no number)"
            ),
        },
    ),
}


def paper_figure(key: str) -> PaperFigure | None:
    """The paper's ablation of swept field `key`, if the paper has one."""
    return PAPER_FIGURES.get(key)
