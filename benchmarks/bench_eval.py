"""Benchmark: the study's one-at-a-time evaluation against hhalign's batched generate and score.

    python benchmarks/bench_eval.py --n 100 --batch-size 16 --device auto
    python benchmarks/bench_eval.py --n 16 --device cpu --threads 2 --dtype float32   # a small CPU run

Both sides run the real architectures with random weights (same compute as the real models, no
download): OPT-350M answers N of the study's prompts (harmful and helpful alternately), and the
DeBERTa-v3-large reward model scores N of the study's released (prompt, response) pairs. The
tokenizers are byte-level BPEs trained here on HH-RLHF dialogues (ids stay below the models'
vocabularies). Generation is forced to exactly 50 new tokens on both sides (min_new_tokens =
max_new_tokens = 50), so both do the same work however early a random model would emit eos.
Both sides run without autograd (generate always does; scoring is wrapped in inference_mode).
The study's side runs in float32, as the study did (transformers 4 loaded weights in float32);
hhalign's side runs once per --dtype: in float32 the ratio measures batching alone, and the script
checks that both sides agree (identical responses, ratings within 1e-5); in bfloat16 (hhalign's
`dtype: bfloat16`, native on GPUs and on CPUs with AMX) it prints how many responses are still
identical and how far the ratings moved. Random weights are the worst case for agreement: their
next-token scores are near ties, which a rounding difference flips.

On CPU, give --threads no more than the idle cores: with 2 threads on 2 cores of which another
process held one, every operation waited on the descheduled thread (a decode step of OPT-350M
took 1.7 s instead of 0.13 s with 1 thread).
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import torch

from hhalign.config.schema import GenerateSection
from hhalign.models.generation import _study_loop, generate_responses, length_batches, prefill_overhead
from hhalign.models.loading import DTYPES, build_random, deberta_v3_large_config, opt_350m_config, pick_device, train_tokenizer
from hhalign.models.judge import _score_one_at_a_time, pass_overhead, score_pairs

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NEW_TOKENS = 50  # the study's budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="prompts to answer and pairs to score (each side)")
    p.add_argument("--batch-size", type=int, default=16, help="hhalign's batch size for both stages")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--dtype", default="float32,bfloat16", help="hhalign's precisions to time, comma-separated")
    p.add_argument("--only", choices=("generate", "score"), default=None, help="run one half only")
    p.add_argument("--data-dir", type=Path, default=SHARED, help="the shared data folder (paper/ and hh-rlhf/)")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- inputs


def _alternate(a: list, b: list, n: int) -> list:
    """a[0], b[0], a[1], b[1], ... : harmful and helpful alike."""
    mixed = [x for pair in zip(a, b) for x in pair]
    if n > len(mixed):
        raise SystemExit(f"--n {n} is more than the {len(mixed)} available")
    return mixed[:n]


def load_inputs(data_dir: Path, n: int) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    paper = data_dir / "paper"
    harmful = json.loads((paper / "prompts" / "harmful_prompts.json").read_text())
    helpful = json.loads((paper / "prompts" / "helpful_prompts.json").read_text())
    rows_a = json.loads((paper / "responses" / "1_base_harmful.json").read_text())
    rows_b = json.loads((paper / "responses" / "1_base_helpful.json").read_text())
    rows_a += json.loads((paper / "responses" / "2_sft_harmful.json").read_text())
    rows_b += json.loads((paper / "responses" / "2_sft_helpful.json").read_text())
    pairs = [(r["prompt"], r["response"]) for r in _alternate(rows_a, rows_b, n)]
    with gzip.open(data_dir / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        texts = [json.loads(line)["chosen"] for line in fh]
    return _alternate(harmful, helpful, n), pairs, texts


def _timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def _describe(name: str, what: str, n_tokens: list[int], batches: list[list[int]], groups: list[list[list[int]]]) -> None:
    real = sum(n_tokens)
    padded = sum(len(g) * n_tokens[g[0]] for gs in groups for g in gs)
    print(f"{name}: {what}, {len(n_tokens)} of {min(n_tokens)}-{max(n_tokens)} tokens (mean {real / len(n_tokens):.0f})")
    print(f"{name}: {len(batches)} batches of {[len(b) for b in batches]}, read in {sum(map(len, groups))} passes, "
          f"{padded / real:.2f} padded tokens per real token")


def _report(name: str, n: int, unit: str, study_s: float, ours: dict[str, float]) -> None:
    print(f"{name}: study one-at-a-time float32 {study_s:8.1f} s  {n / study_s:7.2f} {unit}/s")
    for dtype, ours_s in ours.items():
        print(f"{name}: hhalign batched {dtype:>13} {ours_s:8.1f} s  {n / ours_s:7.2f} {unit}/s  speed-up x{study_s / ours_s:.1f}")


# ----------------------------------------------------------------------------- the two halves


def bench_generate(prompts: list[str], texts: list[str], batch_size: int, device: torch.device, dtypes: list[str]) -> dict[str, float]:
    tok = train_tokenizer(texts, vocab_size=8192)
    tok.pad_token = tok.eos_token  # the study's setting
    tok.model_max_length = opt_350m_config().max_position_embeddings
    model = build_random(opt_350m_config()).eval().to(device)
    n_tokens = [len(tok(p)["input_ids"]) for p in prompts]
    batches = length_batches(n_tokens, batch_size)
    groups = [length_batches([n_tokens[i] - 1 for i in b], len(b), prefill_overhead(device)) for b in batches]
    groups = [[[b[j] for j in g] for g in gs] for b, gs in zip(batches, groups)]
    _describe("generate", f"OPT-350M (random weights), {NEW_TOKENS} new tokens per prompt", n_tokens, batches, groups)
    force = {"min_new_tokens": NEW_TOKENS}
    _study_loop(model, tok, prompts[:1], max_new_tokens=2)  # warm-up (allocator, kernels)
    want, study_s = _timed(lambda: _study_loop(model, tok, prompts, max_new_tokens=NEW_TOKENS, **force), device)
    times, same = {}, {}
    for dtype in dtypes:
        cfg = GenerateSection(max_new_tokens=NEW_TOKENS, batch_size=batch_size, dtype=dtype)
        m = model.to(DTYPES[dtype])
        generate_responses(m, tok, prompts[:2], cfg, device=device, progress=False, generate_kwargs={"max_new_tokens": 2})
        rows, times[dtype] = _timed(
            lambda: generate_responses(m, tok, prompts, cfg, device=device, progress=False, generate_kwargs=force), device
        )
        assert all(r["n_new_tokens"] == NEW_TOKENS for r in rows)
        same[dtype] = sum(r["response"] == w for r, w in zip(rows, want))
    model.to(torch.float32)
    _report("generate", len(prompts), "prompts", study_s, times)
    for dtype, k in same.items():
        print(f"generate: {dtype}: responses identical to the study loop's: {k}/{len(prompts)}")
    return {d: study_s / t for d, t in times.items()}


def bench_score(pairs: list[tuple[str, str]], texts: list[str], batch_size: int, device: torch.device, dtypes: list[str]) -> dict[str, float]:
    tok = train_tokenizer(texts, vocab_size=8192, kind="classifier")  # model_max_length 512, as the RM's
    model = build_random(deberta_v3_large_config(), reward=True).eval().to(device)
    prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
    n_tokens = [len(tok(p, r, truncation=True)["input_ids"]) for p, r in pairs]
    batches = length_batches(n_tokens, batch_size, pass_overhead(device))
    _describe("score", "DeBERTa-v3-large reward model (random weights), pairs", n_tokens, batches, [[b] for b in batches])
    with torch.inference_mode():
        _score_one_at_a_time(model, tok, prompts[:1], responses[:1])  # warm-up
        want, study_s = _timed(lambda: _score_one_at_a_time(model, tok, prompts, responses), device)
    times, diff = {}, {}
    for dtype in dtypes:
        m = model.to(DTYPES[dtype])
        score_pairs(m, tok, prompts[:2], responses[:2], batch_size, device=device, progress=False)  # warm-up
        got, times[dtype] = _timed(lambda: score_pairs(m, tok, prompts, responses, batch_size, device=device, progress=False), device)
        diff[dtype] = max(abs(a - b) for a, b in zip(got, want))
    model.to(torch.float32)
    _report("score", len(pairs), "pairs", study_s, times)
    spread = max(want) - min(want)
    for dtype, d in diff.items():
        print(f"score: {dtype}: max |hhalign - study| = {d:.2e} (ratings spread over {spread:.2f})")
    return {d: study_s / t for d, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}; --n {args.n} --batch-size {args.batch_size}")
    prompts, pairs, texts = load_inputs(args.data_dir, args.n)
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise SystemExit(f"--dtype {','.join(unknown)}: use {', '.join(DTYPES)}")
    ratios = {}
    if args.only in (None, "generate"):
        ratios["generate"] = bench_generate(prompts, texts, args.batch_size, device, dtypes)
    if args.only in (None, "score"):
        ratios["score"] = bench_score(pairs, texts, args.batch_size, device, dtypes)
    print("summary: " + "; ".join(f"{k} " + ", ".join(f"{d} x{r:.1f}" for d, r in v.items()) for k, v in ratios.items()))


if __name__ == "__main__":
    main()
