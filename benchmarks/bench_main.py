"""Benchmark: the main job as a user runs it, one table of what each stage cost.

    python benchmarks/bench_main.py                                  # hhalign run smol, in a fresh folder
    python benchmarks/bench_main.py --config tiny --set data.max_train_rows=64
    python benchmarks/bench_main.py --folder runs/smol               # the table of a finished run, nothing re-run
    python benchmarks/bench_main.py --rev b3222ce --json before.json # the job as it was at that commit
    python benchmarks/bench_main.py --json after.json                # ... and as it is, in the same session
    python benchmarks/bench_main.py --compare before.json after.json # the two side by side, x faster per stage

It runs ``hhalign run CONFIG --data-dir DATA --set output_dir=TMP`` as one child process (what the README's
command does), then reads each stage's manifest: wall time, the training loop's own time (the Trainer's
train_runtime) and tokens per second where the stage counts tokens (SFT: the tokens it trained on; generate:
the new tokens), and the stage's CPU seconds (user, system), page faults and peak memory (``hhalign.usage``,
recorded in every manifest). The last row is the whole process as the kernel counted it (``os.wait4``),
imports and planning included. State the CPU with every figure: the script prints it first.

``--rev REV`` runs the job as it was at git revision REV: that commit checked out into a temporary worktree (beside
a link to this checkout's ``../shared``, so that its presets' relative paths resolve as here), run from there with
its ``src`` first on PYTHONPATH: its stages, its presets, its defaults. A speed change is judged by a ``--rev``
table and this tree's, measured one after the other on one machine, then ``--compare``d.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "hh-rlhf"


def parse_args(argv: list[str] | None = None, config: str = "smol", description: str = __doc__) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description.split("\n\n")[0])
    p.add_argument("--config", default=config, help=f"a preset name or a config file (default: {config})")
    p.add_argument("--data-dir", type=Path, default=DATA, help="local HH-RLHF folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, as hhalign's")
    p.add_argument("--out", type=Path, default=None, help="run folder parent (default: a temporary folder, removed)")
    p.add_argument("--folder", type=Path, default=None, help="print the table of this finished run folder only")
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    p.add_argument("--rev", default=None, help="run the job as it was at this git revision (a temporary worktree)")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), default=None,
                   help="print two tables saved with --json side by side, nothing run")
    return p.parse_args(argv)


def cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name"))
        flags = next(ln for ln in info.splitlines() if ln.startswith("flags")).split()
        isa = "AMX" if "amx_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except (OSError, StopIteration):
        model, isa = platform.processor() or "unknown CPU", "?"
    return f"{model}, {os.cpu_count()} cores, {isa}"


def stage_rows(run: Path) -> list[dict]:
    """One row per finished stage folder of the run (NN_name/manifest.json), in folder order: whichever variants the
    run declared, each training stage is a row."""
    from hhalign.engine.table import MANIFEST

    rows = []
    for d in sorted(p for p in run.iterdir() if p.is_dir() and p.name[:2].isdigit() and (p / MANIFEST).is_file()):
        m = json.loads((d / MANIFEST).read_text())
        name = m.get("stage") or d.name.split("_", 1)[1]
        row = {"stage": name, "wall_s": m.get("wall_seconds"), **m.get("usage", {})}
        report = d / "train_report.json"
        if report.is_file():
            logs = json.loads(report.read_text()).get("log_history", [])
            final = next((h for h in reversed(logs) if "train_runtime" in h), {})
            row["train_s"] = final.get("train_runtime")
            tokens = max((h.get("num_tokens", 0) for h in logs), default=0)
            if tokens and row["train_s"]:
                row["tokens_per_s"] = tokens / row["train_s"]
        if name == "generate":
            new = sum(e["n_new_tokens"] for f in d.glob("*_*.json") if f.name != MANIFEST for e in json.loads(f.read_text()))
            row["tokens_per_s"] = new / m["wall_seconds"] if m.get("wall_seconds") else None
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    cols = [("stage", "stage", "{}"), ("wall_s", "wall s", "{:.0f}"), ("train_s", "train s", "{:.0f}"),
            ("tokens_per_s", "tokens/s", "{:.0f}"), ("peak_rss_gb", "peak GB", "{:.2f}"), ("user_s", "user s", "{:.0f}"),
            ("system_s", "system s", "{:.0f}"), ("minor_faults", "minor faults", "{:,}"), ("major_faults", "major faults", "{:,}")]
    lines = ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f.format(r[k]) if r.get(k) is not None else "" for k, _, f in cols) + " |")
    return "\n".join(lines)


def compare(before: dict, after: dict) -> str:
    """Two saved tables (``--json``) side by side: wall and training seconds, peak memory, and how many times
    faster each stage ran after; a stage only one side has shows blanks on the other."""
    old = {r["stage"]: r for r in before["rows"]}
    new = {r["stage"]: r for r in after["rows"]}
    names = [r["stage"] for r in before["rows"]] + [r["stage"] for r in after["rows"] if r["stage"] not in old]

    def num(row: dict | None, key: str, fmt: str) -> str:
        return fmt.format(row[key]) if row and row.get(key) is not None else ""

    lines = ["| stage | before: wall s | train s | peak GB | after: wall s | train s | peak GB | x faster |", "|" + "---|" * 8]
    for name in names:
        b, a = old.get(name), new.get(name)
        ratio = f"{b['wall_s'] / a['wall_s']:.2f}" if b and a and b.get("wall_s") and a.get("wall_s") else ""
        lines.append(f"| {name} | {num(b, 'wall_s', '{:.0f}')} | {num(b, 'train_s', '{:.0f}')} | {num(b, 'peak_rss_gb', '{:.2f}')} "
                     f"| {num(a, 'wall_s', '{:.0f}')} | {num(a, 'train_s', '{:.0f}')} | {num(a, 'peak_rss_gb', '{:.2f}')} | {ratio} |")
    machines = {before.get("machine"), after.get("machine")}
    if len(machines) > 1:
        lines.append(f"\n! measured on different machines ({' / '.join(map(str, machines))}): the ratio compares machines too")
    return "\n".join(lines)


def run_job(args: argparse.Namespace, out: Path, tree: Path = REPO) -> dict:
    """``hhalign run`` from ``tree`` (this checkout, or another revision's worktree) into ``out``; the table."""
    out.mkdir(parents=True, exist_ok=True)
    config, env = args.config, dict(os.environ)
    if tree != REPO:  # that revision's package first: its stages; and its preset, named by path, since an editable
        # install maps hhalign.configs to this checkout's configs/ whatever comes first on PYTHONPATH
        preset = tree / "configs" / f"{args.config}.yaml"
        config = str(preset) if preset.is_file() else config
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "hhalign", "run", config, "--data-dir", str(args.data_dir.resolve()),
           "--set", f"output_dir={out.resolve()}", *[a for s in args.set for a in ("--set", s)]]
    print("running:", " ".join(cmd[1:]), f"(at {args.rev})" if tree != REPO else "", flush=True)
    started = time.time()
    proc = subprocess.Popen(cmd, cwd=tree, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"hhalign run failed (exit {os.waitstatus_to_exitcode(status)})")
    run = next(p for p in out.iterdir() if p.is_dir() and (p / "run.json").is_file())
    rows = stage_rows(run)
    # the kernel's ru_maxrss follows the high-water mark that hhalign.usage resets at each stage: take the stages' peaks too
    peak = max([usage.ru_maxrss / 2**20, *(r.get("peak_rss_gb") or 0 for r in rows)])
    rows.append({"stage": "whole process", "wall_s": wall, "peak_rss_gb": peak, "user_s": usage.ru_utime,
                 "system_s": usage.ru_stime, "minor_faults": usage.ru_minflt, "major_faults": usage.ru_majflt})
    return {"machine": cpu(), "config": args.config, "set": args.set, "rev": args.rev, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare:
        print(compare(*(json.loads(p.read_text()) for p in args.compare)))
        return
    print(f"machine: {cpu()}; python {platform.python_version()}")
    if args.folder:
        print(table(stage_rows(args.folder)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        out, tree = args.out or Path(tmp) / "runs", REPO
        if args.rev:
            tree = Path(tmp) / "checkout"
            (Path(tmp) / "shared").symlink_to(REPO.parent / "shared")  # the presets say ../shared/...
            added = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), args.rev],
                                   capture_output=True, text=True)
            if added.returncode:
                raise SystemExit(f"bench_main: cannot check out --rev {args.rev}: {added.stderr.strip().splitlines()[-1]}")
        try:  # the worktree goes whatever happens: git would otherwise keep a stale entry for it
            result = run_job(args, out, tree)
        finally:
            if args.rev:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        print(table(result["rows"]))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
