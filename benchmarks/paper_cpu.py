"""The paper preset, end to end through the real CLI, at the real shapes, on a CPU (issue 13).

    python benchmarks/paper_cpu.py                      # 1 training step per stage, 2 + 2 prompts: about 10 minutes
    python benchmarks/paper_cpu.py --steps 2 --prompts 10 --keep /tmp/paper_cpu

Builds random-weight OPT-350M and DeBERTa-v3-large folders (``hhalign.models.loading.save_random_checkpoint``: the
real architectures and tokenizer lengths, BPE tokenizers trained on the local data, no download), then runs

    hhalign run configs/paper.yaml --data-dir ../shared/data/hh-rlhf --set model.name_or_path=OPT
        --set score.reward_model=DEBERTA + the local data's layout, a few training steps and a few prompts

Everything else is the preset's: float32, the paper protocol, batch 2 x accumulation 4, SFT max_length 512,
DPO's TRL default 1024, gradient checkpointing as TRL sets it, LoRA r 8 on q_proj/v_proj, 50 new tokens, the
study's -3 / -2 thresholds. It then checks every stage's manifest and outputs and the report, and prints each
stage's wall time and the run's peak memory. A test would take too long for CI (10 minutes here on 2 cores),
so this is a benchmark the docs name (docs/performance.md); run it after changing anything on the paper path.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
STAGES = ("01_data", "03_sft", "04_dpo", "05_sft_dpo", "07_generate", "08_score", "09_metrics", "10_report")


def build_models(root: Path) -> tuple[Path, Path]:
    sys.path.insert(0, str(REPO / "src"))
    from hhalign.models.loading import save_random_checkpoint

    with gzip.open(SHARED / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["chosen"] for line in fh][:1500]
    opt = save_random_checkpoint("opt-350m", root / "opt-350m-random", texts)
    judge = save_random_checkpoint("deberta-v3-large", root / "deberta-v3-large-random", texts)
    return opt, judge


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1, help="optimizer steps per training stage (each 2 x 4 = 8 rows)")
    p.add_argument("--prompts", type=int, default=2, help="prompts per eval set")
    p.add_argument("--keep", type=Path, default=None, help="keep the models and the run here")
    args = p.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="paper_cpu_"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    opt, judge = build_models(root)
    helpful = root / "helpful.json"
    helpful.write_text(json.dumps(json.loads((SHARED / "paper" / "prompts" / "helpful_prompts.json").read_text())[: args.prompts]))
    sets = [f"output_dir={root / 'runs'}", f"model.name_or_path={opt}", f"score.reward_model={judge}",
            "data.train_subsets=[harmless-base]", "data.train_split=test", f"data.helpful_prompts_file={helpful}",
            "data.heldout_rows=8", f"data.eval_size={args.prompts}", f"sft.max_steps={args.steps}", f"dpo.max_steps={args.steps}",
            "sft.heldout_pairs=4", "dpo.heldout_pairs=4", "score.judge_pairs=8"]
    cmd = [sys.executable, "-m", "hhalign", "run", "configs/paper.yaml", "--data-dir", str(SHARED / "hh-rlhf"),
           *sum((["--set", s] for s in sets), [])]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run_started = time.time()
    done = subprocess.run(cmd, cwd=REPO, env=env)
    run_s = time.time() - run_started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    if done.returncode != 0:
        print(f"paper preset FAILED (exit {done.returncode}) after {run_s:.0f} s")
        return done.returncode
    run_dir = root / "runs" / "paper"
    problems = []
    for stage in STAGES:
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        problems += [f"{stage}/{o}" for o in manifest["outputs"] if not (run_dir / stage / o).exists()]
        print(f"  {stage:<12} {manifest['wall_seconds']:8.1f} s")
    metrics = json.loads((run_dir / "09_metrics" / "metrics.json").read_text())
    problems += [f"variant {v} missing" for v in ("base", "sft", "dpo", "sft_dpo") if v not in metrics["variants"]]
    problems += [f"report: {f} missing" for f in ("report.md", "report.html", "rates_ci.png", "judge.png")
                 if not (run_dir / "10_report" / f).is_file()]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    print(f"paper preset at real shapes: {'OK' if not problems else 'PROBLEMS: ' + ', '.join(problems)}; run {run_s:.0f} s "
          f"(with building the models {time.time() - started:.0f} s), peak RSS {peak:.1f} GiB; {cpu}, {os.cpu_count()} cores; "
          f"{args.steps} step(s) per training stage, {args.prompts} + {args.prompts} prompts; folder {root}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
