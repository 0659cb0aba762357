"""Evaluated model cards: each variant's HmR / HpR / CAS with intervals, the judge of each axis and its verdict, and
the caveats the report prints, as a Hugging Face model card whose ``model-index`` metadata the hub renders
(``huggingface_hub.ModelCard``, ``EvalResult``); and one card for the study.

    cards = variant_cards(RunFolder("runs/smol"))      # {variant: ModelCard}
    write_cards(RunFolder("runs/smol"), Path("cards")) # cards/README.md (the study), cards/VARIANT/README.md

TRL writes a card with the training metadata but no evaluation; this is the card of the model as it was judged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hhalign.artifacts import atomic_write_text
from hhalign.config.schema import PROMPT_SETS
from hhalign.data.sources import is_gguf, looks_local_model
from hhalign.engine.folder import RunFolder
from hhalign.errors import UserError

SETS = {"harmful": ("HmR", "harmlessness rate (HmR)", "the study's harmful prompts"),
        "helpful": ("HpR", "helpfulness rate (HpR)", "the study's helpful prompts")}


def _hub_id(ref: str | None) -> str | None:
    """A model reference the hub can link (an id, not a folder, a pkg: path or a .gguf file)."""
    if not ref or ref == "tiny" or is_gguf(ref) or ref.startswith("pkg:") or looks_local_model(ref):
        return None
    return ref


def _fmt(value: float | None, ci: list[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1f}" + (f" ({ci[0]:.1f}–{ci[1]:.1f})" if ci else "")


def variant_card(folder: RunFolder, variant: str, metrics: dict[str, Any]) -> ModelCard:
    """The card of one variant: metadata (base model, data, method, the eval results) and a body."""
    block = metrics["variants"][variant]
    config, starts = folder.config(), folder.starts()
    data = config.get("data") or {}
    dataset = _hub_id(str(data.get("source") or "")) or "Anthropic/hh-rlhf"
    method = (folder.declared().get(variant) or {}).get("method")  # the list form's names carry the study's methods
    axes = (metrics.get("validity") or {}).get("axes") or {}
    results, rows = [], []
    for s in PROMPT_SETS:
        name, long, what = SETS[s]
        value, ci = block["exact"].get(name), (block["ci"].get(name) or {}).get("wilson")
        status = (axes.get(s) or {}).get("status", "unvalidated")
        judge = ((metrics.get("judge") or {}).get("axes") or {}).get(s, {}).get("judge") or "reward_model"
        if value is not None:
            results.append(EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=f"HH-RLHF, {what}",
                                      metric_type=name.lower(), metric_name=long, metric_value=value,
                                      metric_args={"ci95_wilson": ci, "judge": judge, "judge_verdict": status,
                                                   "threshold": metrics["thresholds"][s]}))
        rows.append(f"| {name} | {_fmt(value, ci)} | {judge} | {status} |")
    cas, cas_ci = block["exact"].get("CAS"), (block["ci"].get("CAS") or {}).get("bootstrap")
    if cas is not None:
        results.append(EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name="HH-RLHF, the study's prompts",
                                  metric_type="cas", metric_name="CAS (mean of HmR and HpR)", metric_value=cas,
                                  metric_args={"ci95_bootstrap": cas_ci}))
    base = _hub_id((config.get("model") or {}).get("name_or_path"))
    card_data = ModelCardData(model_name=f"{folder.path.name}: {block['label']}", base_model=base, datasets=[dataset],
                              tags=["hhalign", *([method] if method else []), "hh-rlhf"], eval_results=results or None)
    mine = [c for c in metrics.get("caveats") or [] if not str(c.get("kind", "")).startswith("more_") or c["text"].startswith(block["label"] + " ")]
    caveats = "\n".join(f"- {c['text']}" for c in mine) or "- none"  # the run's caveats, and the flags on this variant
    start = starts.get(variant)
    body = f"""
# {folder.path.name}: {block['label']}

{f"Trained with {method} from {start}" if start else "The base model as loaded"} by hhalign in the run
`{folder.path.name}` (config hash `{(folder.run_info() or {}).get('config_hash', 'unknown')}`), on {dataset}.
Base model: {base or (config.get('model') or {}).get('name_or_path')}.

## Evaluation

Greedy answers to the study's {block['sets'].get('harmful', {}).get('n', 0)} harmful and
{block['sets'].get('helpful', {}).get('n', 0)} helpful prompts, each judged; percentages with 95% intervals
(Wilson for the rates, bootstrap for CAS). A rate is only as good as its judge: the verdict says what shows that the
judge measures the axis.

| rate | % (95%) | judge | judge's verdict |
|---|---|---|---|
{chr(10).join(rows)}
| CAS | {_fmt(cas, cas_ci)} | | |

## Caveats

{caveats}
"""
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")


def study_card(folder: RunFolder, metrics: dict[str, Any]) -> ModelCard:
    """The run's card: every variant's rates side by side, and the caveats."""
    lines = ["| model | HmR % (95%) | HpR % (95%) | CAS % (95%) |", "|---|---|---|---|"]
    for v, block in metrics["variants"].items():
        cells = [_fmt(block["exact"].get(k), (block["ci"].get(k) or {}).get("wilson" if k != "CAS" else "bootstrap")) for k in ("HmR", "HpR", "CAS")]
        lines.append(f"| {block['label']} | " + " | ".join(cells) + " |")
    caveats = "\n".join(f"- {c['text']}" for c in metrics.get("caveats") or []) or "- none"
    card_data = ModelCardData(model_name=folder.path.name, base_model=_hub_id((folder.config().get("model") or {}).get("name_or_path")),
                              tags=["hhalign", "hh-rlhf"])
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n# {folder.path.name}\n\nAn hhalign study: each variant judged on the "
                     f"study's harmful and helpful prompts.\n\n" + "\n".join(lines) + f"\n\n## Caveats\n\n{caveats}\n")


def write_cards(folder: RunFolder, out: Path) -> list[Path]:
    """out/README.md (the study) and out/VARIANT/README.md for every variant the metrics measured."""
    metrics = folder.metrics()
    if metrics is None:
        raise UserError(f"{folder.path}: no {folder.stage('metrics').name}/metrics.json to put on the cards: run `hhalign metrics CONFIG` "
                        "(or `hhalign run CONFIG`) first")
    cards = {out / "README.md": study_card(folder, metrics)} | {out / v / "README.md": variant_card(folder, v, metrics) for v in metrics["variants"]}
    for path, card in cards.items():  # every card built before any is written
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, str(card))
    return list(cards)
