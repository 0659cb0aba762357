"""Did each treatment act? Its held-out figures (from its stage's train_report.json) and the share of its answers
that are identical to those of the model it started from, per prompt set.

A variant compared with Base means little when its training barely moved it; the report says so at the top
(``caveats``) and shows this table.

    rows = treatments(data, {"sft": sft_report, "dpo": dpo_report}, starts={"sft": "base", "dpo": "base"})

Each stage's train_report.json names its held-out figure (``figure``): SFT's held-out NLL of the chosen responses,
the preference methods' held-out reward accuracy (implicit for DPO and KTO, per token for ORPO and SimPO).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hhalign.config.schema import PROMPT_SETS

START = {"sft": "base", "dpo": "base", "sft_dpo": "sft"}  # the study's treatments and the variant each starts from
IDENTICAL_FLAG = 0.5  # a treatment whose answers equal its start's on at least half the prompts is flagged
EDGE = 0.51  # a DPO stage whose accuracy interval starts above 50% but below this acted "at the edge"


def identical_share(mine: list[dict[str, Any]], start: list[dict[str, Any]]) -> tuple[int, int] | None:
    """(prompts answered word for word as the starting model did, prompts both answered), matched by prompt."""
    theirs = {e.get("prompt"): e.get("response") for e in start}
    both = [e for e in mine if e.get("prompt") in theirs]
    if not both:
        return None
    return sum(str(e.get("response", "")).strip() == str(theirs[e["prompt"]] or "").strip() for e in both), len(both)


def heldout(variant: str, report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stage's held-out figure before and after, and whether it shows the treatment acting."""
    if not report:
        return None
    if "heldout_nll_chosen" in report:
        nll = report.get("heldout_nll_chosen") or {}
        before, after = nll.get("before"), nll.get("after")
        if before is None or after is None:
            return None
        return {"figure": "held-out NLL of chosen responses", "before": before, "after": after, "acts": after < before,
                "text": f"NLL {before:.3f} → {after:.3f}", "pairs": report.get("heldout_pairs")}
    after = report.get("after") or {}
    if "accuracy_interval" not in after:
        return None
    low, high = after["accuracy_interval"]
    acts = bool(after["acts"])
    digits = 3 if round(low, 2) == 0.5 else 2  # an interval from 0.5004 must not read "[0.50, ...]"
    return {"figure": report.get("figure") or "held-out implicit-reward accuracy",
            "before": (report.get("before") or {}).get("implicit_reward_accuracy"),
            "after": after["implicit_reward_accuracy"], "interval": [low, high], "acts": acts,
            "edge": acts and low < EDGE, "pairs": after["pairs"], "margin": after.get("implicit_reward_margin"),
            "text": f"accuracy {after['implicit_reward_accuracy']:.2f} [{low:.{digits}f}, {high:.2f}] on {after['pairs']} pairs, "
                    f"margin {after.get('implicit_reward_margin', 0):.3f}" + _by_length(after)}


def verdict(row: dict[str, Any]) -> str:
    """The Treatments table's "acted" cell: no (and why), or yes, at the edge and/or mostly by length."""
    if row["doubts"]:
        return "no: " + "; ".join(row["doubts"])
    how = [w for w, on in (("at the edge", (row["heldout"] or {}).get("edge")), ("mostly by length", row.get("by_length"))) if on]
    return "yes, " + " and ".join(how) if how else "yes"


def _by_length(after: dict[str, Any]) -> str:
    """The accuracy where the chosen response is the shorter one and where it is not: a preference for short
    answers alone shows as a high figure on one side and a low one on the other."""
    short, long = after.get("accuracy_chosen_shorter") or {}, after.get("accuracy_chosen_longer") or {}
    if short.get("accuracy") is None or long.get("accuracy") is None:
        return ""
    return (f" ({short['accuracy']:.2f} on the {short['pairs']} where chosen is shorter, "
            f"{long['accuracy']:.2f} on the {long['pairs']} where it is not)")


def treatments(data: dict[str, dict[str, list[dict[str, Any]]]], reports: dict[str, dict[str, Any] | None],
               label: Callable[[str], str] = str, starts: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per treated variant present in ``data`` or ``reports``: its start, held-out figure, identical
    answers per prompt set, and the reasons (if any) to doubt that it acted (variants named by ``label``;
    ``starts``: each trained variant's start, the study's by default)."""
    rows = []
    for variant, start in (START if starts is None else starts).items():
        if variant not in data and not reports.get(variant):
            continue
        same = {s: identical_share(data[variant][s], data[start][s]) for s in PROMPT_SETS
                if s in data.get(variant, {}) and s in data.get(start, {})}
        same = {s: v for s, v in same.items() if v is not None}
        held = heldout(variant, reports.get(variant))
        doubts = []
        if held is None:
            if reports.get(variant):  # a folder of response files alone has no training record: no doubt from that
                doubts.append("no held-out figure shows whether it acted")
        elif not held["acts"]:
            against = "interval" in held and held["interval"][1] < 0.5
            doubts.append(f"its {held['figure']} did not move as training should ({held['text']}"
                          + (": the interval lies below 50%, against the preference)" if against
                             else ": the interval reaches 50%)" if "interval" in held else ")"))
        for s, (k, n) in same.items():
            if n and k / n >= IDENTICAL_FLAG:
                doubts.append(f"{k} of its {n} {s} answers are word for word {label(start)}'s")
        rows.append({"variant": variant, "start": start, "method": (reports.get(variant) or {}).get("method"),
                     "heldout": held, "identical": same, "doubts": doubts,
                     "by_length": _mostly_length(reports.get(variant)) if held and held["acts"] else None})
    return rows


def _mostly_length(report: dict[str, Any] | None) -> str | None:
    """Why an acting DPO stage may have learned answer length more than the preference: a held-out accuracy at or
    below 50% on the pairs whose chosen response is the longer one (None when it is above, or not measured)."""
    long = ((report or {}).get("after") or {}).get("accuracy_chosen_longer") or {}
    if long.get("accuracy") is None or long["accuracy"] > 0.5:
        return None
    return (f"its held-out accuracy is {long['accuracy']:.2f} on the {long['pairs']} pairs whose chosen answer is the "
            "longer: what it learned is mostly that shorter answers are preferred")


def caveats(rows: list[dict[str, Any]], label: Callable[[str], str] = str) -> list[str]:
    """A line for each treatment with a reason to doubt that it acted, or that it acted on more than length."""
    out = []
    for r in rows:
        if r["doubts"]:
            out.append(f"{label(r['variant'])} may not have acted: " + "; ".join(r["doubts"]) + f". Differences between "
                       f"it and {label(r['start'])} measure little.")
        elif r.get("by_length") or (r["heldout"] or {}).get("edge"):
            held = r["heldout"]
            edge = (f"at the edge (its held-out accuracy's 95% interval starts at {held['interval'][0]:.3f}, a hair above "
                    "50%: another seed or machine may not show it acting)") if held.get("edge") else ""
            length = f"mostly by length: {r['by_length']}" if r.get("by_length") else ""
            out.append(f"{label(r['variant'])} acted, {edge}{' and ' if edge and length else ''}{length}. Differences "
                       f"between it and {label(r['start'])} " + ("may be answer length more than harmlessness."
                                                                 if length else "measure little more than that."))
    return out
