"""Who rates an answer: a judge of one of four kinds, each a module behind one interface (``hhalign.judges.base.Judge``:
``rate(prompts, responses, use=...) -> ratings``, a rating above ``threshold(use, ...)`` a positive label).

- ``reward_model``: a sequence classifier's first logit (the study's judge; a run's own 06_rm);
- ``classifier``: a generative safety classifier read as a probability (Llama Guard);
- ``llm``: a rubric-prompted instruct model, pointwise (expected score) or pairwise against base (both orders);
- ``distilled``: the reference judge's ratings distilled onto sentence embeddings (a proxy of that judge).

A run names them per axis (``score.harmful_judge``, ``score.helpful_judge``: one name or a list, the first giving
the headline rate), declares any beyond the two built in ones under ``score.judges``, and may name an llm judge that
also counts refusals (``score.refusal_judge``). ``load_panel`` loads every judge the config names, before anything
is rated, so a judge that cannot load stops the stage with one line and the run folder as it was.
"""

from __future__ import annotations

from typing import Any

from hhalign.config.schema import PROMPT_SETS, JudgeSpec, ScoreSection
from hhalign.errors import ModelLoadError, UserError
from hhalign.judges import classifier, distilled, llm, reward_model
from hhalign.judges.base import Judge, heldout, invariance

__all__ = ["Judge", "heldout", "invariance", "load_one", "load_panel", "uses", "model_of"]


def uses(cfg: ScoreSection) -> dict[str, list[str]]:
    """Each judge the config names -> what it rates: the axes (harmful, helpful) it is listed for, and refusal."""
    out: dict[str, list[str]] = {}
    for axis in PROMPT_SETS:
        for name in cfg.axis_judges(axis):
            out.setdefault(name, []).append(axis)
    if cfg.refusal_judge:
        out.setdefault(cfg.refusal_judge, []).append("refusal")
    return out


def model_of(name: str, cfg: ScoreSection, run_reward_model: str) -> str:
    """The model a judge loads: its own ``model``, else the run's reward model (kind reward_model) or the distilling
    encoder (kind distilled)."""
    spec = cfg.spec(name)
    if spec.model:
        return spec.model
    return cfg.distill_encoder if spec.kind == "distilled" else run_reward_model


def _where(name: str, axes: list[str]) -> str:
    return f"judge '{name}' ({', '.join(f'score.{a}_judge' if a in PROMPT_SETS else 'score.refusal_judge' for a in axes)})"


def load_panel(cfg: ScoreSection, run_reward_model: str, reward_loaded: tuple | None,
               reference: dict[str, dict[str, list[dict[str, Any]]]] | None, reference_thresholds: dict[str, float]) -> dict[str, Judge]:
    """Every judge the config names, loaded. ``reward_loaded``: the run's reward model already loaded (model,
    tokenizer, device), shared by every reward_model judge on that model."""
    panel: dict[str, Judge] = {}
    for name, axes in uses(cfg).items():
        model = model_of(name, cfg, run_reward_model)
        shared = reward_loaded if model == run_reward_model else None
        panel[name] = load_one(name, cfg.spec(name), cfg, model, axes, shared, reference, reference_thresholds)
    return panel


def load_one(name: str, spec: JudgeSpec, cfg: ScoreSection, model: str, uses: list[str], reward_loaded: tuple | None = None,
             reference: dict[str, dict[str, list[dict[str, Any]]]] | None = None,
             reference_thresholds: dict[str, float] | None = None) -> Judge:
    """One judge by its kind's loader; ``uses``: what it rates (axes, refusal). A model that cannot serve as this
    judge: a UserError naming the judge and the keys that name it."""
    where = _where(name, uses)
    try:
        if spec.kind == "reward_model":
            return reward_model.load(name, spec, cfg, model, where, reward_loaded)
        if spec.kind == "classifier":
            return classifier.load(name, spec, cfg, model, where)
        if spec.kind == "llm":
            return llm.load(name, spec, cfg, model, where, uses)
        return distilled.load(name, spec, model, reference or {}, [a for a in uses if a in PROMPT_SETS], reference_thresholds or {})
    except ModelLoadError as e:
        raise UserError(str(e) if str(e).startswith(where) else f"{where}: {e}") from e
