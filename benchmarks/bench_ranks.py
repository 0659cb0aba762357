"""Benchmark: data-parallel generate and score, N processes of `accelerate launch` against one process.

    python benchmarks/bench_ranks.py --n 32 --processes 2            # on a CPU: 1 process x 2 threads, 2 x 1
    python benchmarks/bench_ranks.py --n 256 --processes 8 --device cuda   # a machine with 8 GPUs

The work is hhalign's own generate and score (``hhalign.models.generation.generate_responses``,
``hhalign.models.judge.score_pairs``): the batches one process forms are dealt whole to the ranks and the
rows gathered back in order (``hhalign.parallel``). The models are the study's architectures with random
weights (OPT-350M answers N of the study's prompts, 50 new tokens each, forced; the DeBERTa-v3-large reward
model rates N of the study's pairs), built from the same seed on every rank, as in ``bench_eval.py``.

The script runs itself twice: once as one process, then under ``accelerate launch --num_processes P``
(``--multi_gpu`` goes through torchrun, which on a CPU-only machine forms a gloo group). On a CPU the
threads are split so that both runs use the same cores: the one process gets P x ``--threads`` threads,
each of the P processes ``--threads``. It prints each run's wall time per stage (the gather included,
model loading not), the ratio, and whether the two runs' responses and ratings are identical (they are
when the per-process arithmetic is: a different thread count may round a float32 sum differently, and
random weights make near-ties that such a rounding flips).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import NEW_TOKENS, SHARED, load_inputs  # noqa: E402  (a sibling script, not a package)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=32, help="prompts to answer and pairs to rate")
    p.add_argument("--batch-size", type=int, default=8, help="hhalign's batch size for both stages")
    p.add_argument("--processes", type=int, default=2, help="processes of the launch")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process of the launch")
    p.add_argument("--device", default="cpu", help="cpu or cuda (each process its own GPU)")
    p.add_argument("--only", choices=("generate", "score"), default=None, help="time one stage only")
    p.add_argument("--data-dir", type=Path, default=SHARED, help="the shared data folder (paper/ and hh-rlhf/)")
    p.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # internal: write results here
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One process of a run: time generate and score; rank 0 writes times and outputs to ``args.worker``."""
    import torch

    from hhalign import parallel
    from hhalign.config.schema import GenerateSection
    from hhalign.models.generation import generate_responses
    from hhalign.models.judge import score_pairs
    from hhalign.models.loading import build_random, deberta_v3_large_config, opt_350m_config, pick_device, train_tokenizer

    device = pick_device(args.device)
    prompts, pairs, texts = load_inputs(args.data_dir, args.n)
    out: dict = {"processes": parallel.size(), "threads": torch.get_num_threads()}

    def timed(name: str, fn):
        parallel.barrier(name)
        start = time.perf_counter()
        result = fn()
        parallel.barrier(name)
        out[name] = {"seconds": time.perf_counter() - start, "result": result}

    if args.only in (None, "generate"):
        tok = train_tokenizer(texts, vocab_size=8192)
        tok.pad_token = tok.eos_token
        tok.model_max_length = opt_350m_config().max_position_embeddings
        model = build_random(opt_350m_config()).eval().to(device)
        cfg = GenerateSection(max_new_tokens=NEW_TOKENS, batch_size=args.batch_size)
        force = {"min_new_tokens": NEW_TOKENS}
        generate_responses(model, tok, prompts[:1], cfg, device=device, progress=False, generate_kwargs={"max_new_tokens": 2})
        timed("generate", lambda: [r["response"] for r in generate_responses(model, tok, prompts, cfg, device=device,
                                                                             progress=False, generate_kwargs=force)])
        del model
    if args.only in (None, "score"):
        tok = train_tokenizer(texts, vocab_size=8192, kind="classifier")
        model = build_random(deberta_v3_large_config(), reward=True).eval().to(device)
        p, r = [a for a, _ in pairs], [b for _, b in pairs]
        score_pairs(model, tok, p[:1], r[:1], args.batch_size, device=device, progress=False)
        timed("score", lambda: score_pairs(model, tok, p, r, args.batch_size, device=device, progress=False))
    if parallel.is_main():
        args.worker.write_text(json.dumps(out))


def _run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def _cpu() -> str:
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        return worker(args)
    own = [sys.argv[0] if argv is None else __file__, "--n", str(args.n), "--batch-size", str(args.batch_size),
           "--device", args.device, "--data-dir", str(args.data_dir), *(["--only", args.only] if args.only else [])]
    base = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if args.device == "cpu":
        base["CUDA_VISIBLE_DEVICES"] = ""
    print(f"machine: {_cpu()}; device {args.device}; --n {args.n} --batch-size {args.batch_size}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one.json", Path(tmp) / "many.json"
        _run([sys.executable, *own, "--worker", str(one)], {**base, "OMP_NUM_THREADS": str(args.threads * args.processes)})
        results[1] = json.loads(one.read_text())
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = Path(sys.executable).with_name("accelerate")
        _run([str(launcher), "launch", "--multi_gpu", "--num_processes", str(args.processes), "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
              *own, "--worker", str(many)], {**base, "OMP_NUM_THREADS": str(args.threads)})
        results[args.processes] = json.loads(many.read_text())
    for stage in ("generate", "score"):
        if stage not in results[1]:
            continue
        a, b = results[1][stage], results[args.processes][stage]
        unit = "prompts" if stage == "generate" else "pairs"
        same = sum(x == y for x, y in zip(a["result"], b["result"]))
        agree = f"identical {same}/{args.n}"
        if stage == "score":
            agree += f", max |difference| {max(abs(x - y) for x, y in zip(a['result'], b['result'])):.1e}"
        print(f"{stage}: 1 process x {results[1]['threads']} threads {a['seconds']:7.1f} s ({args.n / a['seconds']:.2f} {unit}/s); "
              f"{args.processes} processes x {results[args.processes]['threads']} threads {b['seconds']:7.1f} s "
              f"({args.n / b['seconds']:.2f} {unit}/s); x{a['seconds'] / b['seconds']:.2f}; {agree}")


if __name__ == "__main__":
    main()
