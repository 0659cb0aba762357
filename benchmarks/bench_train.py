"""Benchmark: training throughput with the study's TRL settings against hhalign's faster ones (same data, same
effective batch, same model).

    python benchmarks/bench_train.py --device cuda --steps 20                     # a GPU, the study's lengths
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --device cpu --steps 3 --max-length 256 --precision bf16

OPT-350M's architecture is built with random weights (same compute as the real model, no download); the
tokenizer is a byte-level BPE trained here on HH-RLHF dialogues (ids stay below OPT's vocabulary). The data are
real: harmless-base test pairs split into prompt/chosen/rejected with hhalign.data.hh.split_prompt. Each side trains
for exactly --steps optimizer steps on the same steps x 8 rows (one epoch over them, so both sides see the same
rows and the same useful tokens), each side in a fresh process so that its peak memory is its own.

study  the settings configs/paper.yaml gives hhalign (hhalign.models.training.trl_args on top of TRL 1.16's
       defaults): SFT full fine-tune, batch 2 x accumulation 4, max_length 512, padding to the longest in the
       micro-batch, no packing, gradient checkpointing on (TRL's default). DPO: LoRA r 8 / alpha 16 on q_proj and
       v_proj given to DPOTrainer as peft_config, batch 2 x 4, max_length TRL's default (1024), the reference is
       the same model with its adapter disabled, computed at every step.
ours   the same, plus:
       - gradient checkpointing off (it recomputes the forward pass: about a third more compute per step);
       - length grouping (train_sampling_strategy="group_by_length": the rows of each effective batch are
         sorted by length before they are cut into micro-batches, so little padding is fed);
       - a larger micro-batch with the same effective batch of 8 (default 8 x 1 on CUDA; 2 x 4 on CPU, where
         a larger micro-batch buys nothing and only adds padding);
       - SFT on CUDA with flash-attn installed: padding_free=True (sequences concatenated without padding, with
         position_ids), which OPT supports only with flash_attention_2: with sdpa or eager attention, OPT's mask
         ignores position_ids and packed sequences attend to each other (checked on transformers 5.23), so
         elsewhere length grouping is used instead (--sft-mode);
       - DPO: precompute_ref_log_probs=True (the reference log-probs of every pair computed once, before
         training, without autograd). Its time is counted in ours and also shown on its own.
Both sides use the same precision (--precision; auto = bf16 on a bf16 GPU, fp32 elsewhere, as hhalign does).

Figures: useful tokens/s (non-padding tokens fed to training steps: the attention_mask sum of every
micro-batch), DPO pairs/s, peak memory (CUDA: torch.cuda.max_memory_allocated; CPU: the process's peak
resident set, ru_maxrss, and its rise over the resident set before the trainer was built), and on CUDA the
model FLOPs utilisation 6 x params x tokens / time / --peak-flops. 6 x params per token holds for DPO with a
frozen base too: policy forward 2N + input-gradient backward 2N (no weight gradients) + reference forward 2N.

Measured on CPU (2 cores shared with other jobs, so +-15% between runs; 1 thread; bf16 both sides), with the
second command above: SFT 22.3 -> 38.3 useful tokens/s (x1.72), peak RSS x1.06; DPO 0.137 -> 0.205 pairs/s
(x1.50, the 34 s precompute included), peak RSS x1.50 (no gradient checkpointing), trainer.ref_model None on
both sides. With --steps 2: x1.63 and x1.68. In a 1-epoch run the precompute moves the reference forward out
of the steps rather than saving it (DPO without it: x1.42, separate run); it pays from the second epoch on.
The speed-up on CPU comes from gradient checkpointing off and from less padding (SFT tokens fed, padding
included: 4298 -> 3390 for the same 2965 useful ones). The CUDA paths (MFU, padding-free with flash-attn)
have not been run yet: no GPU was available when this was written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]
EFFECTIVE_BATCH = 8  # the study's 2 x 4
STUDY_SFT_MAX_LENGTH = 512
STUDY_DPO_MAX_LENGTH = 1024  # TRL's DPOConfig default, which the study kept


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per side (each of 8 rows)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--stage", choices=("sft", "dpo", "both", "dpo-stage"), default="both",
                   help="dpo-stage: hhalign's own DPO stage (hhalign.stages.train.run, variant dpo) on OPT-350M, its peak memory")
    p.add_argument("--max-length", type=int, default=None,
                   help=f"max_length for both sides (default: the study's, SFT {STUDY_SFT_MAX_LENGTH}, "
                        f"DPO {STUDY_DPO_MAX_LENGTH})")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="both sides; auto = bf16 on a bf16-capable GPU, fp32 elsewhere (hhalign's rule)")
    p.add_argument("--ours-batch", type=int, default=None,
                   help=f"our micro-batch; accumulation = {EFFECTIVE_BATCH} / it (default: 8 on CUDA, 2 on CPU)")
    p.add_argument("--sft-mode", choices=("auto", "group", "padding-free"), default="auto",
                   help="ours, SFT: padding-free (needs CUDA + flash-attn) or length grouping; auto picks")
    p.add_argument("--precompute-batch", type=int, default=None,
                   help="ours, DPO: precompute_ref_batch_size (default: 32 on CUDA, 1 on CPU: rows are unsorted there)")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra TRL config field for ours (YAML value), e.g. activation_checkpointing=true; repeatable")
    p.add_argument("--peak-flops", type=float, default=989e12, help="device peak FLOP/s for MFU (H100 bf16 dense: 989e12)")
    p.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary (must stay below OPT's 50272)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=SHARED, help="the shared data folder (holds hh-rlhf/)")
    p.add_argument("--json", type=Path, default=None, help="also write all figures here")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)  # "stage:side", run in a child process
    p.add_argument("--_out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.vocab_size >= 50272:
        p.error("--vocab-size must be below OPT-350M's 50272")
    return args


# ----------------------------------------------------------------------------- setup shared by both sides


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    return name


def use_bf16(args: argparse.Namespace, device: str) -> bool:
    import torch

    if args.precision == "auto":
        return device == "cuda" and torch.cuda.is_bf16_supported()
    return args.precision == "bf16"


def ours_batch(args: argparse.Namespace, device: str) -> tuple[int, int]:
    batch = args.ours_batch or (8 if device == "cuda" else 2)
    if EFFECTIVE_BATCH % batch:
        raise SystemExit(f"--ours-batch must divide the effective batch of {EFFECTIVE_BATCH}")
    return batch, EFFECTIVE_BATCH // batch


def sft_mode(args: argparse.Namespace, device: str) -> str:
    if args.sft_mode != "auto":
        return args.sft_mode
    return "padding-free" if device == "cuda" and importlib.util.find_spec("flash_attn") else "group"


def max_lengths(args: argparse.Namespace) -> dict[str, int]:
    return {"sft": args.max_length or STUDY_SFT_MAX_LENGTH, "dpo": args.max_length or STUDY_DPO_MAX_LENGTH}


def load_rows(args: argparse.Namespace) -> tuple[list[tuple[str, str, str]], Any]:
    """(rows, tokenizer): the same steps x 8 (prompt, chosen, rejected) rows for both sides, and the tokenizer."""
    from hhalign.data.hh import split_prompt
    from hhalign.models.loading import train_tokenizer

    path = args.data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass --data-dir (the folder holding hh-rlhf/)")
    triples = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            with contextlib.suppress(ValueError):
                triples.append(split_prompt(row["chosen"], row["rejected"]))
    tok = train_tokenizer([p + c for p, c, _ in triples[:3000]], vocab_size=args.vocab_size)
    tok.model_max_length = 2048
    tok.pad_token = tok.eos_token  # the study: pad = eos
    # DPOTrainer drops pairs whose prompt alone fills max_length: leave those out here, so both sides train on
    # exactly the rows drawn (and the DPO and SFT rows are the same draw)
    limit = min(max_lengths(args).values())
    usable = [t for t in triples if len(tok(t[0])["input_ids"]) < limit - 8]
    n = args.steps * EFFECTIVE_BATCH
    if n > len(usable):
        raise SystemExit(f"--steps {args.steps} needs {n} rows; {len(usable)} are usable")
    return random.Random(args.seed).sample(usable, n), tok


def paper_section(stage: str, **args: Any) -> Any:
    """configs/paper.yaml's section for the stage, with bench overrides on top of its pass-through args."""
    from hhalign.config.files import load_config

    cfg = load_config(REPO / "configs" / "paper.yaml")
    section = cfg.sft if stage == "sft" else cfg.dpo
    return dataclasses.replace(section, args={**section.args, **args}), cfg


def yaml_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


# ----------------------------------------------------------------------------- one side (child process)


class Meter:
    """Counts what reaches the training steps; times the reference precompute; reads peak memory."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.tokens = self.fed = self.pairs = self.micro_batches = 0
        self.precompute_s = 0.0
        self.baseline_rss = 0
        self.baseline_gpu = 0

    def wrap_compute_loss(self, trainer: Any, dpo: bool) -> None:
        original = trainer.compute_loss

        def counted(model: Any, inputs: dict[str, Any], *a: Any, **k: Any) -> Any:
            if model.training:
                ids = inputs["input_ids"]
                mask = inputs.get("attention_mask")
                self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())  # padding-free: no pads
                self.fed += int(ids.numel())
                self.micro_batches += 1
                if dpo:
                    self.pairs += ids.shape[0] // 2  # [chosen..., rejected...]
            return original(model, inputs, *a, **k)

        trainer.compute_loss = counted

    def wrap_precompute(self, trainer_cls: Any) -> None:
        original = trainer_cls._precompute_ref_logps

        def timed(trainer: Any, *a: Any, **k: Any) -> Any:
            self.sync()
            started = time.perf_counter()
            out = original(trainer, *a, **k)
            self.sync()
            self.precompute_s += time.perf_counter() - started
            return out

        trainer_cls._precompute_ref_logps = timed

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def start(self) -> None:
        self.baseline_rss = current_rss()
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline_gpu = torch.cuda.memory_allocated()

    def peak(self) -> dict[str, int]:
        out = {"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "baseline_rss": self.baseline_rss}
        if self.device == "cuda":
            import torch

            out.update(peak_gpu=torch.cuda.max_memory_allocated(), baseline_gpu=self.baseline_gpu)
        return out


def current_rss() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_side(args: argparse.Namespace, stage: str, side: str) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers.utils import logging as hf_logging

    from hhalign.config.files import library_class
    from hhalign.models.loading import build_random, n_params, opt_350m_config
    from hhalign.models.training import trl_args

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    bf16 = use_bf16(args, device)
    rows, tok = load_rows(args)
    max_length = max_lengths(args)[stage]
    model = build_random(opt_350m_config(), seed=args.seed)
    params = n_params(model)
    meter = Meter(device)

    common: dict[str, Any] = {
        "max_steps": args.steps, "max_length": max_length, "save_strategy": "no", "logging_steps": args.steps,
        "disable_tqdm": True, "bf16": bf16, "use_cpu": device == "cpu",
    }
    ours: dict[str, Any] = {}
    mode = None
    if side == "ours":
        batch, accum = ours_batch(args, device)
        ours = {"activation_checkpointing": False, "per_device_train_batch_size": batch,
                "gradient_accumulation_steps": accum, "train_sampling_strategy": "group_by_length"}
        if stage == "sft":
            mode = sft_mode(args, device)
            if mode == "padding-free":
                # TRL enforces no max_length without packing: the rows are truncated here instead
                ours.update(padding_free=True, max_length=None)
                ours.pop("train_sampling_strategy")
                if device == "cuda":
                    model.set_attn_implementation("flash_attention_2")
                else:
                    print("warning: padding-free on CPU runs OPT with sdpa attention, where packed sequences attend "
                          "to each other: a speed figure only, not valid training", file=sys.stderr)
        else:
            ours.update(precompute_ref_log_probs=True, remove_unused_columns=False,
                        precompute_ref_batch_size=args.precompute_batch or (32 if device == "cuda" else 1))
        for item in args.ours_set:
            key, _, value = item.partition("=")
            ours[key.strip()] = yaml_value(value)

    with tempfile.TemporaryDirectory(prefix=f"bench_train_{stage}_{side}_") as tmp:
        section, cfg = paper_section(stage, **common, **ours)
        if stage == "sft":
            from trl import SFTTrainer

            texts = [p + c for p, c, _ in rows]
            if mode == "padding-free":
                ids = [tok(t + tok.eos_token)["input_ids"][:max_length] for t in texts]
                dataset = Dataset.from_dict({"input_ids": ids})
                fixed: dict[str, Any] = {}
            else:
                dataset = Dataset.from_dict({"text": texts})
                fixed = {"dataset_text_field": "text"}
            targs = trl_args("sft", section, Path(tmp), args.seed, **fixed)
            meter.start()
            built = time.perf_counter()
            trainer = SFTTrainer(model=model, args=targs, train_dataset=dataset, processing_class=tok)
        else:
            from trl import DPOTrainer

            data: dict[str, list[Any]] = {k: [r[i] for r in rows] for i, k in enumerate(("prompt", "chosen", "rejected"))}
            if side == "ours":  # the lengths group_by_length sorts on (DPO rows have no input_ids column)
                data["length"] = [min(max(len(tok(p + c)["input_ids"]), len(tok(p + r)["input_ids"])), max_length)
                                  for p, c, r in rows]
            dataset = Dataset.from_dict(data)
            targs = trl_args("dpo", section, Path(tmp), args.seed)
            lora = library_class("dpo.lora")(task_type="CAUSAL_LM", **cfg.dpo.lora.args)
            meter.wrap_precompute(DPOTrainer)
            meter.start()
            built = time.perf_counter()
            trainer = DPOTrainer(model=model, args=targs, train_dataset=dataset, processing_class=tok, peft_config=lora)
        init_s = time.perf_counter() - built - meter.precompute_s
        meter.wrap_compute_loss(trainer, dpo=stage == "dpo")
        meter.sync()
        started = time.perf_counter()
        out = trainer.train()
        meter.sync()
        train_s = time.perf_counter() - started

    total_s = train_s + meter.precompute_s
    ta = trainer.args
    result: dict[str, Any] = {
        "stage": stage, "side": side, "device": device, "bf16": bf16, "params": params,
        "steps": trainer.state.global_step, "rows": len(rows), "micro_batch": ta.per_device_train_batch_size,
        "accumulation": ta.gradient_accumulation_steps, "gradient_checkpointing": bool(ta.activation_checkpointing),
        "max_length": max_length, "sampling": ta.train_sampling_strategy, "sft_mode": mode,
        "tokens": meter.tokens, "fed_tokens": meter.fed, "pairs": meter.pairs, "micro_batches": meter.micro_batches,
        "train_s": train_s, "precompute_s": meter.precompute_s, "total_s": total_s, "init_s": init_s,
        "tokens_per_s": meter.tokens / total_s, "train_loss": out.training_loss, **meter.peak(),
        "torch_threads": torch.get_num_threads(),
    }
    if stage == "dpo":
        result.update(pairs_per_s=meter.pairs / total_s, ref_model_is_none=trainer.ref_model is None,
                      precompute=bool(getattr(ta, "precompute_ref_log_probs", False)))
    if device == "cuda":
        result["mfu"] = 6 * params * meter.tokens / total_s / args.peak_flops
    if ours:
        result["ours_settings"] = {k: v for k, v in ours.items()}
    return result


# ----------------------------------------------------------------------------- driver


def run_child(argv: list[str], stage: str, side: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        worker = f"{stage}:{side}" if side else stage
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_worker", worker, "--_out", str(out)]
        started = time.time()
        with open(log, "w") as fh:
            code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        if code != 0 or not out.is_file():
            sys.stderr.write(log.read_text()[-6000:])
            raise SystemExit(f"{stage} {side} failed (exit {code})")
        result = json.loads(out.read_text())
        result["wall_s"] = time.time() - started
        print(f"  {stage:<3} {side:<5} done: {result['total_s']:.1f} s "
              f"({result['wall_s']:.0f} s with process start and setup)", flush=True)
        return result


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def print_table(results: list[dict[str, Any]]) -> None:
    cuda = any(r["device"] == "cuda" for r in results)
    head = f"{'stage':<5} {'side':<5} {'micro x acc':>11} {'gc':>3} {'tokens':>7} {'fed':>7} {'time s':>7} " \
           f"{'tokens/s':>9} {'pairs/s':>8} {'peak mem':>11} {'mem rise':>10}" + (f" {'MFU':>6}" if cuda else "") + \
           f" {'speed ratio':>11} {'mem ratio':>9}"
    print(head)
    print("-" * len(head))
    by_stage: dict[str, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_stage.setdefault(r["stage"], {})[r["side"]] = r
    for stage, sides in by_stage.items():
        for side in ("study", "ours"):
            r = sides.get(side)
            if r is None:
                continue
            mem = r["peak_gpu"] if cuda else r["peak_rss"]
            rise = mem - (r["baseline_gpu"] if cuda else r["baseline_rss"])
            study = sides.get("study")
            key = "pairs_per_s" if stage == "dpo" else "tokens_per_s"
            ratio = f"x{r[key] / study[key]:.2f}" if study and side == "ours" else ""
            study_mem = (study["peak_gpu"] if cuda else study["peak_rss"]) if study else None
            mratio = f"x{mem / study_mem:.2f}" if study and side == "ours" else ""
            pairs = f"{r['pairs_per_s']:.3f}" if stage == "dpo" else "-"
            gc = "on" if r["gradient_checkpointing"] else "off"
            print(f"{stage:<5} {side:<5} {r['micro_batch']:>5} x {r['accumulation']:<3} {gc:>3} "
                  f"{r['tokens']:>7} {r['fed_tokens']:>7} {r['total_s']:>7.1f} {r['tokens_per_s']:>9.1f} {pairs:>8} "
                  f"{_mib(mem):>11} {_mib(rise):>10}" + (f" {r.get('mfu', 0) * 100:>5.1f}%" if cuda else "") +
                  f" {ratio:>11} {mratio:>9}")
    print()
    for stage, sides in by_stage.items():
        ours = sides.get("ours")
        if ours is None:
            continue
        print(f"{stage} ours: {json.dumps(ours.get('ours_settings', {}), sort_keys=True)}")
        if stage == "dpo":
            where = (f"reference log-probs precomputed in {ours['precompute_s']:.1f} s (counted in its time; training "
                     f"steps alone {ours['train_s']:.1f} s)" if ours["precompute"] else "reference log-probs not precomputed")
            print(f"dpo ours: {where}; trainer.ref_model is None (no second copy of the model): "
                  f"study {sides.get('study', {}).get('ref_model_is_none')}, ours {ours['ref_model_is_none']}")
        if stage == "sft" and ours.get("sft_mode"):
            print(f"sft ours: mode {ours['sft_mode']}")
    r0 = results[0]
    print(f"device {r0['device']}, {'bf16' if r0['bf16'] else 'fp32'} both sides, torch threads {r0['torch_threads']}, "
          f"OPT-350M {r0['params'] / 1e6:.0f}M params (random weights); tokens = non-padding tokens fed to training "
          f"steps, fed = with padding; time = training steps + reference precompute; mem rise = peak minus the "
          f"resident set before the trainer was built")


def run_dpo_stage(args: argparse.Namespace) -> dict[str, Any]:
    """hhalign's DPO stage as `hhalign dpo` runs it (train.dpo.run), on a random-weight OPT-350M folder: peak RSS."""
    import torch

    from hhalign.artifacts import write_jsonl
    from hhalign.config.files import load_config
    from hhalign.models.loading import build_random, opt_350m_config
    from hhalign.engine.table import stage_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, tok = load_rows(args)
    with tempfile.TemporaryDirectory(prefix="bench_dpo_stage_") as tmp:
        model_dir, run_dir = Path(tmp) / "opt350m", Path(tmp) / "run"
        build_random(opt_350m_config(), seed=args.seed).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        data = stage_dir(run_dir, "data")
        pairs = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows]
        write_jsonl(data / "prefs.jsonl", pairs)
        write_jsonl(data / "heldout.jsonl", pairs[:8])
        sets = [f"model.name_or_path={model_dir}", f"output_dir={tmp}", "name=run", f"dpo.max_steps={args.steps}",
                "dpo.save_strategy='no'", f"dpo.bf16={str(use_bf16(args, resolve_device(args.device))).lower()}"]
        if args.max_length:
            sets.append(f"dpo.max_length={args.max_length}")
        cfg = load_config(REPO / "configs" / "paper.yaml", overrides=sets)
        from hhalign.stages.train import run as train_run

        started = time.perf_counter()
        base_rss = current_rss()
        train_run(cfg, run_dir, variant="dpo")
        total_s = time.perf_counter() - started
    return {"stage": "dpo-stage", "steps": args.steps, "total_s": total_s, "baseline_rss": base_rss,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    if args._worker == "dpo-stage":
        args._out.write_text(json.dumps(run_dpo_stage(args), indent=2, default=str))
        return 0
    if args.stage == "dpo-stage":
        result = run_child(argv, "dpo-stage", "")
        print(f"hhalign DPO stage (train.dpo.run), OPT-350M random weights, {args.steps} steps x {EFFECTIVE_BATCH} rows: "
              f"{result['total_s']:.1f} s, peak RSS {_mib(result['peak_rss'])} (before the stage: {_mib(result['baseline_rss'])})")
        return 0
    if args._worker:
        stage, side = args._worker.split(":")
        result = run_side(args, stage, side)
        args._out.write_text(json.dumps(result, indent=2, default=str))
        return 0
    stages = ("sft", "dpo") if args.stage == "both" else (args.stage,)
    print(f"bench_train: {', '.join(stages)}; {args.steps} steps x {EFFECTIVE_BATCH} rows per side; "
          f"max_length {max_lengths(args)}; each side in its own process", flush=True)
    results = [run_child(argv, stage, side) for stage in stages for side in ("study", "ours")]
    print()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
