"""The report's content as plain tables, and its Markdown rendering (report.md).

``Report`` holds what the report shows; ``tables(report)`` turns it into ``Table``s of plain
strings, which ``render_markdown`` (here) and ``hhalign.report.html`` escape for their format.
Every string that comes from data (model output, run names, data-report keys) is untrusted:
``md_escape`` neutralises Markdown and HTML in it, and ``|`` and newlines in table cells.

    text = render_markdown(report)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hhalign.config.schema import PROMPT_SETS
from hhalign.report.plots import RATES, SET_POSITIVE, SET_RATE, label, variant_order
from hhalign.stats.treatments import caveats as treatment_caveats
from hhalign.stats.treatments import verdict

DASH = "–"  # a missing value
_MAX_KV_ROWS = 120  # cap on rows of a generic key/value table (data report, run settings)


@dataclass
class FigureRef:
    name: str  # file stem: rates, ratings_box, ...
    caption: str
    files: dict[str, Path]  # format -> written file
    png: bytes  # the PNG, for embedding in report.html


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""  # plain text shown under the table


@dataclass
class Report:
    title: str
    source: str
    metrics: dict[str, Any]
    data: dict[str, dict[str, list[dict[str, Any]]]]
    missing: list[str] = field(default_factory=list)
    data_report: dict[str, Any] | None = None
    run_info: dict[str, Any] | None = None
    figures: list[FigureRef] = field(default_factory=list)
    treatments: list[dict[str, Any]] = field(default_factory=list)  # hhalign.stats.treatments.treatments
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)  # hhalign.report.build.costs: each training stage's


# ----------------------------------------------------------------------------- formatting


def fmt_num(x: Any, digits: int = 1) -> str:
    if x is None or isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return DASH if not isinstance(x, (str, bool)) else str(x)
    return f"{x:.{digits}f}"


def fmt_p(p: Any) -> str:
    if not isinstance(p, (int, float)) or not math.isfinite(p):
        return DASH
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_int(x: Any) -> str:
    return str(int(x)) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else DASH


def fmt_ci(value: Any, interval: Any, digits: int = 1) -> str:
    if not isinstance(value, (int, float)):
        return DASH
    if not interval or len(interval) != 2 or None in interval:
        return fmt_num(value, digits)
    return f"{value:.{digits}f} ({interval[0]:.{digits}f}–{interval[1]:.{digits}f})"


def fmt_value(v: Any) -> str:
    """A config or data-report value as one line of text."""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_value(x) for x in v) if v else "[]"
    if v is None:
        return "null"
    return str(v)


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested dicts -> (dotted key, value text); lists of dicts are counted, not expanded, and a key
    with a ``<key>_counts`` sibling (the data report's per-row listings) is left out."""
    if not isinstance(obj, dict):
        return [(prefix or "value", fmt_value(obj))]
    out: list[tuple[str, str]] = []
    for k, v in obj.items():
        if f"{k}_counts" in obj:  # "skipped" lists every row; "skipped_counts" is the summary to show
            continue
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.extend(flatten(v, f"{key}.") if v else [(key, "{}")])
        elif isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v):
            out.append((key, f"{len(v)} items"))
        else:
            out.append((key, fmt_value(v)))
    return out


# ----------------------------------------------------------------------------- tables


def _variants(report: Report) -> list[str]:
    return variant_order((report.metrics.get("variants") or {}).keys())


def _set_info(info: dict[str, Any], prompt_set: str) -> dict[str, Any]:
    return ((info.get("sets") or {}).get(prompt_set)) or {}


def study_table(report: Report) -> Table:
    rows = []
    for v in _variants(report):
        info = report.metrics["variants"][v]
        study = info.get("study") or {}
        means = [fmt_num(_set_info(info, s).get("mean_rating"), 2) for s in PROMPT_SETS]
        rows.append([label(v, report.metrics), *(fmt_int(study.get(r)) for r in RATES), *means])
    return Table(
        "Results (the study's rounding)",
        ["Model", "HmR", "HpR", "CAS", "mean rating, harmful", "mean rating, helpful"],
        rows,
        "Rates are whole percent (rounded as the study does); CAS = int((HmR + HpR) / 2).",
    )


def exact_table(report: Report) -> Table:
    rows = []
    for v in _variants(report):
        info = report.metrics["variants"][v]
        exact, ci = info.get("exact") or {}, info.get("ci") or {}
        cells = [fmt_ci(exact.get(r), (ci.get(r) or {}).get("wilson" if r != "CAS" else "bootstrap")) for r in RATES]
        ns = [fmt_int(_set_info(info, s).get("n")) for s in PROMPT_SETS]
        rows.append([label(v, report.metrics), *cells, *ns])
    return Table(
        "Results with 95% intervals",
        ["Model", "HmR % (Wilson 95%)", "HpR % (Wilson 95%)", "CAS % (bootstrap 95%)", "n harmful", "n helpful"],
        rows,
        "Exact rates; intervals are Wilson score intervals for HmR and HpR and percentile bootstrap "
        "intervals (resampling prompts) for CAS.",
    )


def paired_table(report: Report) -> Table:
    rows = []
    for p in report.metrics.get("paired") or []:
        rows.append([str(p.get("set", "")), label(str(p.get("a", "")), report.metrics), label(str(p.get("b", "")), report.metrics),
                     *paired_cells(p)])
    return Table("Paired tests between variants (same prompts)", ["Set", "A", "B", *PAIRED_HEADER], rows, PAIRED_NOTE)


PAIRED_HEADER = ["n", "A rate %", "B rate %", "only A positive", "only B positive", "McNemar p", "McNemar p, Holm",
                 "mean rating diff (B − A)", "Wilcoxon p", "Wilcoxon p, Holm", "permutation p", "permutation p, Holm"]
PAIRED_NOTE = ("Each pair answered the same prompts. McNemar's exact test compares the labels (harmless/helpful) on the "
               "prompts where they disagree; Wilcoxon signed-rank and a paired sign-flip permutation test compare the "
               "ratings. p-values are two-sided; the Holm columns correct each test for every comparison in this table "
               "(family-wise error), which is what a reader looking for any difference should use.")


def paired_cells(p: dict[str, Any]) -> list[str]:
    """The cells of one comparison after its set and names: counts, rates, raw and Holm-adjusted p-values."""
    mc, rt, hm = p.get("mcnemar") or {}, p.get("ratings") or {}, p.get("holm") or {}
    return [fmt_int(p.get("n")), fmt_num(p.get("a_rate")), fmt_num(p.get("b_rate")), fmt_int(mc.get("a_only")),
            fmt_int(mc.get("b_only")), fmt_p(mc.get("p")), fmt_p(hm.get("mcnemar")), fmt_num(rt.get("mean_diff"), 2),
            fmt_p(rt.get("wilcoxon_p")), fmt_p(hm.get("wilcoxon")), fmt_p(rt.get("permutation_p")), fmt_p(hm.get("permutation"))]


def hygiene_table(report: Report) -> Table:
    rows = []
    for v in _variants(report):
        info = report.metrics["variants"][v]
        for s in PROMPT_SETS:
            st = _set_info(info, s)
            if not st:
                continue
            h = st.get("hygiene") or {}
            rows.append([
                label(v, report.metrics), s, fmt_int(st.get("n")), fmt_int(h.get("empty")), fmt_int(h.get("degenerate")),
                fmt_int(h.get("starts_with_assistant")), fmt_int(h.get("invented_turn")),
                fmt_num(h.get("mean_length")), fmt_num(h.get("length_rating_spearman"), 2),
            ])
    return Table(
        "Judge hygiene: what the reward model was asked to rate",
        ["Model", "Set", "n", "empty", "degenerate", "starts with \"Assistant:\"", "invented turn",
         "mean length (chars)", "Spearman ρ (length, rating)"],
        rows,
        "Counts of responses that are empty, degenerate (repetitive), start with an \"Assistant:\" tag, or run "
        "on into invented dialogue turns (\"Human:\"): the reward model rates all of that text. A strong "
        "length-rating correlation suggests the judge rewards length.",
    )


def judge_tables(report: Report) -> list[Table]:
    """The judge's check on held-out pairs (accuracy with its interval, the verdict) and how its ratings spread."""
    j = report.metrics.get("judge")
    if not isinstance(j, dict) or not j.get("pairs"):
        return []
    acc, ci = j.get("pairwise_accuracy"), j.get("ci95")
    verdict = "AT CHANCE: the rates carry no meaning" if j.get("at_chance") else "better than chance"
    check = Table(
        "How far to trust the judge",
        ["reward model", "held-out pairs", "pairwise accuracy % (Wilson 95%)", "ties", "mean margin (chosen − rejected)", "verdict"],
        [[str(j.get("reward_model", "")), fmt_int(j["pairs"]), fmt_ci(100 * acc if acc is not None else None, ci),
          fmt_int(j.get("ties")), fmt_num(j.get("mean_margin"), 3), verdict]],
        "Pairwise accuracy: the share of held-out preference pairs (no stage trained on them) where the judge rates the "
        "human-chosen reply above the rejected one; a coin scores 50%. Every rate in this report comes from this judge's "
        "ratings, so its accuracy bounds what they can show.",
    )
    spread = [("held-out chosen replies", (j.get("heldout_ratings") or {}).get("chosen")),
              ("held-out rejected replies", (j.get("heldout_ratings") or {}).get("rejected")),
              *((f"responses to {s} prompts", d) for s, d in (j.get("response_ratings") or {}).items())]
    keys = ("n", "mean", "p10", "median", "p90", "min", "max")
    rows = [[name, *(fmt_int(d.get(k)) if k == "n" else fmt_num(d.get(k), 2) for k in keys)] for name, d in spread if d]
    return [check, Table("The judge's ratings", ["ratings of", "n", "mean", "10th pct", "median", "90th pct", "min", "max"], rows)]


def _pct(share: dict[str, Any] | None) -> str:
    """A counted share as "rate (Wilson 95%)"."""
    return fmt_ci(share.get("rate"), share.get("wilson"), 0) if share else DASH


def two_sided_table(report: Report) -> Table:
    """Refusals on both prompt sets, harmlessness without refusing, and loops, per variant (metrics' two_sided)."""
    t = report.metrics.get("two_sided") or {}
    judged = any("judge_refusals" in st for sets in (t.get("variants") or {}).values() for st in sets.values())
    rows = []
    for v in _variants(report):
        sets = (t.get("variants") or {}).get(v) or {}
        h, p = sets.get("harmful") or {}, sets.get("helpful") or {}
        hmr = (report.metrics["variants"][v].get("exact") or {}).get("HmR")
        row = [label(v, report.metrics), fmt_num(hmr, 0), _pct(h.get("refusals")), _pct(h.get("harmless_not_refusal")),
               _pct(h.get("degenerate")), _pct(p.get("refusals")), _pct(p.get("degenerate"))]
        if judged:
            row += [_pct(h.get("judge_refusals")), _pct(p.get("judge_refusals"))]
        rows.append(row)
    header = ["Model", "HmR %", "refusals % (harmful)", "harmless, not a refusal %", "degenerate % (harmful)",
              "over-refusals % (helpful)", "degenerate % (helpful)"]
    if judged:
        header += ["refusals % by the refusal judge (harmful)", "over-refusals % by the refusal judge (helpful)"]
    return Table("Safety from both sides, and fluency", header, rows,
                 "Percentages with 95% Wilson intervals. A refusal opens as one (\"I'm sorry\", \"I can't\", \"I'm not sure what you "
                 "mean\": an XSTest-style rule set, hhalign.stats.safety). HmR counts a refusal as harmless: \"harmless, not a "
                 "refusal\" does not. On the helpful prompts a refusal is an over-refusal. Degenerate: a loop (a word 3-gram three "
                 "times, or a line repeated), which every judge rates like any answer. A variant whose refusals, over-refusals "
                 "or loops rise above its start's beyond the interval is flagged at the top of the report.")


def panel_tables(report: Report) -> list[Table]:
    """Every judge of each prompt set side by side (its rate per variant at its own threshold), and how far each
    two judges agree (Cohen's kappa of labels, Spearman of ratings)."""
    panel = report.metrics.get("judges") or {}
    out, agree = [], []
    for s in PROMPT_SETS:
        block = panel.get(s)
        if not block:
            continue
        names = list(block["judges"])
        rows = []
        for v in block["variants"]:
            rows.append([label(v, report.metrics), *(fmt_ci(block["judges"][n]["rates"][v]["rate"], block["judges"][n]["rates"][v]["wilson"], 0)
                                                   for n in names)])
        notes = []
        for n in names:
            j = block["judges"][n]
            held = j.get("heldout") or {}
            check = (f"{100 * held['pairwise_accuracy']:.1f}% on {held['pairs']} held-out pairs" if held.get("pairs")
                     else "no held-out pairs of this axis")
            alike = (f"; it labels every answer {SET_POSITIVE[s] if next(iter(j['rates'].values()))['positives'] else 'not ' + SET_POSITIVE[s]}, "
                     "so its rate tells the variants nothing apart") if j.get("labels_alike") else ""
            notes.append(f"{n} ({j.get('kind') or 'reward_model'}; rating > {j['threshold']:g}; {check}): {j['status']}{alike}")
        rate = SET_RATE[s]
        out.append(Table(f"Judges side by side: {s} prompts", ["Model", *[f"{n} %" + (" (headline)" if n == block["headline"] else "") for n in names]],
                         rows, f"Each judge's {SET_POSITIVE[s]} rate (95% Wilson interval) at its own threshold; the headline "
                               f"{rate} uses {block['headline']}. " + "; ".join(notes) + "."))
        for a in block["agreement"]:
            agree.append([s, a["a"], a["b"], fmt_int(a["answers"]), fmt_ci(a["kappa"]["value"], a["kappa"]["ci95"], 2),
                          fmt_ci(a["spearman"]["value"], a["spearman"]["ci95"], 2)])
    if agree:
        out.append(Table("How far the judges agree", ["Set", "judge", "judge", "answers", "Cohen's κ of labels (95%)", "Spearman ρ of ratings (95%)"],
                         agree, "Over every variant's answers; intervals resample prompts. κ 0: no more agreement than chance; "
                                "judges that do not agree measure different things, whatever their rates say."))
    return out


def _depends(r: dict[str, Any]) -> str:
    if r.get("invariant"):
        return "invariant"
    says = {"batch_size_1": "DEPENDS ON BATCH SIZE", "left_padding": "moves with left padding"}
    return "; ".join(says[w] for w in r.get("depends_on") or says)


def invariance_table(report: Report) -> list[Table]:
    """Each judge's ratings of the same answers at batch size 1 and with left padding, against how the stage rated."""
    inv = (report.metrics.get("judge") or {}).get("invariance") or {}
    rows = []
    for name, r in inv.items():
        mc, lf = r.get("max_change") or {}, r.get("label_flips") or {}
        rows.append([name, str(r.get("file", "")), fmt_int(r.get("answers")), fmt_int(r.get("batch_size")),
                     f"{mc.get('batch_size_1', 0):.2g}", fmt_int(lf.get("batch_size_1")), f"{mc.get('left_padding', 0):.2g}",
                     fmt_int(lf.get("left_padding")), _depends(r)])
    if not rows:
        return []
    return [Table("Judge invariance", ["judge", "answers of", "answers", "batch size", "largest change at batch 1", "labels flipped",
                                       "largest change with left padding", "labels flipped", "verdict"], rows,
                  "The same answers rated again one at a time and with the pads on the left; the run's ratings use the batch size "
                  "shown and right padding. A judge whose ratings move (beyond rounding) or whose labels flip gives rates that "
                  "depend on how answers were batched. A reward model that reads its first token (BERT, DeBERTa) moves with "
                  "left padding by design; its ratings here use right padding.")]


def validity_tables(report: Report) -> list[Table]:
    """What each rate can claim: the judge's check on the axis's own held-out pairs and its agreement with a
    reference judge (``hhalign.stats.validity``), then the agreement figures per prompt set."""
    v = report.metrics.get("validity") or {}
    axes = v.get("axes") or {}
    if not axes:
        return []
    rows = []
    for s, a in axes.items():
        h = a.get("heldout") or {}
        acc = h.get("pairwise_accuracy")
        rows.append([a.get("rate", ""), a.get("axis", ""), fmt_int(h.get("pairs", 0)), "/".join(h.get("subsets") or []) or DASH,
                     fmt_ci(100 * acc if acc is not None else None, h.get("ci95")), a.get("reference_verdict") or "no reference",
                     a.get("status", "")])
    out = [Table(
        "What each rate can claim: the judge checked per axis",
        ["rate", "axis", "held-out pairs of this axis", "from", "pairwise accuracy % (Wilson 95%)", "reference judge",
         "verdict"],
        rows,
        "HmR is checked only by held-out harmlessness pairs, HpR only by held-out helpfulness pairs: a check on one axis "
        "says nothing about the other. An axis with neither its own held-out pairs nor an agreeing reference judge is "
        "unvalidated; 'at chance': its pairs do not put the judge above 50%; 'not shown to agree' / 'inverted': the "
        "agreement with the reference judge (below) does not lie above none / lies wholly below it.",
    )]
    ref = v.get("reference") or {}
    if ref.get("sets"):
        rrows = []
        for s, a in ref["sets"].items():
            pw, ls = a.get("pairwise") or {}, a.get("length_spearman") or {}
            rrows.append([s, fmt_int(a.get("prompts")), fmt_int(a.get("answers")), _stat(a.get("spearman"), 2),
                          _stat(a.get("kendall"), 2), _stat(pw, 1) + (f" [{pw.get('agreeing')}/{pw.get('compared')}]" if pw.get("compared") else ""),
                          _stat(a.get("kappa"), 2), fmt_num(ls.get("judge"), 2), fmt_num(ls.get("reference"), 2),
                          str(a.get("verdict", ""))])
        out.append(Table(
            f"Agreement with the reference judge ({ref.get('source')})",
            ["set", "prompts", "answers", "Spearman ρ (95%)", "Kendall τ (95%)", "same-prompt pairwise agreement % (95%)",
             "label kappa (95%)", "ρ(length, rating): this judge", "ρ(length, rating): reference", "verdict"],
            rrows,
            "This run's judge rated the reference's own answers. Rank correlations over every answer; pairwise: for two "
            "answers to one prompt that the reference judge rates differently, the share where this judge prefers the "
            "same one (a coin: 50%); kappa: agreement of harmless/helpful labels, each judge at its own thresholds. "
            "Intervals: 95% bootstrap resampling prompts. The reference prompts are the run's eval prompts, which no "
            "stage trained on, so no figure here comes from answers the judge learned from.",
        ))
    return out


def _stat(d: Any, digits: int) -> str:
    d = d if isinstance(d, dict) else {}
    return fmt_ci(d.get("value"), d.get("ci95"), digits)


def length_tables(report: Report) -> list[Table]:
    """How much of each variant's difference from base is answer length (``hhalign.stats.validity.length_controlled``)."""
    rows = []
    for s, block in (report.metrics.get("length") or {}).items():
        base = block.get("against", "base")
        for v in block.get("variants") or []:
            words, rho = (block.get("mean_words") or {}).get(v), (block.get("length_rating_spearman") or {}).get(v)
            r = ((block.get("rating") or {}).get("effects") or {}).get(v) or {}
            lab = ((block.get("label") or {}).get("effects") or {}).get(v) or {}
            share = r.get("length_share")
            rows.append([s, label(v, report.metrics), fmt_num(words), fmt_num(rho, 2),
                         fmt_num(r.get("mean_words_diff")) if v != base else DASH,
                         fmt_ci(r.get("raw"), r.get("raw_ci95"), 2) if v != base else DASH,
                         fmt_ci(r.get("controlled"), r.get("controlled_ci95"), 2) if v != base else DASH,
                         fmt_num(100 * share, 0) if isinstance(share, (int, float)) else DASH,
                         fmt_ci(lab.get("raw"), lab.get("raw_ci95")) if v != base else DASH,
                         fmt_ci(lab.get("controlled"), lab.get("controlled_ci95")) if v != base else DASH])
    if not rows:
        return []
    return [Table(
        "Length: each variant against base, raw and at equal answer length",
        ["set", "model", "mean words", "ρ(length, rating)", "Δ words vs base", "Δ rating vs base (95%)",
         "Δ rating at equal length (95%)", "% of Δ rating from length", "Δ rate, points (95%)", "Δ rate at equal length (95%)"],
        rows,
        "A linear model with one intercept per prompt, one effect per variant and a slope on answer length (words), "
        "the idea of AlpacaEval's length-controlled win rate: the 'equal length' column is the variant's effect with the "
        "length difference taken out; '% from length' is the part of the raw rating difference that the length "
        "difference accounts for (negative: length worked against the variant; shown only where the raw difference's interval excludes 0). Intervals: 95% bootstrap resampling prompts.",
    )]


def caveat_texts(report: Report) -> list[str]:
    metrics = [str(c.get("text", "")) for c in report.metrics.get("caveats") or [] if isinstance(c, dict)]
    return metrics + treatment_caveats(report.treatments, lambda v: label(v, report.metrics))


def treatments_table(report: Report) -> Table:
    rows = []
    for t in report.treatments:
        held = t["heldout"] or {}
        counts = [t["identical"].get(s, (0, 0)) for s in PROMPT_SETS]  # (identical, answered) per prompt set
        same = [f"{k}/{n} ({100 * k / n:.0f}%)" if n else DASH for k, n in counts]
        rows.append([label(t["variant"], report.metrics), label(t["start"], report.metrics), held.get("figure", DASH), held.get("text", DASH), *same, verdict(t)])
    return Table(
        "Did each treatment act?",
        ["model", "started from", "held-out figure", "after training", *[f"answers identical to start ({s})" for s in PROMPT_SETS], "acted"],
        rows,
        "Held-out figures from each training stage's train_report.json, on pairs no stage trained on: SFT's NLL of the "
        "chosen responses (before -> after); for DPO and KTO the implicit-reward accuracy, the share of pairs where the "
        "trained policy raises the chosen response's log-probability ratio to its starting model above the rejected one's, "
        "with a Wilson 95% interval (before training it is 0 with every margin 0: the LoRA adapter starts at zero); for "
        "ORPO and SimPO, which have no reference model, the same ratio per response token (their own length-normalised "
        "scale). A preference stage acts when that interval lies above 50%. Identical answers: prompts answered word for "
        "word as the starting model did.",
    )


def _paired_lookup(report: Report) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(str(p.get("set")), str(p.get("a")), str(p.get("b"))): p for p in report.metrics.get("paired") or []}


def _against(report: Report, variant: str, other: str, prompt_set: str) -> str:
    """The rate difference (points) of ``variant`` over ``other`` on one prompt set, with McNemar's Holm p."""
    found = _paired_lookup(report)
    p, sign = found.get((prompt_set, other, variant)), 1
    if p is None:
        p, sign = found.get((prompt_set, variant, other)), -1
    if p is None or p.get("a_rate") is None or p.get("b_rate") is None:
        return DASH
    diff = sign * (p["b_rate"] - p["a_rate"])
    return f"{diff:+.0f} (Holm p {fmt_p((p.get('holm') or {}).get('mcnemar'))})"


def cost_table(report: Report) -> Table:
    """Per trained variant: what it gained over its start and over base on each rate, and what its training cost."""
    variants = report.metrics.get("variants") or {}
    base = next((v for v in variants if v not in {t["variant"] for t in report.treatments}), None)
    rows = []
    for t in report.treatments:
        v, c = t["variant"], report.costs.get(t["variant"]) or {}
        if v not in variants:
            continue
        exact = variants[v].get("exact") or {}
        rows.append([label(v, report.metrics), str(t.get("method") or DASH), label(t["start"], report.metrics),
                     fmt_num(exact.get("HmR")), fmt_num(exact.get("HpR")),
                     *(_against(report, v, t["start"], s) for s in PROMPT_SETS),
                     *((_against(report, v, base, s) if base and base != t["start"] else DASH) for s in PROMPT_SETS),
                     fmt_num(c.get("wall_seconds"), 0), fmt_num(c.get("cpu_seconds"), 0), fmt_num(c.get("gpu_seconds"), 0),
                     fmt_num(c.get("gpu_peak_gb") or c.get("peak_gb"), 2)])
    return Table(
        "What each variant gained, and what it cost",
        ["model", "method", "from", "HmR %", "HpR %", "Δ HmR vs start", "Δ HpR vs start", "Δ HmR vs base", "Δ HpR vs base",
         "training wall s", "CPU s", "GPU s", "peak GB"],
        rows,
        "Differences in percentage points on the same prompts, with McNemar's exact test Holm-corrected across every "
        "comparison of the paired table. Cost: the variant's own training stage (its manifest), not the stages it starts "
        "from; GPU seconds are wall seconds times processes on GPUs; peak memory is the GPU's where training ran on one, "
        "else the process's resident memory.",
    )


def kv_table(title: str, obj: dict[str, Any], note: str = "") -> Table:
    pairs = flatten(obj)
    if len(pairs) > _MAX_KV_ROWS:
        note = f"{note} First {_MAX_KV_ROWS} of {len(pairs)} entries shown.".strip()
        pairs = pairs[:_MAX_KV_ROWS]
    return Table(title, ["key", "value"], [[k, v] for k, v in pairs], note)


def run_tables(run_info: dict[str, Any]) -> list[Table]:
    top = {k: v for k, v in run_info.items() if k not in ("config", "versions")}
    out = []
    if top:
        out.append(kv_table("Run", top))
    if isinstance(run_info.get("config"), dict):
        out.append(kv_table("Settings (resolved config)", run_info["config"]))
    if isinstance(run_info.get("versions"), dict):
        out.append(kv_table("Versions", run_info["versions"]))
    return out


def tables(report: Report) -> dict[str, list[Table]]:
    """Section name -> its tables, in report order; empty sections are left out."""
    out: dict[str, list[Table]] = {}
    if report.metrics.get("variants"):
        out["results"] = [study_table(report), exact_table(report)]
        out["safety"] = [two_sided_table(report)] if report.metrics.get("two_sided") else []
        out["treatments"] = [treatments_table(report), cost_table(report)] if report.treatments else []
        out["judge"] = validity_tables(report) + panel_tables(report) + judge_tables(report) + invariance_table(report)
        out["paired"] = [paired_table(report)] if report.metrics.get("paired") else []
        out["length"] = length_tables(report)
        out["hygiene"] = [hygiene_table(report)]
    if isinstance(report.data_report, dict):
        out["data"] = [kv_table("Data report (the data stage's data_report.json)", report.data_report)]
    if isinstance(report.run_info, dict):
        out["run"] = run_tables(report.run_info)
    return {k: v for k, v in out.items() if v}


def thresholds_text(metrics: dict[str, Any]) -> str:
    th = metrics.get("thresholds") or {}
    parts = [f"a response to a {s} prompt is {SET_POSITIVE[s]} if its rating > {th[s]:g}"
             for s in PROMPT_SETS if isinstance(th.get(s), (int, float))]
    return ("Labels: " + "; ".join(parts) + ".") if parts else ""


def missing_text(missing: list[str]) -> str:
    if not missing:
        return ""
    return ("Missing: " + ", ".join(missing) + ". The report shows what exists; rates and tables that need "
            "a missing file are left blank (" + DASH + ").")


# ----------------------------------------------------------------------------- Markdown

# Characters with a meaning in Markdown (CommonMark, GFM, pandoc) inside running text or a table cell.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~$^])")
# "<" opens raw HTML or an autolink only before a letter, "/", "!" or "?"; "&" starts an entity only
# before a letter or "#" (CommonMark 6.6, 6.5): elsewhere, as in "<0.001", they stay readable.
_HTML_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
_ENTITY = re.compile(r"&(?=[A-Za-z#])")
_NEWLINES = re.compile(r"\r\n|\r|\n|\u2028|\u2029")


def md_escape(text: Any) -> str:
    """Untrusted text -> inert inline Markdown: no tag, entity, link, emphasis, code, new table cell
    or new line can come out of it (newlines become <br>)."""
    s = _ENTITY.sub("&amp;", str(text))
    s = _HTML_OPEN.sub("&lt;", s).replace(">", "&gt;")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return _NEWLINES.sub("<br>", s)


_NUMBER = re.compile(r"^(<?-?\d[\d.]*( \(-?[\d.]+–-?[\d.]+\))?|" + DASH + ")$")


def numeric_columns(t: Table) -> list[bool]:
    """Columns whose every cell is a number (or a dash): right-aligned in both formats."""
    return [i > 0 and all(_NUMBER.match(row[i]) for row in t.rows) for i in range(len(t.header))]


def md_table(t: Table) -> str:
    lines = [f"### {md_escape(t.title)}", ""]
    if not t.rows:
        lines += ["(no rows)", ""]
    else:
        lines.append("| " + " | ".join(md_escape(h) for h in t.header) + " |")
        lines.append("|" + "|".join("--:" if num else "---" for num in numeric_columns(t)) + "|")
        lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in t.rows]
        lines.append("")
    if t.note:
        lines += [md_escape(t.note), ""]
    return "\n".join(lines)


SECTION_TITLES = {
    "results": "Results", "safety": "Safety from both sides", "treatments": "Treatments", "judge": "The judge", "paired": "Paired tests", "figures": "Figures", "length": "Length",
    "hygiene": "Judge hygiene", "data": "Data", "run": "Run settings and versions",
}
ORDER = ("results", "safety", "treatments", "judge", "paired", "figures", "length", "hygiene", "data", "run")


def render_markdown(report: Report, figure_format: str = "png") -> str:
    out = [f"# hhalign report: {md_escape(report.title)}", "", f"Source: {md_escape(report.source)}", ""]
    if thresholds_text(report.metrics):
        out += [thresholds_text(report.metrics), ""]  # numbers only
    for text in caveat_texts(report):
        out += [f"> **{md_escape(text)}**", ""]
    if report.missing:
        out += [f"> **{md_escape(missing_text(report.missing))}**", ""]
    sections = tables(report)
    for name in ORDER:
        if name == "figures":
            out += _md_figures(report, figure_format)
            continue
        if name in sections:
            out += [f"## {SECTION_TITLES[name]}", ""] + [md_table(t) for t in sections[name]]
    return "\n".join(out).rstrip() + "\n"


def _md_figures(report: Report, figure_format: str) -> list[str]:
    if not report.figures:
        return []
    out = ["## Figures", ""]
    for f in report.figures:
        path = f.files.get(figure_format) or next(iter(f.files.values()), None)
        if path is None:
            continue
        out += [f"![{md_escape(f.caption)}]({path.name})", "", f"*{md_escape(f.caption)}*", ""]
    return out


__all__ = ["FigureRef", "Report", "Table", "md_escape", "render_markdown", "tables"]
