"""What each stage function returns to a Python caller: a small typed record of what it wrote.

The artefacts on disk stay the source of truth (the report and the CLI read those); these records
give an importer the path, the headline numbers and the full artefact dict without re-reading
files, e.g. ``lasa.run_evaluate(cfg).asr`` or ``lasa.run_interpret(cfg).load_ssi()``.
``run_locate`` returns its :class:`lasa.locate.Bottleneck`, already typed. Under a multi-process
launcher the ranks other than 0 write nothing: their records carry ``rank`` and an empty dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class InterpretResult:
    """``lasa interpret``: the SSI in ``path`` (ssi.json, ssi.safetensors) and its ``metrics.json``."""

    path: Path
    metrics: dict

    @property
    def layer(self) -> int:
        return int(self.metrics["layer"])

    @property
    def threshold(self) -> float:
        return float(self.metrics["threshold"])

    @property
    def unseen_auroc(self) -> float | None:
        return self.metrics.get("macro_unseen", {}).get("auroc")

    def load_ssi(self) -> Any:
        from lasa.ssi import SSI

        return SSI.load(self.path)


@dataclass
class AlignResult:
    """``lasa align``: ``RUN/align/<method>/`` and its ``summary.json`` (a dry run has no adapter)."""

    path: Path
    method: str
    summary: dict
    rank: int = 0

    @property
    def adapter(self) -> Path | None:
        p = self.path / "adapter"
        return p if (p / "adapter_config.json").is_file() else None

    @property
    def steps(self) -> int:
        return int(self.summary.get("training", {}).get("steps", 0))


@dataclass
class GenerateResult:
    """``lasa generate``: the per-sample records of one variant, plus the model and gate it used
    (kept so that ``run_evaluate`` measures utility without loading the model again)."""

    variant: str
    path: Path
    info: dict
    multijail: list[dict]
    xstest: list[dict]
    seconds: float
    xstest_mt: list[dict] = field(default_factory=list)
    lm: Any = field(default=None, repr=False)
    gate: Any = field(default=None, repr=False)


@dataclass
class EvaluateResult:
    """``lasa evaluate``: ``RUN/eval/<variant>/results.json`` as a dict, with its headline numbers."""

    variant: str
    path: Path
    results: dict
    rank: int = 0

    @property
    def default_judge(self) -> str:
        return self.results["default_judge"]

    @property
    def asr(self) -> float:
        """Average MultiJail ASR by the default judge (mean of the per-language rates)."""
        return float(self.results["asr"][self.default_judge]["average"])

    @property
    def asr_interval(self) -> tuple[float, float]:
        iv = self.results["asr"][self.default_judge]["intervals"]["average"]
        return float(iv["low"]), float(iv["high"])
