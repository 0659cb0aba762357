"""Benchmark: which alignment method acts, and what each costs, on the smol methods preset (a real model, a CPU).

    python benchmarks/bench_methods.py                                   # hhalign run smol_methods, fresh folder
    python benchmarks/bench_methods.py --folder runs/smol_methods        # the tables of a finished run
    python benchmarks/bench_methods.py --config tiny_methods --json m.json

It runs the job as ``bench_main.py`` does (one child process, each stage's manifest read), then prints and writes
(``--json``) per variant: its method and start, its training stage's wall and CPU seconds and peak memory, its
held-out figure with the 95% interval and whether it acted, its HmR / HpR / CAS with intervals, and how many of
its answers loop (a phrase three or more times, or a repeated line) or are empty, of both prompt sets together. State the CPU with every figure: the script prints it first.
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_main import cpu, parse_args, run_job, stage_rows, table  # noqa: E402


def variant_rows(run: Path) -> list[dict]:
    """Per variant of the run's metrics: method, start, training cost, held-out figure, rates, loops."""
    from hhalign.engine.folder import RunFolder

    folder = RunFolder(run)
    metrics = folder.metrics() or {}
    starts, rows = folder.starts(), []
    for v, block in (metrics.get("variants") or {}).items():
        row = {"variant": v, "label": block.get("label"), "from": starts.get(v),
               **{k: block["exact"].get(k) for k in ("HmR", "HpR", "CAS")},
               "HmR_ci": (block["ci"].get("HmR") or {}).get("wilson"), "HpR_ci": (block["ci"].get("HpR") or {}).get("wilson"),
               "loops": sum((s.get("hygiene") or {}).get("degenerate", 0) for s in block["sets"].values()),
               "empty": sum((s.get("hygiene") or {}).get("empty", 0) for s in block["sets"].values())}
        if v in starts:
            report = json.loads(folder.file(v, "train_report.json").read_text())
            manifest = folder.manifest(v) or {}
            after = report.get("after") or {}
            use = manifest.get("usage") or {}
            row |= {"method": report.get("method"), "wall_s": manifest.get("wall_seconds"),
                    "cpu_s": use.get("user_s", 0) + use.get("system_s", 0), "peak_gb": use.get("peak_rss_gb"),
                    "figure": report.get("figure"), "accuracy": after.get("implicit_reward_accuracy"),
                    "interval": after.get("accuracy_interval"), "acts": after.get("acts"),
                    "nll": report.get("heldout_nll_chosen")}
        rows.append(row)
    return rows


def methods_table(rows: list[dict]) -> str:
    head = "| variant | method | from | train wall s | CPU s | peak GB | held-out figure | acted | HmR % | HpR % | CAS % | loops | empty |"
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        if r.get("nll"):
            fig = f"NLL {r['nll']['before']:.3f} -> {r['nll']['after']:.3f}"
        elif r.get("interval"):
            fig = f"{r['accuracy']:.3f} [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]"
        else:
            fig = ""
        num = lambda x, f="{:.0f}": f.format(x) if isinstance(x, (int, float)) else ""  # noqa: E731
        acted = "" if r.get("acts") is None else "yes" if r["acts"] else "no"
        lines.append(f"| {r['label'] or r['variant']} | {r.get('method', '')} | {r.get('from') or ''} | {num(r.get('wall_s'))} | "
                     f"{num(r.get('cpu_s'))} | {num(r.get('peak_gb'), '{:.2f}')} | {fig} | {acted} | {num(r['HmR'], '{:.1f}')} | "
                     f"{num(r['HpR'], '{:.1f}')} | {num(r['CAS'], '{:.1f}')} | {r['loops']} | {r['empty']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, config="smol_methods", description=__doc__)
    if args.rev or args.compare:
        raise SystemExit("bench_methods: --rev and --compare are bench_main.py's; here: --config, --folder, --json")
    print(f"machine: {cpu()}; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder:
            run, result = args.folder, {"machine": cpu(), "config": args.config, "rows": stage_rows(args.folder)}
        else:
            out = args.out or Path(tmp) / "runs"
            result = run_job(args, out)
            run = next(p for p in out.iterdir() if p.is_dir() and (p / "run.json").is_file())
        result["variants"] = variant_rows(run)
        print(table(result["rows"]))
        print()
        print(methods_table(result["variants"]))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
