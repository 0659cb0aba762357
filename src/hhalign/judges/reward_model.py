"""A reward model as a judge: a sequence classifier whose first logit rates (prompt, response), the study's judge
(``OpenAssistant/reward-model-deberta-v3-large-v2``) and the one a run trains (06_rm). It measures which of two
replies people preferred; it was not trained to say whether one reply is harmful."""

from __future__ import annotations

from typing import Any

from hhalign.config.schema import JudgeSpec, ScoreSection
from hhalign.judges.base import Judge
from hhalign.models.judge import load_judge, score_pairs


class RewardModelJudge(Judge):
    def __init__(self, name: str, spec: JudgeSpec, batch_size: int, loaded: tuple[Any, Any, Any]):
        super().__init__(name, spec, batch_size)
        self.model, self.tok, self.device = loaded

    def rate(self, prompts: list[str], responses: list[str], *, use: str, against: list[str] | None = None,
             batch_size: int | None = None, padding_side: str = "right", desc: str = "judge") -> list[float]:
        return score_pairs(self.model, self.tok, prompts, responses, batch_size or self.batch_size, device=self.device,
                           desc=desc, padding_side=padding_side)


def load(name: str, spec: JudgeSpec, cfg: ScoreSection, model: str, where: str, loaded: tuple | None = None) -> RewardModelJudge:
    if loaded is None:
        loaded = load_judge(model, cfg, where)
    return RewardModelJudge(name, spec, spec.batch_size or cfg.batch_size, loaded)
