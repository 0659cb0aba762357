"""Whether two runs of the same study came out the same: answers, ratings and rates, file by file.

    python benchmarks/same_results.py runs/before/tiny runs/after/tiny        # exit 0: identical; 1: they differ
    python benchmarks/same_results.py A B --json same.json

For every response file both runs have (07_generate, 08_score) it counts the answers that differ and the largest
rating difference; then each variant's HmR, HpR and CAS from 09_metrics. Use it to check that a change left a
preset's results as they were (same machine, same settings), or how far two machines' runs of one config differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGES = ("07_generate", "08_score")


def compare_files(a: Path, b: Path) -> dict:
    """Answers that differ and the largest rating difference between two response files of one variant and set."""
    x, y = json.loads(a.read_text()), json.loads(b.read_text())
    answers = sum(p.get("response") != q.get("response") for p, q in zip(x, y)) + abs(len(x) - len(y))
    ratings = [abs(p["rating"] - q["rating"]) for p, q in zip(x, y) if "rating" in p and "rating" in q]
    return {"rows": max(len(x), len(y)), "answers_differ": answers, "max_rating_diff": max(ratings) if ratings else None}


def compare_runs(a: Path, b: Path) -> dict:
    files = {}
    for stage in STAGES:
        names = sorted({p.name for p in (a / stage).glob("*_*.json")} | {p.name for p in (b / stage).glob("*_*.json")})
        for name in names:
            pa, pb = a / stage / name, b / stage / name
            files[f"{stage}/{name}"] = compare_files(pa, pb) if pa.is_file() and pb.is_file() else {"missing_in": "a" if not pa.is_file() else "b"}
    rates = {}
    ma, mb = (json.loads((r / "09_metrics" / "metrics.json").read_text()) for r in (a, b))
    for v in dict.fromkeys([*ma["variants"], *mb["variants"]]):
        ea, eb = ((m["variants"].get(v) or {}).get("exact") for m in (ma, mb))
        rates[v] = {"a": ea, "b": eb, "same": ea == eb}
    same = all(f.get("answers_differ") == 0 and not f.get("max_rating_diff") for f in files.values()) and all(r["same"] for r in rates.values())
    return {"a": str(a), "b": str(b), "same": same, "files": files, "rates": rates}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="a run folder (runs/NAME)")
    p.add_argument("b", type=Path, help="another run folder of the same config")
    p.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = p.parse_args(argv)
    out = compare_runs(args.a, args.b)
    for name, f in out["files"].items():
        what = (f"missing in {f['missing_in']}" if "missing_in" in f
                else f"{f['answers_differ']}/{f['rows']} answers differ, largest rating difference {f['max_rating_diff']}")
        print(f"{name}: {what}")
    for v, r in out["rates"].items():
        print(f"{v}: {r['a']} | {r['b']}" + ("" if r["same"] else "  DIFFERENT"))
    print("identical" if out["same"] else "the runs differ")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if out["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
