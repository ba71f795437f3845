"""Result tables, built once from ``results.json`` dicts and rendered by both the terminal and the report.

A :class:`Table` is a header, rows of already-formatted cells and the artefact it was read from.
``lasa evaluate`` / ``lasa run`` print them with :func:`render_text`; ``lasa report`` writes the
same tables into markdown and HTML, so the numbers a user sees in the terminal and in the report
cannot disagree. Every ASR cell carries its 95% interval ("21.2 [13.7, 31.4]", in percent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lasa.data import LANGUAGES, TIERS


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    source: str = ""


def pct(x: Any, digits: int = 1) -> str:
    """A rate in percent, or "–" when missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.{digits}f}%"


def with_interval(r: Mapping | None) -> str:
    """ "12.5 [2.2, 47.1]" in percent, from a Wilson / corrected-rate dict (``rate`` or ``corrected``,
    ``low``, ``high``)."""
    if not r:
        return "–"
    point = r.get("rate", r.get("corrected"))
    if point is None or math.isnan(point):  # no prompts, or a judge no better than chance
        return "–"
    return f"{100 * point:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


def _asr(res: Mapping, judge: str | None = None) -> Mapping:
    return res["asr"][judge or res["default_judge"]]


def asr_cell(res: Mapping, key: str, sub: str | None = None, judge: str | None = None) -> str:
    """ASR of one variant for a language (``per_language``), a tier (``per_tier``) or the
    ``average``, with its Wilson interval when the results carry one."""
    a = res["asr"].get(judge or res["default_judge"])
    if not a:
        return "–"
    point = a[key].get(sub) if sub else a[key]
    if point is None:
        return "–"
    iv = a.get("intervals", {}).get(key, {})
    iv = iv.get(sub) if sub else iv
    return with_interval(iv) if iv else f"{100 * point:.1f}"


def one_prompt_points(results: Mapping[str, Mapping]) -> str:
    """What one prompt is worth in the ASR tables, e.g. "1 prompt = 12.5 points"."""
    ns = sorted({n for r in results.values() for n in _asr(r)["n_per_language"].values()})
    return f"1 prompt = {100 / ns[0]:.1f} points" if ns else ""


def language_table(results: Mapping[str, Mapping], judge: str | None = None) -> Table:
    """MultiJail ASR % [95% interval]: languages, tiers and the average down, variants across; then
    the judge-corrected average (Rogan–Gladen) where present and the invalid rate."""
    order = list(results)
    # every language and tier any variant measured (a variant run on fewer shows "–" there)
    measured = [results[v]["asr"].get(judge or results[v]["default_judge"]) or {} for v in order]
    seen = {g for a in measured for g in a.get("per_language", {})}
    tiers = {t for a in measured for t in a.get("per_tier", {})}
    langs = [g for g in LANGUAGES if g in seen] + sorted(seen - set(LANGUAGES))
    rows = [[g, *[asr_cell(results[v], "per_language", g, judge) for v in order]] for g in langs]
    rows += [
        [f"tier {t}", *[asr_cell(results[v], "per_tier", t, judge) for v in order]]
        for t in TIERS
        if t in tiers
    ]
    rows.append(["average", *[asr_cell(results[v], "average", None, judge) for v in order]])
    if any("corrected" in _asr(results[v], judge) for v in order):
        rows.append(
            [
                "average, judge-corrected (Rogan–Gladen)",
                *[with_interval(_asr(results[v], judge).get("corrected", {}).get("average")) for v in order],
            ]
        )
    rows.append(["invalid (avg)", *[pct(_asr(results[v], judge)["invalid_rate"]["average"]) for v in order]])
    unjudged = [(_asr(results[v], judge).get("unjudged") or {}).get("total", 0) for v in order]
    if any(unjudged):  # the judge's unreadable answers, outside every rate above
        rows.append(["unjudged (no verdict, not counted)", *[str(n) for n in unjudged]])
    judges = {v: judge or results[v]["default_judge"] for v in order}
    if len(set(judges.values())) > 1:  # variants evaluated with different --default-judge: say which
        header, source = [f"{v} ({judges[v]})" for v in order], "asr.<the variant's default judge>"
    else:
        header, source = order, f"asr.{judges[order[0]]}"
    return Table(
        [f"lang ({one_prompt_points(results)})", *header], rows, f"eval/<variant>/results.json → {source}"
    )


def summary_table(results: Mapping[str, Mapping]) -> Table:
    """One row per variant: ASR per tier and on average [95% interval] (default judge), invalid rate,
    XSTest refusal on safe prompts, and how often the gate fired on MultiJail. The source names the
    judge; when variants were counted by different judges, each row names its own."""
    judges = {v: r["default_judge"] for v, r in results.items()}
    mixed = len(set(judges.values())) > 1
    rows = []
    for v, r in results.items():
        a = _asr(r)
        o = r.get("over_refusal") or {}
        g = r.get("gate") or {}
        flags = list((g.get("multijail_flag_rate") or {}).values())
        rows.append(
            [
                f"{v} ({judges[v]})" if mixed else v,
                *[asr_cell(r, "per_tier", t) for t in TIERS],
                asr_cell(r, "average"),
                pct(a["invalid_rate"]["average"]),
                pct(o.get("refusal_rate_safe")) + (f" of {o['n_safe']}" if o.get("n_safe") else ""),
                pct(sum(flags) / len(flags)) if flags else "–",
            ]
        )
    return Table(
        ["variant", *[f"ASR {t}" for t in TIERS], "ASR avg", "invalid", "XSTest safe refused", "gate fired"],
        rows,
        "eval/<variant>/results.json → asr, over_refusal, gate; ASR by "
        + (
            "each variant's default judge (named in its row)"
            if mixed
            else f"the `{next(iter(judges.values()), '?')}` judge"
        ),
    )


def _prompt_id(uid: str) -> str:
    """The prompt behind a MultiJail sample uid (``multijail:<lang>:<id>``, lasa.evaluate): the same
    id in every language, the unit the paired test resamples."""
    return uid.rsplit(":", 1)[-1]


def _paired(mine: Mapping[Any, bool], ref: Mapping[Any, bool], keys: Sequence[Any]) -> Any:
    from lasa.stats import paired_difference

    if not keys:
        return None
    return paired_difference(
        [mine[k] for k in keys],
        [ref[k] for k in keys],
        clusters=[_prompt_id(k[1]) for k in keys],
        groups=[k[0] for k in keys],
    )


def paired_table(
    unsafe: Mapping[str, Mapping[tuple[str, str], bool]],
    reference: str = "base",
    seen: Sequence[str] = ("en", "zh"),
) -> Table | None:
    """Each variant against ``reference`` on the prompts both answered: the ASR difference with
    Newcombe's paired 95% interval (widened by the design effect of prompts shared across
    languages) and a sign-flip test over prompts (McNemar's over single responses treated one
    prompt in ten languages as ten pieces of evidence), overall and split into the SSI's training
    (seen) languages and the rest, and how many responses flipped each way.

    ``unsafe`` maps variant -> {(language, sample uid) -> judged unsafe}. Variants share their
    prompts, so this is the comparison to read: two overlapping Wilson intervals hide a consistent
    shift of a few prompts. ``None`` when there is nothing to compare with ``reference``."""
    ref = unsafe.get(reference)
    rows = []
    for v, mine in unsafe.items():
        shared = [k for k in mine if k in ref] if ref is not None and v != reference else []
        if not shared:
            continue
        d = _paired(mine, ref, shared)
        ds = _paired(mine, ref, [k for k in shared if k[0] in seen])
        du = _paired(mine, ref, [k for k in shared if k[0] not in seen])
        rows.append(
            [
                v,
                d.fmt(),
                f"{d.p_value:.2g}",
                ds.fmt() if ds else "–",
                du.fmt() if du else "–",
                f"{d.b_only} / {d.a_only}",
                f"{d.n} ({len({_prompt_id(k[1]) for k in shared})})",
            ]
        )
    if not rows:
        return None
    return Table(
        [
            "variant",
            f"ΔASR vs {reference} [95% CI]",
            "p (sign-flip over prompts)",
            f"Δ seen ({', '.join(seen)})",
            "Δ unseen",
            f"unsafe → not / not → unsafe (vs {reference})",
            "responses (prompts)",
        ],
        rows,
        "eval/<variant>/judgements_<default judge>.jsonl (paired by prompt)",
    )


def _drift_cell(drift: Mapping | None, key: str) -> str:
    if not drift:
        return "–"
    m = drift["mean"]
    if key == "ppl":
        return f"{m['ppl']:.2f} ({m['ppl_base']:.2f})"
    return f"{m[key]:.4f}"


def utility_table(results: Mapping[str, Mapping]) -> Table:
    """Over-refusal (XSTest) and utility per variant: the columns a reader needs to see a cost."""
    rows = []
    for v, r in results.items():
        o = r.get("over_refusal") or {}
        u = r.get("utility") or {}
        rows.append(
            [
                v,
                pct(o.get("refusal_rate_safe")),
                pct(o.get("compliance_rate_unsafe")),
                pct(u.get("mgsm", {}).get("mean")),
                pct(u.get("xcopa", {}).get("mean")),
                pct(u.get("mmlu", {}).get("accuracy")),
                _drift_cell(u.get("drift"), "ppl"),
                _drift_cell(u.get("drift"), "token_kl"),
                _drift_cell(u.get("drift"), "first_token_kl"),
            ]
        )
    return Table(
        [
            "variant",
            "XSTest refusal (safe) ↓",
            "XSTest compliance (unsafe) ↓",
            "MGSM",
            "XCOPA",
            "MMLU-en",
            "FLORES ppl (base) ↓",
            "token KL from base, nats ↓",
            "first-token KL, nats ↓",
        ],
        rows,
        "results.json → over_refusal, utility",
    )


def multilingual_over_refusal_table(results: Mapping[str, Mapping]) -> Table | None:
    """Refusal rate on the translated safe XSTest prompts, per language, for each variant that
    measured it (and, for gated variants, how often the gate fired on them)."""
    have = {v: r for v, r in results.items() if r.get("over_refusal_multilingual")}
    if not have:
        return None
    langs = list(
        dict.fromkeys(g for r in have.values() for g in r["over_refusal_multilingual"]["per_language"])
    )
    rows = []
    for v, r in have.items():
        per = r["over_refusal_multilingual"]["per_language"]
        rows.append(
            [f"{v}: refused", *[with_interval(per.get(g, {}).get("refusal_safe_interval")) for g in langs]]
        )
        flags = (r.get("gate") or {}).get("xstest_mt_safe_flag_rate")
        if flags:
            rows.append([f"{v}: gate fired", *[pct(flags.get(g)) for g in langs]])
    n = next(iter(have.values()))["over_refusal_multilingual"]["per_language"][langs[0]]["n_safe"]
    return Table(
        [f"translated safe XSTest, % [95% interval] ({n} per language)", *langs],
        rows,
        "results.json → over_refusal_multilingual, gate.xstest_mt_safe_flag_rate",
    )


def gate_table(results: Mapping[str, Mapping]) -> Table | None:
    """How often the gate fired, per language and on XSTest's safe prompts (gated variants only)."""
    gated = {v: r for v, r in results.items() if r.get("gate")}
    if not gated:
        return None
    langs = list(dict.fromkeys(g for r in gated.values() for g in r["gate"]["multijail_flag_rate"]))
    return Table(
        ["variant", *langs, "XSTest safe"],
        [
            [
                v,
                *[pct(r["gate"]["multijail_flag_rate"].get(g)) for g in langs],
                pct(r["gate"].get("xstest_safe_flag_rate")),
            ]
            for v, r in gated.items()
        ],
        "results.json → gate",
    )


def render_text(table: Table) -> str:
    """Plain-text columns for the terminal: the label column left-aligned, the others right-aligned."""
    cells = [table.header, *table.rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(table.header))]
    lines = []
    for k, row in enumerate(cells):
        lines.append(  # labels left, numbers right
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            )
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_rows(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """:func:`render_text` for ad-hoc rows (floats to 3 decimals; a missing value as "–")."""

    def cell(c: Any) -> str:
        if c is None or (isinstance(c, float) and math.isnan(c)):
            return "–"
        return f"{c:.3f}" if isinstance(c, float) else str(c)

    fmt = [[cell(c) for c in r] for r in rows]
    return render_text(Table([str(h) for h in header], fmt))
