"""Report figures: one consistent colour per variant, readable at a glance.

Each ``fig_*`` function takes the metrics dict (``hhalign.stages.metrics.compute_metrics``) and, where it
needs the ratings themselves, the scored responses (``hhalign.data.responses.load_scored_dir``), and
returns a matplotlib Figure, or None when there is nothing to draw. ``make_figures`` draws them
all and returns them by name; ``save_figure`` writes one atomically in each requested format.

    caption, fig = make_figures(metrics, data)["rates"]
    paths = save_figure(fig, out_dir / "rates", ["png", "svg"])  # {"png": .../rates.png, "svg": ...}
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from hhalign.artifacts import atomic_write_bytes
from hhalign.config.schema import PROMPT_SETS, VARIANT_LABELS, VARIANTS
from hhalign.stats.validity import words

# Okabe-Ito colours (colour-blind safe), one per variant, used by every figure and the HTML viewer.
VARIANT_COLORS = {"base": "#7f7f7f", "sft": "#0072B2", "dpo": "#E69F00", "sft_dpo": "#009E73"}
_SPARE_COLORS = ("#CC79A7", "#D55E00", "#56B4E9", "#F0E442")
RATES = ("HmR", "HpR", "CAS")
RATE_TITLES = {"HmR": "HmR (% harmless)", "HpR": "HpR (% helpful)", "CAS": "CAS (mean of both)"}
# The rate each prompt set feeds, and what its positive label is called.
SET_RATE = {"harmful": "HmR", "helpful": "HpR"}
SET_POSITIVE = {"harmful": "harmless", "helpful": "helpful"}
DPI = 150
# Applied while drawing and saving only: the caller's matplotlib settings are left alone. Figures are
# plain matplotlib.figure.Figure objects, never pyplot's, so no backend or global state is touched.
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "hhalign",  # stable SVG ids, so reruns give identical files
    "svg.fonttype": "none",  # text stays text in the SVG (searchable, smaller)
}


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def variant_order(names: Iterable[str]) -> list[str]:
    """Study order (Base, SFT, DPO, SFT+DPO) first, any other names after, in the order given (a run's declared order)."""
    names = list(names)
    return [v for v in VARIANTS if v in names] + [v for v in names if v not in VARIANTS]


def variant_colors(names: Iterable[str]) -> dict[str, str]:
    ordered = variant_order(names)
    spare = iter(_SPARE_COLORS * (1 + len(ordered) // len(_SPARE_COLORS)))
    return {v: VARIANT_COLORS.get(v) or next(spare) for v in ordered}


def label(variant: str, metrics: dict[str, Any] | None = None) -> str:
    info = ((metrics or {}).get("variants") or {}).get(variant) or {}
    return str(info.get("label") or VARIANT_LABELS.get(variant, variant))


def _bar_group(ax: Any, metrics: dict[str, Any], with_ci: bool) -> None:
    """Bars of HmR/HpR/CAS (x groups), one bar per variant; 95% whiskers when ``with_ci``."""
    variants = variant_order(metrics.get("variants", {}))
    colors = variant_colors(variants)
    width = 0.8 / max(len(variants), 1)
    for j, v in enumerate(variants):
        info = metrics["variants"][v]
        exact = info.get("exact") or {}
        xs, ys, lo, hi = [], [], [], []
        for i, rate in enumerate(RATES):
            y = exact.get(rate)
            if y is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(y)
            below, above = error_bar(y, _interval(info, rate))
            lo.append(below)
            hi.append(above)
        if not xs:
            continue
        yerr = [lo, hi] if with_ci else None
        bars = ax.bar(xs, ys, width * 0.92, color=colors[v], label=label(v, metrics), yerr=yerr,
                      capsize=3, error_kw={"elinewidth": 1, "ecolor": "#222222"})
        if not with_ci:
            ax.bar_label(bars, labels=[f"{y:.0f}" if float(y).is_integer() else f"{y:.1f}" for y in ys],
                         padding=2, fontsize=8)
    ax.set_xticks(range(len(RATES)), [RATE_TITLES[r] for r in RATES])
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(ncols=min(len(variants), 4), loc="upper left", frameon=False, fontsize=9)


def error_bar(y: float, interval: list[float] | None) -> tuple[float, float]:
    """(below, above) whisker lengths for a bar at ``y``; never negative, even when floating point puts a bound
    a hair on the wrong side of the rate (at 0% or 100%), which matplotlib refuses."""
    if not interval:
        return 0.0, 0.0
    return max(0.0, y - interval[0]), max(0.0, interval[1] - y)


def _interval(info: dict[str, Any], rate: str) -> list[float] | None:
    """Wilson interval for HmR/HpR, bootstrap for CAS (the rule the report states)."""
    ci = (info.get("ci") or {}).get(rate) or {}
    interval = ci.get("bootstrap") if rate == "CAS" else ci.get("wilson") or ci.get("bootstrap")
    return list(interval) if interval and None not in interval else None


def fig_rates(metrics: dict[str, Any], with_ci: bool = False) -> Figure | None:
    if not metrics.get("variants"):
        return None
    fig, (ax,) = _figure(max(7.5, 0.45 * 3 * len(metrics["variants"]) + 1.5), 4.2)
    _bar_group(ax, metrics, with_ci)
    th = metrics.get("thresholds", {})
    what = "with 95% intervals (Wilson; bootstrap for CAS)" if with_ci else "per variant"
    ax.set_title(f"HmR, HpR and CAS {what}\n"
                 f"harmless: rating > {_g(th.get('harmful'))}, helpful: rating > {_g(th.get('helpful'))}")
    return fig


def _g(x: Any) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else "?"


def _ratings(data: dict[str, Any], prompt_set: str) -> dict[str, list[float]]:
    out = {}
    for v in variant_order(data):
        rows = (data.get(v) or {}).get(prompt_set) or []
        vals = [float(r["rating"]) for r in rows if isinstance(r.get("rating"), (int, float))]
        if vals:
            out[v] = vals
    return out


def _sets_present(data: dict[str, Any]) -> list[str]:
    present = {s for sets in data.values() for s in (sets or {})}
    return [s for s in PROMPT_SETS if s in present] + sorted(present - set(PROMPT_SETS))


def _rating_figure(data: dict[str, Any], height: float, title: str, draw: Callable[..., None]) -> Figure | None:
    """One panel per prompt set that has ratings; ``draw(ax, prompt_set, ratings, colors, variants)`` fills each."""
    sets = [s for s in _sets_present(data) if _ratings(data, s)]
    if not sets:
        return None
    n = max(len(_ratings(data, s)) for s in sets)
    fig, axes = _figure(max(4.2, 0.6 * n + 1.4) * len(sets) + 0.6, height, len(sets))  # up to ten variants stay legible
    for ax, s in zip(axes, sets):
        ratings = _ratings(data, s)
        draw(ax, s, ratings, variant_colors(ratings), list(ratings))
    fig.suptitle(title)
    return fig


def fig_box(data: dict[str, Any], metrics: dict[str, Any]) -> Figure | None:
    """Rating distributions per variant, one panel per prompt set, threshold dashed."""

    def draw(ax: Any, s: str, ratings: dict[str, list[float]], colors: dict[str, str], names: list[str]) -> None:
        bp = ax.boxplot([ratings[v] for v in names], patch_artist=True, widths=0.6,
                        medianprops={"color": "black"}, flierprops={"markersize": 3})
        for patch, v in zip(bp["boxes"], names):
            patch.set_facecolor(colors[v])
            patch.set_alpha(0.75)
        ax.set_xticks(range(1, len(names) + 1), [label(v, metrics) for v in names], rotation=30 if len(names) > 5 else 0)
        _threshold_line(ax, metrics, s, horizontal=True)
        n = max(len(r) for r in ratings.values())
        ax.set_title(f"{s} prompts (n = {n}); dashed: threshold {_g((metrics.get('thresholds') or {}).get(s))}")
        ax.set_ylabel("reward-model rating")
        ax.grid(axis="y", alpha=0.3)

    return _rating_figure(data, 4.2, "Rating distributions per variant", draw)


def fig_means(data: dict[str, Any], metrics: dict[str, Any]) -> Figure | None:
    """Mean rating per variant, one panel per prompt set, threshold dashed."""

    def draw(ax: Any, s: str, ratings: dict[str, list[float]], colors: dict[str, str], names: list[str]) -> None:
        means = [sum(r) / len(r) for r in ratings.values()]
        bars = ax.bar(range(len(names)), means, color=[colors[v] for v in names], width=0.6)
        ax.bar_label(bars, labels=[f"{m:.2f}" for m in means], padding=2, fontsize=8)
        ax.set_xticks(range(len(names)), [label(v, metrics) for v in names], rotation=30 if len(names) > 5 else 0)
        ax.axhline(0, color="black", linewidth=0.8)
        _threshold_line(ax, metrics, s, horizontal=True)
        ax.set_title(f"{s} prompts; dashed: threshold {_g((metrics.get('thresholds') or {}).get(s))}")
        ax.set_ylabel("mean reward-model rating")
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)

    return _rating_figure(data, 4.0, "Mean rating per variant", draw)


def _threshold_line(ax: Any, metrics: dict[str, Any], prompt_set: str, horizontal: bool) -> None:
    th = (metrics.get("thresholds") or {}).get(prompt_set)
    if th is None:
        return
    if horizontal:
        ax.axhline(th, color="#C00000", linestyle="--", linewidth=1)
    else:
        ax.axvline(th, color="#C00000", linestyle="--", linewidth=1)
        ax.annotate(f"chosen threshold {th:g}", (th, 0.02), xycoords=("data", "axes fraction"), ha="left",
                    va="bottom", fontsize=8, color="#C00000", xytext=(3, 0), textcoords="offset points")


def fig_sweep(metrics: dict[str, Any], prompt_set: str) -> Figure | None:
    """Share of positives as the threshold moves, one line per variant, chosen threshold marked."""
    sweep = (metrics.get("sweep") or {}).get(prompt_set) or {}
    xs, rates = sweep.get("thresholds") or [], sweep.get("rates") or {}
    if not xs or not rates:
        return None
    fig, (ax,) = _figure(6.5, 4.0)
    colors = variant_colors(rates)
    for v in variant_order(rates):
        ys = [float("nan") if y is None else y for y in rates[v]]
        ax.plot(xs, ys, color=colors[v], label=label(v, metrics), linewidth=1.8)
    _threshold_line(ax, metrics, prompt_set, horizontal=False)
    rate = SET_RATE.get(prompt_set, "rate")
    ax.set_xlabel(f"threshold (a response is {SET_POSITIVE.get(prompt_set, 'positive')} if rating > threshold)")
    ax.set_ylabel(f"{rate} (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=9)
    ax.set_title(f"Threshold sensitivity, {prompt_set} prompts")
    return fig


def fig_judge(metrics: dict[str, Any]) -> Figure | None:
    """The judge's ratings of held-out chosen and rejected replies: how far apart it puts them."""
    j = metrics.get("judge") or {}
    chosen, rejected = j.get("chosen_ratings") or [], j.get("rejected_ratings") or []
    if not chosen or not rejected:
        return None
    fig, (ax,) = _figure(7.5, 4.2)
    both = chosen + rejected
    bins = np.linspace(min(both), max(both), 31) if max(both) > min(both) else 10
    ax.hist(chosen, bins=bins, alpha=0.6, color="#009E73", label=f"chosen replies (mean {np.mean(chosen):.2f})")
    ax.hist(rejected, bins=bins, alpha=0.6, color="#D55E00", label=f"rejected replies (mean {np.mean(rejected):.2f})")
    for s, style in zip(PROMPT_SETS, ("--", ":")):
        th = (metrics.get("thresholds") or {}).get(s)
        if isinstance(th, (int, float)):
            ax.axvline(th, color="#C00000", linestyle=style, linewidth=1, label=f"{s}-set threshold {th:g}")
    acc, ci = j.get("pairwise_accuracy"), j.get("ci95") or [float("nan")] * 2
    verdict = "AT CHANCE" if j.get("at_chance") else "better than chance"
    ax.set_title(f"The judge on {j.get('pairs')} held-out pairs no stage trained on\n"
                 f"chosen rated above rejected in {100 * acc:.0f}% (95% interval {ci[0]:.0f} to {ci[1]:.0f}%: {verdict})")
    ax.set_xlabel("judge rating")
    ax.set_ylabel("pairs")
    ax.legend(frameon=False, fontsize=9)
    return fig


def fig_length(data: dict[str, Any], metrics: dict[str, Any]) -> Figure | None:
    """Rating against answer length (words), per prompt set, one colour per variant: does the judge reward length?"""
    def draw(ax: Any, prompt_set: str, ratings: dict[str, list[float]], colors: dict[str, str], names: list[str]) -> None:
        rho = ((metrics.get("length") or {}).get(prompt_set) or {}).get("length_rating_spearman") or {}
        for v in names:
            es = data[v][prompt_set]
            r = rho.get(v)
            ax.scatter([words(e["response"]) for e in es], [float(e["rating"]) for e in es], s=12, alpha=0.7, color=colors[v],
                       label=label(v, metrics) + (f" (ρ {r:+.2f})" if isinstance(r, (int, float)) else ""))
        _threshold_line(ax, metrics, prompt_set, horizontal=True)
        ax.set_xlabel("answer length (words)")
        ax.set_ylabel("judge rating")
        ax.legend(frameon=False, fontsize=7)

    return _rating_figure(data, 4.2, "Rating against answer length (ρ: Spearman, per variant)", draw)


def fig_reference(metrics: dict[str, Any]) -> Figure | None:
    """This run's judge against the reference judge on the reference's answers, per prompt set."""
    sets = (((metrics.get("judge") or {}).get("reference") or {}).get("sets")) or {}
    agreement = (((metrics.get("validity") or {}).get("reference") or {}).get("sets")) or {}
    if not sets:
        return None
    fig, axes = _figure(5.0 * len(sets), 4.2, ncols=len(sets))
    for ax, (prompt_set, d) in zip(axes, sets.items()):
        colors = variant_colors(d["variants"])
        for j, v in enumerate(d["variants"]):
            ax.scatter([row[j] for row in d["reference"]], [row[j] for row in d["judge"]], s=12, alpha=0.7,
                       color=colors[v], label=label(v, metrics))
        a = agreement.get(prompt_set) or {}
        sp = (a.get("spearman") or {}).get("value")
        ax.set_title(f"{prompt_set} prompts: Spearman {sp:+.2f} ({a.get('verdict', '')})" if isinstance(sp, float)
                     else f"{prompt_set} prompts")
        ax.set_xlabel("reference judge's rating")
        ax.set_ylabel("this run's judge")
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle("This run's judge against the reference judge, on the reference's own answers")
    return fig


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _order(values: Iterable[str]) -> list[str]:
    """Numbers in numeric order, anything else alphabetically after them."""
    def key(v: str) -> tuple[int, float, str]:
        try:
            return 0, float(v), v
        except ValueError:
            return 1, 0.0, v
    return sorted(set(values), key=key)


def fig_against(rows: list[dict[str, Any]], axis: str) -> Figure | None:
    """HmR, HpR and CAS (one panel each) against the values of one swept setting, one colour per variant, one
    marker per combination of the other swept settings, 95% interval whiskers (``hhalign compare``'s rows)."""
    key = f"setting:{axis}"
    rows = [r for r in rows if key in r]
    if not rows:
        return None
    values = _order(_text(r[key]) for r in rows)
    variants = variant_order({r["variant"] for r in rows})
    colors = variant_colors(variants)
    rest = sorted({tuple((k[8:], _text(v)) for k, v in r.items() if k.startswith("setting:") and k != key) for r in rows})
    markers = "osD^vP*Xh"
    fig, axes = _figure(13.0, 4.2, len(RATES))
    slots = len(variants) * len(rest)
    for ax, rate in zip(axes, RATES):
        for vi, v in enumerate(variants):
            for oi, other in enumerate(rest):
                pts = [r for r in rows if r["variant"] == v and tuple((k[8:], _text(x)) for k, x in r.items()
                                                                   if k.startswith("setting:") and k != key) == other]
                pts = [r for r in pts if r.get(rate) is not None]
                if not pts:
                    continue
                shift = (vi * len(rest) + oi - (slots - 1) / 2) * (0.7 / max(slots, 1))
                bars = [error_bar(r[rate], r.get(f"{rate}_ci")) for r in pts]
                tag = ", ".join(f"{k}={x}" for k, x in other)
                ax.errorbar([values.index(_text(r[key])) + shift for r in pts], [r[rate] for r in pts],
                            yerr=[[b[0] for b in bars], [b[1] for b in bars]], fmt=markers[oi % len(markers)],
                            color=colors[v], capsize=3, linestyle="none",
                            label=f"{VARIANT_LABELS.get(v, v)}" + (f" ({tag})" if tag else ""))
        ax.set_xticks(range(len(values)), values)
        ax.set_xlabel(axis)
        ax.set_title(RATE_TITLES[rate])
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("%")
    axes[-1].legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"Rates against {axis}, 95% intervals (Wilson; bootstrap for CAS)")
    return fig


def stamp_caveats(fig: Figure, metrics: dict[str, Any]) -> None:
    """Write what the numbers cannot mean (toy models, a judge at chance, few prompts) on the figure itself."""
    shorts = [str(c["short"]) for c in metrics.get("caveats") or [] if isinstance(c, dict) and c.get("short")]
    if shorts:
        title = fig._suptitle.get_text() if fig._suptitle is not None else ""
        stamp = textwrap.fill("; ".join(shorts), width=int(fig.get_figwidth() * 15))  # about 15 characters an inch at 9 pt
        fig.suptitle("\n".join([*([title] if title else []), stamp]), color="#B00020", fontsize=9)


def make_figures(metrics: dict[str, Any], data: dict[str, Any]) -> dict[str, tuple[str, Figure]]:
    """name -> (caption, figure) for every figure there is data for, in report order; each carries the caveats."""
    with matplotlib.rc_context(STYLE):
        figs = _make_figures(metrics, data)
        for _, fig in figs.values():
            stamp_caveats(fig, metrics)
        return figs


def _make_figures(metrics: dict[str, Any], data: dict[str, Any]) -> dict[str, tuple[str, Figure]]:
    figs: dict[str, tuple[str, Figure | None]] = {
        "rates": ("HmR, HpR and CAS per variant.", fig_rates(metrics)),
        "rates_ci": ("HmR, HpR and CAS with 95% intervals (Wilson for HmR/HpR, bootstrap for CAS).",
                     fig_rates(metrics, with_ci=True)),
        "ratings_box": ("Reward-model rating distributions per variant (box: quartiles and median; "
                        "whiskers: 1.5 IQR); dashed: the threshold.",
                        fig_box(data, metrics)),
        "mean_rating": ("Mean reward-model rating per variant; dashed: the threshold.", fig_means(data, metrics)),
    }
    for s in PROMPT_SETS:
        figs[f"threshold_sweep_{s}"] = (
            f"{SET_RATE[s]} as the {s}-set threshold moves; dashed: the chosen threshold.", fig_sweep(metrics, s))
    figs["judge"] = ("The judge's ratings of held-out chosen and rejected replies (pairs no stage trained on); "
                     "dashed: the thresholds.", fig_judge(metrics))
    figs["reference"] = ("This run's judge against the reference judge on the reference's own answers: points along a "
                         "rising line mean the two judges agree.", fig_reference(metrics))
    figs["length"] = ("Rating against answer length: a rising cloud means the judge rewards longer answers (see the "
                      "Length section for each variant's effect at equal length); dashed: the threshold.",
                      fig_length(data, metrics))
    return {name: (cap, fig) for name, (cap, fig) in figs.items() if fig is not None}


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=_metadata(fmt))
    return buf.getvalue()


def _metadata(fmt: str) -> dict[str, Any] | None:
    # No creation dates or software strings: reruns give identical files.
    return {"png": {"Software": None}, "svg": {"Date": None, "Creator": None},
            "pdf": {"CreationDate": None, "Creator": None, "Producer": None}}.get(fmt)


def save_figure(fig: Figure, stem: Path, formats: Iterable[str]) -> dict[str, Path]:
    """Write ``stem.<fmt>`` for each format, each via a temporary file and a rename."""
    out = {}
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        atomic_write_bytes(path, figure_bytes(fig, fmt))
        out[fmt] = path
    return out


