"""The reference judge's ratings distilled onto sentence embeddings (``hhalign.models.distill``), one fit per axis on
the reference's answers to that axis's prompt set. It reproduces the reference judge: its agreement with the
reference shows that, not that it measures harmlessness or helpfulness (a reference with negated ratings gives a
distilled judge that agrees with it just as well), so its verdict is at best "proxy of the reference judge", and
it rates on the reference's scale, with the reference's thresholds."""

from __future__ import annotations

from typing import Any

from hhalign.config.schema import JudgeSpec
from hhalign.judges.base import Judge
from hhalign.models.distill import Distilled, load_encoder
from hhalign.models.loading import local_folder


class DistilledJudge(Judge):
    def __init__(self, name: str, spec: JudgeSpec, batch_size: int, fits: dict[str, Distilled], thresholds: dict[str, float]):
        super().__init__(name, spec, batch_size)
        self.fits, self.thresholds = fits, thresholds

    def rate(self, prompts: list[str], responses: list[str], *, use: str, against: list[str] | None = None,
             batch_size: int | None = None, padding_side: str = "right", desc: str = "judge") -> list[float]:
        # each answer rated by the fit that never saw its prompt: the prompt's index in its list (a whole set, in order)
        return self.fits[use].rate(prompts, responses, list(range(len(prompts))))

    def threshold(self, use: str, default: float) -> float:
        return self.spec.threshold if self.spec.threshold is not None else self.thresholds[use]

    def scale(self) -> str:
        return "reference"


def load(name: str, spec: JudgeSpec, encoder_ref: str, reference: dict[str, dict[str, list[dict[str, Any]]]], axes: list[str],
         thresholds: dict[str, float]) -> DistilledJudge:
    """Fitted on each axis's prompt set only (a fit on both sets agreed less with the study's judge on helpful
    prompts, docs/study.md)."""
    encoder = load_encoder(local_folder(encoder_ref))
    fits = {s: Distilled.fit(encoder, {v: {s: sets[s]} for v, sets in reference.items() if s in sets}) for s in axes}
    return DistilledJudge(name, spec, 64, fits, thresholds)
