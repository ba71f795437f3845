"""``RUN/report.md`` and ``RUN/report.html``: the story of a run, every number traced to its file.

The report is assembled from the artefacts only (never from memory of a run), so it can be rebuilt
at any time with ``lasa report --run-dir RUN`` and it shows exactly what the files say. Sections
that have no artefacts yet are left out. The HTML is self-contained (figures inlined).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lasa.data import LANGUAGES, TIERS
from lasa.errors import LasaError
from lasa.runs import RunDir, read_json, read_jsonl, save_figure, write_text
from lasa.tables import (
    Table,
    asr_cell,
    gate_table,
    language_table,
    multilingual_over_refusal_table,
    paired_table,
    pct,
    summary_table,
    utility_table,
)

logger = logging.getLogger(__name__)


@dataclass
class Doc:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[Any]], source: str | None = None) -> None:
        self.blocks.append(("table", (header, rows, source)))

    def img(self, path: str, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def table_of(self, t: Table) -> None:
        self.table(t.header, t.rows, t.source)

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return "–" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def render_md(doc: Doc) -> str:
    out = []
    for kind, val in doc.blocks:
        if kind == "h":
            out.append("#" * val[0] + " " + val[1])
        elif kind == "p":
            out.append(val)
        elif kind == "table":
            header, rows, source = val
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "---|" * len(header))
            out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
            if source:
                out.append(f"\n<sub>source: `{source}`</sub>")
        elif kind == "img":
            out.append(f"![{val[1]}]({val[0]})")
        elif kind == "code":
            out.append("```\n" + val + "\n```")
        out.append("")
    return "\n".join(out)


def render_html(doc: Doc, root: Path, title: str) -> str:
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
        "img{max-width:100%}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.8em}.src{color:#777;"
        "font-size:.8em}"
    )
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{css}</style></head><body>"
    ]
    for kind, val in doc.blocks:
        if kind == "h":
            out.append(f"<h{val[0]}>{html.escape(val[1])}</h{val[0]}>")
        elif kind == "p":
            out.append(f"<p>{html.escape(val).replace('**', '')}</p>")
        elif kind == "table":
            header, rows, source = val
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
            out += [
                "<tr>" + "".join(f"<td>{html.escape(_fmt(c)).replace('**', '')}</td>" for c in r) + "</tr>"
                for r in rows
            ]
            out.append("</table>")
            if source:
                out.append(f"<div class='src'>source: {html.escape(source)}</div>")
        elif kind == "img":
            path = root / val[0]
            if path.is_file():
                data = base64.b64encode(path.read_bytes()).decode()
                out.append(f"<img alt='{html.escape(val[1])}' src='data:image/png;base64,{data}'>")
        elif kind == "code":  # the resolved config: long, so folded away
            out.append(f"<details><summary>show</summary><pre>{html.escape(val)}</pre></details>")
    out.append("</body></html>")
    return "\n".join(out)


# -- figures ---------------------------------------------------------------------------------


def plot_asr(results: dict[str, dict], judge_of: dict[str, str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    variants = list(results)
    langs = [
        g for g in LANGUAGES if any(g in r["asr"][judge_of[v]]["per_language"] for v, r in results.items())
    ]
    groups = [*langs, "high", "medium", "low", "avg"]
    fig, ax = plt.subplots(figsize=(12, 4.2))
    width = 0.8 / max(1, len(variants))
    for k, v in enumerate(variants):
        a = results[v]["asr"][judge_of[v]]
        vals = (
            [a["per_language"].get(g, np.nan) for g in langs]
            + [a["per_tier"].get(t, np.nan) for t in TIERS]
            + [a["average"]]
        )
        iv = a.get("intervals") or {}
        bounds = (
            [iv.get("per_language", {}).get(g) for g in langs]
            + [iv.get("per_tier", {}).get(t) for t in TIERS]
            + [iv.get("average")]
        )
        # the 95% interval of every bar (Wilson per language; tiers and the average on effective counts)
        err = np.array(
            [
                [100 * max(0.0, x - b["low"]), 100 * max(0.0, b["high"] - x)]
                if b and np.isfinite(x)
                else [0.0, 0.0]
                for x, b in zip(vals, bounds)
            ]
        ).T
        ax.bar(
            np.arange(len(groups)) + (k - (len(variants) - 1) / 2) * width,
            [100 * x for x in vals],
            width,
            yerr=err,
            error_kw={"elinewidth": 0.7, "capsize": 1.5, "ecolor": "0.25"},
            label=v,
        )
    ax.axvline(len(langs) - 0.5, color="0.5", lw=0.8)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("ASR (%)")
    ax.set_title(
        "MultiJail attack success rate by language, tier and on average (95% intervals)", fontsize=10
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


# -- sections --------------------------------------------------------------------------------


@contextlib.contextmanager
def _reading(what: str | Path) -> Iterator[None]:
    """Turn a missing key or a wrong-typed value in an artefact into one line naming the file: a
    hand-edited, truncated-then-repaired or foreign JSON file should not end the report in a
    traceback."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise LasaError(
            f"{what} lacks what the report reads ({type(err).__name__}: {err}); rerun the stage that writes "
            "it (if the file is intact, this is a lasa bug: please report it)"
        ) from None


def _locate_section(doc: Doc, rd: Path) -> None:
    p = RunDir(rd).bottleneck
    if not p.is_file():
        return
    bn = read_json(p)
    doc.h(2, "1. Where is the semantic bottleneck?")
    doc.table(
        [
            "model",
            "layer",
            "of",
            "depth",
            "score S_sem−S_lang",
            "95% CI",
            "layers within CI",
            "in 43–68% band",
        ],
        [
            [
                bn["model"],
                bn["layer"],
                bn["num_layers"],
                pct(bn["depth_fraction"]),
                bn["score"],
                f"[{bn['score_ci'][0]:.3f}, {bn['score_ci'][1]:.3f}]",
                ", ".join(map(str, bn["layers_within_ci"])),
                "yes" if bn["in_paper_band"] else "no",
            ]
        ],
        "locate/bottleneck.json",
    )
    doc.p(
        f"Data: {bn['n']['queries']} parallel queries x {bn['n']['languages']} languages ({bn['data']['source']}), "
        f"{bn['pooling']}-token pooling. Negative scores mean no layer clusters more by meaning than by language; "
        "the argmax is then the least language-bound layer."
    )
    if (RunDir(rd).locate / "layer_scores.png").is_file():  # `--no-plots` writes none
        doc.img("locate/layer_scores.png", "per-layer silhouettes, score with bootstrap band, alignment")
    if (RunDir(rd).locate / "tsne.png").is_file():
        doc.img("locate/tsne.png", "t-SNE by language and by query")


def _ssi_section(doc: Doc, rd: Path) -> None:
    # every SSI of the run (`lasa interpret --out-name NAME` writes RUN/NAME/), the default `ssi` first
    found = sorted(
        (p for p in rd.glob("*/metrics.json") if (p.parent / "ssi.json").is_file()),
        key=lambda p: (p.parent.name != "ssi", p.parent.name),
    )
    for p in found:
        with _reading(p):
            _one_ssi_section(doc, rd, p)


def ssi_layer_moved(rd: Path, ssi_dir: Path) -> str | None:
    """A note when the SSI took its layer from the bottleneck and ``lasa locate`` has since put the
    bottleneck elsewhere (a hand rerun: `lasa run` retrains the SSI when locate's output changes)."""
    meta_path, bn_path = ssi_dir / "ssi.json", RunDir(rd).bottleneck
    if not (meta_path.is_file() and bn_path.is_file()):
        return None
    meta, bn = read_json(meta_path), read_json(bn_path)
    layer, now = meta.get("layer"), bn.get("layer")
    if meta.get("layer_source") != "locate/bottleneck.json" or layer is None or now is None or layer == now:
        return None
    return (
        f"the SSI in `{ssi_dir.name}/` reads layer {layer}, the bottleneck when it was trained; "
        f"`locate/bottleneck.json` now says layer {now}. Retrain it (`lasa interpret --run-dir {rd}`, "
        "or `lasa run`) or pass `--layer` to keep the old layer on purpose"
    )


def _one_ssi_section(doc: Doc, rd: Path, p: Path) -> None:
    m = read_json(p)
    name = p.parent.name
    doc.h(
        2,
        "2. Does the safety signal transfer across languages? (SSI"
        + ("" if name == "ssi" else f", {name}/")
        + ")",
    )
    doc.p(
        f"SSI at layer {m['layer']} trained on {'+'.join(m['train_languages'])} (threshold {m['threshold']:.2f}); "
        "harmful = MultiJail, benign = same-language questions (XQuAD/MGSM) or FLORES statements where no "
        "question-form text exists (marked)."
    )
    note = ssi_layer_moved(rd, p.parent)
    if note:
        doc.p(f"**Warning: {note}.**")
        logger.warning("report: %s", note)
    cal = m.get("calibration") or {"method": "none"}
    raw = m.get("per_language_uncalibrated") or {}
    xs_mt = m.get("xstest_multilingual") or {}
    if cal["method"] != "none":
        doc.p(
            "Per-language calibration without harm labels: "
            + cal.get("rule", cal["method"])
            + f" ({cal.get('data', '')}). "
            "TPR / FPR are at the calibrated operating point, with the uncalibrated ones in brackets; "
            "'TPR @5% FPR' is the labelled oracle (what the layer allows, not what the gate does)."
        )
    rows = []
    for g, r in m["per_language"].items():
        fc = m["form_control"].get(g, {})
        u = raw.get(g)
        rows.append(
            [
                g,
                "seen" if r["seen"] else "unseen",
                r["auroc"],
                f"{r['tpr']:.2f}" + (f" ({u['tpr']:.2f})" if u else ""),
                f"{r['fpr']:.2f}" + (f" ({u['fpr']:.2f})" if u else ""),
                r.get("tpr_at_fpr_05"),
                pct(xs_mt[g]["fpr_safe"]) if g in xs_mt else "–",
                r["n_harmful"],
                r["n_benign"],
                r["benign_source"],
                fc.get("form_probe_auroc"),
            ]
        )
    ms, mu = m["macro_seen"], m["macro_unseen"]
    rows.append(["macro seen", "", ms.get("auroc"), ms.get("tpr"), ms.get("fpr"), "", "", "", "", "", ""])
    rows.append(["macro unseen", "", mu.get("auroc"), mu.get("tpr"), mu.get("fpr"), "", "", "", "", "", ""])
    doc.table(
        [
            "lang",
            "",
            "AUROC",
            "TPR",
            "FPR",
            "TPR @5% FPR",
            "translated XSTest safe flagged",
            "n harm",
            "n benign",
            "benign source",
            "form-only AUROC",
        ],
        rows,
        f"{name}/metrics.json",
    )
    spread = m.get("seed_spread")
    ens = m.get("ensemble")
    seeds = (
        f" (this recipe re-split and retrained with {len(spread['per_seed'])} single seeds: "
        f"{pct(spread['min']['xstest_fpr_safe'])}–{pct(spread['max']['xstest_fpr_safe'])}, thresholds "
        f"{spread['min']['threshold']:.2f}–{spread['max']['threshold']:.2f})"
        if spread
        else ""
    )
    doc.p(
        (
            f"The SSI is an ensemble of {ens['size']} (seeds {ens['members'][0]['seed']}–"
            f"{ens['members'][-1]['seed']}, each at its own threshold; it flags on their mean margin). "
            if ens
            else ""
        )
        + f"XSTest safe-but-scary prompts flagged (false positives): {pct(m['xstest']['fpr_safe'])} of "
        f"{m['xstest']['n_safe']}{seeds}. The form-only column is a probe trained to tell questions from "
        "non-questions: where it is high, the benign set differs from MultiJail in form and the SSI's AUROC "
        "there is inflated."
    )
    # the sweep of this SSI's own run only (metrics.json names it): a stale figure beside a
    # retrained SSI would read as its sweep
    if m.get("layer_sweep") and (p.parent / "layer_sweep.png").is_file():
        sw = read_json(p.parent / "layer_sweep.json")
        best = max(sw["layers"], key=lambda r: r["unseen_auroc_mean"])
        doc.p(
            f"Layer sweep: best unseen-language mean AUROC {best['unseen_auroc_mean']:.3f} at layer {best['layer']}"
            f"; at the located bottleneck (layer {sw['bottleneck']}): "
            f"{next(r['unseen_auroc_mean'] for r in sw['layers'] if r['layer'] == sw['bottleneck']):.3f}."
        )
        t = sw.get("transfer_layer")
        if t:
            doc.p(
                f"Transfer layer chosen without unseen-language labels ({t['rule']}): layer {t['layer']}, unseen "
                f"AUROC there {t['unseen_auroc_mean']:.3f}."
            )
        doc.img(f"{name}/layer_sweep.png", "SSI transfer by layer")


def _align_section(doc: Doc, rd: Path) -> None:
    methods = RunDir(rd).aligned_methods()
    if not methods:
        return
    doc.h(2, "3. Alignment (stage 3)")
    rows = []
    for mth in methods:
        s = read_json(RunDir(rd).align_summary(mth))
        if "training" not in s:
            continue
        fl = s.get("first_last", {})
        rows.append(
            [
                mth,
                s["rows"]["n_rows"],
                s["rows"]["conditioned"]["safety"],
                s["training"]["steps"],
                s["training"]["seconds_per_step"],
                fl.get("loss", {}).get("first"),
                fl.get("loss", {}).get("last"),
                fl.get("rewards/margins", {}).get("first"),
                fl.get("rewards/margins", {}).get("last"),
                (s.get("lora") or {}).get("layers", "full"),
            ]
        )
    doc.table(
        [
            "method",
            "rows",
            "conditioned safety rows",
            "steps",
            "s/step",
            "loss first",
            "loss last",
            "margin first",
            "margin last",
            "LoRA layers",
        ],
        rows,
        "align/<method>/summary.json",
    )
    for mth in methods:
        if (RunDir(rd).align(mth) / "loss.png").is_file():
            doc.img(f"align/{mth}/loss.png", f"{mth} training curves")


def _unsafe_by_prompt(rd: Path, results: dict[str, dict]) -> dict[str, dict[tuple[str, str], bool]]:
    """Per variant, (language, MultiJail sample uid) -> judged unsafe by the variant's default judge.

    The judgements file is a cache that keeps verdicts on responses the variant no longer has (a
    rerun with fewer prompts, a regenerated response): only the verdicts on the responses in its
    ``completions.jsonl`` count, as in its results.json."""
    from lasa.judges import response_hash, unjudged

    out = {}
    for v, r in results.items():
        p = RunDir(rd).eval(v) / f"judgements_{r['default_judge']}.jsonl"
        c = RunDir(rd).eval(v) / "completions.jsonl"
        if p.is_file() and c.is_file():
            current = {(s["uid"], response_hash(s["response"])) for s in read_jsonl(c)}
            out[v] = {
                (j["lang"], j["uid"]): j["label"] == "unsafe"
                for j in read_jsonl(p)
                # a response the judge gave no verdict on is in no ASR: the pair leaves the comparison
                if (j["uid"], j.get("response_sha")) in current and not unjudged(j)
            }
    return out


def _seen_languages(rd: Path) -> tuple[str, ...]:
    """The SSI's training languages (what the gate and the adapter's rows were made from)."""
    p = RunDir(rd).ssi() / "ssi.json"
    langs = read_json(p).get("train_languages") if p.is_file() else None
    return tuple(langs or ("en", "zh"))


def _recorded(rd: Path, variant: str, key: str) -> str | None:
    """The first non-null ``generation[key]`` of a variant's MultiJail completions (what generated them)."""
    path = RunDir(rd).eval(variant) / "completions.jsonl"
    if not path.is_file():
        return None
    import json

    with open(path, encoding="utf-8") as f:  # the first rows say it: no need to parse the whole file
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            value = (row.get("generation") or {}).get(key) if isinstance(row, dict) else None
            if value:
                return str(value)
    return None


def _moved(recorded: str, recorded_run: str | None, run_dir: Path) -> Path | None:
    """Where a path recorded in a variant's config is now. A path inside the run directory as it was
    recorded (``runs/quick/align/lasa/adapter`` of a run made as ``runs/quick``) is looked up inside
    this run, which may have been moved or copied since; any other path is taken as typed. None
    when it no longer exists (nothing to compare with)."""
    rec = Path(recorded)
    if recorded_run:
        try:
            tail = rec.relative_to(Path(recorded_run))
        except ValueError:
            tail = None
        if tail is not None:
            cand = run_dir / tail
            return cand if cand.exists() else None
    return rec if rec.exists() else None


def counted_by(judge_of: dict[str, str]) -> str:
    """Who counted the ASRs, for the report's definition: one judge by name, or, when a variant was
    evaluated with another ``--default-judge``, each variant's own (the tables name it per column;
    the definition named the first variant's judge for all of them)."""
    judges = sorted(set(judge_of.values()))
    if len(judges) == 1:
        return f"the `{judges[0]}` judge"
    return "each variant's default judge (" + ", ".join(f"`{j}`" for j in judges) + "; see the warning below)"


def mixed_judges(judge_of: dict[str, str], versions: dict[str, str | None] | None = None) -> str | None:
    """A warning when the variants' ASRs were counted by different default judges (a variant evaluated
    by hand with another ``--default-judge``), or by different versions of the same one (its weights
    or rules changed between two ``lasa evaluate`` runs): their differences would compare judges too.
    ``versions`` is each variant's ``judge_versions`` entry for its default judge (None: not recorded,
    results.json from before lasa recorded it)."""
    if len(set(judge_of.values())) < 2:
        known = {v: x for v, x in (versions or {}).items() if x}
        if len(set(known.values())) < 2:
            return None
        # a digest of the whole string: versions share their tail (the e5 build) and can differ anywhere
        listed = ", ".join(f"{v}: {hashlib.sha256(x.encode()).hexdigest()[:12]}" for v, x in known.items())
        return (
            f"the variants were counted by different versions of the `{next(iter(judge_of.values()))}` "
            f"judge ({listed}); their ASRs and the paired differences below compare judge versions as well "
            "as variants; rerun `lasa evaluate` for the older variants (their answers are re-judged, not "
            "regenerated)"
        )
    mixed = ", ".join(f"{v}: `{j}`" for v, j in judge_of.items())
    return (
        f"the variants were counted by different default judges ({mixed}); their ASRs, and the paired "
        "differences below, compare judges as well as variants; re-evaluate with one `--default-judge`"
    )


def mixed_models(rd: Path, results: dict[str, dict]) -> str | None:
    """A note when the variants were not all generated by the same base model (the weights'
    signature each completion records, else the config's model): their rows and the paired tests
    would compare models, not methods."""
    recorded = {v: _recorded(rd, v, "model_weights") for v in results}
    # one kind of identity for all: a variant whose completions are gone has only its config's path,
    # which never equals another variant's weights signature (the same model read as two)
    exact = all(recorded.values())
    by: dict[str, list[str]] = {}
    for variant, res in results.items():
        ident = recorded[variant] if exact else str((res.get("config") or {}).get("model"))
        by.setdefault(ident, []).append(variant)
    if len(by) < 2:
        return None
    names = {
        ident: str((results[vs[0]].get("config") or {}).get("model") or ident[:12])
        for ident, vs in by.items()
    }
    if len(set(names.values())) == 1:  # one path, its weight files rewritten between the variants
        groups = "; ".join(f"{', '.join(vs)}" for vs in by.values())
        return (
            f"the weight files at {next(iter(names.values()))} changed between the variants' generations "
            f"(groups: {groups}); rerun `lasa run` (or `lasa evaluate` for each variant) so that all are "
            "generated by the weights there now"
        )
    groups = "; ".join(f"{names[i]}: {', '.join(vs)}" for i, vs in by.items())
    return (
        f"the variants were generated by different base models ({groups}); the tables and paired "
        "comparisons below mix models, not just methods — evaluate each model in its own run directory"
    )


#: The settings that shape a completion beyond the variant itself (the sampling knobs only while
#: sampling; not dtype, whose "auto" and "float32" may be the same precision).
_GENERATION_KEYS = ("max_new_tokens", "do_sample", "backend")
_SAMPLING_KEYS = ("temperature", "top_p", "seed")


def mixed_generation(results: dict[str, dict]) -> str | None:
    """A note when the variants were generated with different settings (a variant evaluated by hand
    with another ``--max-new-tokens``): a longer answer has more room to comply, so the rows and the
    paired differences would compare settings as well as methods."""
    cfgs = {v: res.get("config") or {} for v, res in results.items()}
    sampling = any(c.get("do_sample") for c in cfgs.values())
    keys = _GENERATION_KEYS + (_SAMPLING_KEYS if sampling else ())
    differ = []
    for key in keys:
        values = {v: c.get(key) for v, c in cfgs.items() if key in c}
        if len({json.dumps(x, default=str) for x in values.values()}) > 1:
            differ.append(f"{key} (" + ", ".join(f"{v} {x}" for v, x in values.items()) + ")")
    if not differ:
        return None
    return (
        f"the variants were generated with different settings: {'; '.join(differ)}; their rows and the "
        "paired differences compare these settings as well as the variants — re-evaluate with one setting"
    )


def mixed_gates(rd: Path, results: dict[str, dict]) -> str | None:
    """A note when the gated variants were gated differently (another SSI, ``--gate-threshold`` or
    conditioning text): "what training adds beyond the gate" pairs ``lasa+gate`` with ``base+gate``
    and reads the difference as the adapter's, which holds only for one gate. Compared by the gate
    digest their completions record (SSI weights, threshold, conditioning text)."""
    gated = [v for v, r in results.items() if (r.get("config") or {}).get("gate")]
    digests = {v: _recorded(rd, v, "gate_digest") for v in gated}
    if len({d for d in digests.values() if d}) < 2:
        return None

    def describe(v: str) -> str:
        cfg, info = results[v].get("config") or {}, results[v].get("variant_info") or {}
        threshold = cfg.get("gate_threshold")
        threshold = threshold if threshold is not None else info.get("ssi_threshold")
        return (
            f"{v}: SSI {cfg.get('ssi') or 'ssi'}, layer {info.get('ssi_layer', '?')}, threshold {threshold}"
        )

    texts = {(results[v].get("config") or {}).get("conditioning_text") for v in gated}
    also = "; their conditioning texts differ" if len(texts) > 1 else ""
    return (
        f"the gated variants were gated differently ({'; '.join(describe(v) for v in gated)}{also}); "
        "comparisons between them measure the gates as well as the adapters — evaluate them with one gate"
    )


def stale_variants(rd: Path, results: dict[str, dict]) -> list[str]:
    """Variants whose completions were generated by another adapter or SSI than the one the run now
    holds: a stage rerun by hand (``lasa align`` / ``lasa interpret``) after ``lasa evaluate``. `lasa
    run` redoes what changed; a hand run leaves the old ASR next to the new artefact, and the report
    says so rather than present the pair as one experiment. Compared by content (the digests the
    completions record), so a moved run directory is not flagged."""
    from lasa.evaluate import _adapter_digest, resolve_adapter, resolve_ssi
    from lasa.models import adapter_complete
    from lasa.runs import fingerprint

    notes = []
    for variant, res in results.items():
        cfg = res.get("config") or {}
        spec = cfg.get("adapter")
        if spec:
            try:
                path = (
                    resolve_adapter(spec, str(rd))
                    if "/" not in spec
                    else _moved(spec, cfg.get("run_dir"), rd)
                )
            except LasaError:
                path = None
            want = _recorded(rd, variant, "adapter_digest")
            whole = path is not None and adapter_complete(path)
            current = _adapter_digest(path) if whole else None
            if not whole:
                notes.append(
                    f"`{variant}`'s adapter `{path or spec}` is gone or incomplete (a training interrupted or "
                    "deleted since?): its rows describe an adapter this run no longer holds; `lasa run` (or "
                    f"`lasa align`) trains it again"
                )
            elif want and current and current != want:
                notes.append(
                    f"`{variant}` was generated with another adapter than `{path}` (retrained since?): "
                    f"its rows describe that other adapter; rerun `lasa evaluate --variant {variant}` "
                    "(or `lasa run`)"
                )
        if cfg.get("gate"):
            want = _recorded(rd, variant, "gate_digest")
            spec = cfg.get("ssi")
            found = resolve_ssi(spec, str(rd)) if spec else rd / "ssi"  # an --out-name: inside this run
            where = _moved(spec, cfg.get("run_dir"), rd) if spec and found == Path(spec) else found
            if where is None or not all((Path(where) / f).is_file() for f in ("ssi.json", "ssi.safetensors")):
                notes.append(
                    f"`{variant}`'s SSI `{where or cfg.get('ssi')}` is gone or incomplete (an interpret stage "
                    "interrupted or deleted since?): its flags and ASR describe a gate this run no longer holds; "
                    "`lasa run` (or `lasa interpret`) trains it again"
                )
            elif want and (Path(where) / "ssi.json").is_file():
                from lasa.ssi import SSI

                try:
                    ssi = SSI.load(where)
                    if cfg.get("gate_threshold") is not None:
                        ssi = ssi.with_threshold(cfg["gate_threshold"])
                    have = fingerprint({"ssi": ssi.digest, "conditioning_text": cfg.get("conditioning_text")})
                except (LasaError, KeyError, TypeError):
                    continue
                if have != want:
                    notes.append(
                        f"`{variant}` was gated by another SSI than `{where}` (retrained since?): its flags and "
                        f"ASR describe that other gate; rerun `lasa evaluate --variant {variant}` (or `lasa run`)"
                    )
    return notes


def unfinished_variants(rd: Path) -> list[str]:
    """Variant folders with completions but no ``results.json`` (one being generated now: its marker
    is held aside meanwhile; an evaluation interrupted before it judged; or completions changed by a
    `lasa generate` since): left out of the tables, so the
    report says so instead of dropping them without a word."""
    eval_dir = rd / "eval"
    done = {p.parent.name for p in eval_dir.glob("*/results.json")}  # a skipped name is warned about there
    if not eval_dir.is_dir():
        return []
    return sorted(
        d.name
        for d in eval_dir.iterdir()
        if d.is_dir() and d.name not in done and any(d.glob("completions*.jsonl"))
    )


def _eval_section(doc: Doc, rd: Path, variants: list[str] | None) -> None:
    found = RunDir(rd).evaluated_variants()
    order = [v for v in (variants or []) if v in found] + [v for v in found if v not in (variants or [])]
    pending = unfinished_variants(rd)
    if pending:
        note = (
            f"{', '.join(f'`{v}`' for v in pending)}: completions but no results.json (being generated now, "
            "interrupted before judging, or changed by `lasa generate` since), so not in the tables; rerun `lasa evaluate "
            f"--variant {pending[0]}` (or `lasa run`) to count {'it' if len(pending) == 1 else 'them'}"
        )
        logger.warning("report: %s", note)
    if not order:
        if pending:
            doc.h(2, "4. Safety: MultiJail attack success rate")
            doc.p(f"**Warning: {note}.**")
        return
    results = {v: read_json(RunDir(rd).results(v)) for v in order}
    for v, r in results.items():  # valid JSON of another shape: name the variant, not a KeyError
        if not isinstance(r, dict) or not {"default_judge", "asr", "multijail"} <= set(r):
            raise LasaError(
                f"{RunDir(rd).results(v)} is not an evaluation's results (no default_judge / asr / multijail); "
                f"delete it and rerun `lasa evaluate --variant {v}` (or `lasa run`)"
            )
    judge_of = {v: r["default_judge"] for v, r in results.items()}
    doc.h(2, "4. Safety: MultiJail attack success rate")
    j0 = judge_of[order[0]]
    n = results[order[0]]["multijail"]["n_per_language"]
    doc.p(
        f"ASR = share of responses judged unsafe by {counted_by(judge_of)} (invalid responses — echo, loops, gibberish — "
        f"are not unsafe; their share is the last row), in % with its 95% interval (Wilson per language; a tier's and the average's are widened by the "
        f"design effect of the prompts the languages share: results.json `intervals.method`). {n} prompts per "
        "language, the same ids in every language."
    )
    judges_note = mixed_judges(
        judge_of, {v: (r.get("judge_versions") or {}).get(judge_of[v]) for v, r in results.items()}
    )
    if judges_note:
        doc.p(f"**Warning: {judges_note}.**")
    val = results[order[0]].get("judge_validation", {}).get(j0)
    if val:
        doc.p(f"Judge validation (`{j0}`, stored with its weights): {val}.")

    if pending:
        doc.p(f"**Warning: {note}.**")
    for note in [
        mixed_models(rd, results),
        mixed_generation(results),
        mixed_gates(rd, results),
        *stale_variants(rd, results),
    ]:
        if not note:
            continue
        doc.p(f"**Warning: {note}.**")
        logger.warning("report: %s", note)
    doc.table_of(summary_table(results))
    unsafe, seen = _unsafe_by_prompt(rd, results), _seen_languages(rd)
    lost = [v for v in results if v not in unsafe]
    if lost:  # results.json without the files the paired comparisons read (deleted by hand?)
        note = (
            f"{', '.join(f'`{v}`' for v in lost)}: results.json but no completions.jsonl or verdict file of "
            "its default judge, so not in the paired comparisons below; rerun `lasa evaluate --variant "
            f"{lost[0]}` (or `lasa run`) to write them again"
        )
        doc.p(f"**Warning: {note}.**")
        logger.warning("report: %s", note)
    prompt_sets = {v: frozenset(u) for v, u in unsafe.items()}
    same_prompts = len(set(prompt_sets.values())) <= 1
    if not same_prompts:  # hand-run variants with other --n / --langs
        sizes = ", ".join(f"{v} {len(ps)}" for v, ps in prompt_sets.items())
        doc.p(
            f"**Warning: the variants did not answer the same prompts** (judged MultiJail responses: {sizes}); "
            "their rows above are not comparable prompt for prompt, and the paired comparisons below use only "
            "the prompts both sides answered. Rerun the variants with the same --n and --langs (or `lasa run`)."
        )
    adapters = {v: u for v, u in unsafe.items() if v != "base" and not v.endswith("+gate")}
    gated = {v: u for v, u in unsafe.items() if v.endswith("+gate")}
    for subset, reference, caption in (
        (
            unsafe,
            "base",
            "Paired by prompt ("
            + (
                "every variant answered the same prompts"
                if same_prompts
                else "on the prompts both sides answered"
            )
            + "): the ASR difference from "
            "`base` with Newcombe's paired 95% interval and a sign-flip test over prompts, in points (one "
            "prompt asked in every language is one piece of evidence: the interval is widened by the design "
            "effect of that sharing); 'seen' are the SSI's training languages. This is the comparison to "
            "read when two Wilson intervals overlap.",
        ),
        (
            adapters,
            "kto",
            "The adapters without the gate, against the KTO baseline trained on the same rows.",
        ),
        (
            gated,
            "base+gate",
            "What training adds beyond the gate: each gated adapter against the gated base model.",
        ),
        (
            {v: u for v, u in gated.items() if v != "base+gate"},
            "kto+gate",
            "The gated adapters against KTO's adapter behind the same gate (KTO never saw the "
            "conditioning text): what LASA's conditioned training adds over plain KTO, gated.",
        ),
    ):
        paired = paired_table(subset, reference=reference, seen=seen)
        if paired:
            doc.p(caption)
            doc.table_of(paired)
    doc.table_of(language_table(results))
    plot_asr(results, judge_of, rd / "report" / "asr.png")
    doc.img("report/asr.png", "ASR by language and tier")
    other = sorted({j for r in results.values() for j in r["asr"]} - {j0})
    for j in other:
        doc.p(f"The same with the `{j}` judge:")
        doc.table(
            ["", *order],
            [
                ["average ASR % [95% CI]", *[asr_cell(results[v], "average", judge=j) for v in order]],
                ["tier low", *[asr_cell(results[v], "per_tier", "low", judge=j) for v in order]],
            ],
            f"eval/<variant>/judgements_{j}.jsonl",
        )
    rows = []
    for v in order:
        for pair, a in results[v].get("judge_agreement", {}).items():
            # results.json before the unjudged rows were left out has no n
            rows.append([v, pair, a["kappa"], a["raw_agreement"], a.get("n", "–"), a.get("unjudged", "–")])
    if rows:
        doc.h(3, "Judge agreement")
        doc.table(
            [
                "variant",
                "judges",
                "Cohen's kappa",
                "raw agreement",
                "responses both judged",
                "left out (no verdict)",
            ],
            rows,
            "results.json → judge_agreement",
        )
    gates = gate_table(results)
    if gates:
        doc.h(3, "How often the gate fired")
        doc.table_of(gates)
    doc.h(2, "5. Over-refusal and utility")
    doc.table_of(utility_table(results))
    mt = multilingual_over_refusal_table(results)
    if mt:
        doc.p(
            "Over-refusal beyond English: the same XSTest safe prompts, machine-translated for lasa "
            "(not human-verified), refused per language."
        )
        doc.table_of(mt)


def _timings_section(doc: Doc, rd: Path, pipeline: list[dict] | None) -> None:
    """Stage times: this `lasa run`'s (``pipeline``), else the last one recorded in ``pipeline.json``,
    with each stage's own breakdown from ``config.yaml`` (extraction, generation, judging, ...)."""
    import yaml

    source = "pipeline.json"
    if pipeline is None:
        state_path = rd / "pipeline.json"
        try:
            pipeline = (
                (read_json(state_path).get("_last_run") or {}).get("stages") if state_path.is_file() else None
            )
        except (LasaError, AttributeError):
            logger.warning("report: %s is unreadable; no Timings section", state_path)
            pipeline = None
        if pipeline is not None and not isinstance(pipeline, list):
            logger.warning("report: %s has no readable stage times; no Timings section", state_path)
            pipeline = None
        source = "pipeline.json (_last_run)"
    if not pipeline:
        return
    parts: dict[str, dict] = {}
    stages: Any = {}
    try:
        stages = (yaml.safe_load(RunDir(rd).config.read_text(encoding="utf-8")) or {}).get("stages") or {}
        parts = {k: v.get("timings") or {} for k, v in stages.items() if isinstance(v, dict)}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        logger.warning(
            "report: %s is missing or unreadable; stage times without their breakdown", RunDir(rd).config
        )
        stages = {}
    for k, v in stages.items():  # align records its training instead
        training = v.get("training") if isinstance(v, dict) else None
        if isinstance(training, dict) and isinstance(training.get("seconds"), int | float):
            parts[k] = {"train_seconds": training["seconds"]} | (
                {"s/step": training["seconds_per_step"]} if "seconds_per_step" in training else {}
            )

    def breakdown(stage: str) -> str:
        t = parts.get(stage) or {}
        return ", ".join(
            f"{v:g} s/step" if k == "s/step" else f"{k.removesuffix('_seconds')} {v:g} s"
            for k, v in t.items()
            if k != "total_seconds" and isinstance(v, int | float)
        )

    doc.h(2, "Timings")
    doc.table(
        ["stage", "status", "seconds", "of which"],
        [
            [
                str(s.get("stage", "?")),
                str(s.get("status", "?")),
                f"{s['seconds']:.1f}" if isinstance(s.get("seconds"), int | float) else "–",
                breakdown(str(s.get("stage", ""))),
            ]
            for s in pipeline
            if isinstance(s, dict)
        ],
        source + " and config.yaml",
    )


def build_report(
    run_dir: str | Path, variants: list[str] | None = None, pipeline: list[dict] | None = None
) -> dict:
    rd = Path(run_dir)
    found = [
        RunDir(rd).bottleneck,
        *rd.glob("*/ssi.json"),
        *rd.glob("align/*/summary.json"),
        *rd.glob("eval/*/results.json"),
    ]
    if not any(p.is_file() for p in found):
        raise LasaError(
            f"{rd} holds no lasa artefacts (locate/, ssi/, align/, eval/): run `lasa run --run-dir {rd}` "
            "or a stage first"
        )
    unknown = [v for v in variants or [] if v not in RunDir(rd).evaluated_variants()]
    if unknown:
        raise LasaError(
            f"--variants {' '.join(unknown)}: not evaluated in {rd} (evaluated: "
            f"{' '.join(RunDir(rd).evaluated_variants()) or 'none'})"
        )
    doc = Doc()
    cfg_path = RunDir(rd).config
    model = "?"
    if (RunDir(rd).bottleneck).is_file():
        with _reading(RunDir(rd).bottleneck):
            model = read_json(RunDir(rd).bottleneck)["model"]
    doc.h(1, f"LASA run: {model}")
    doc.p(
        f"Run directory `{rd}`, report built {time.strftime('%Y-%m-%d %H:%M')}. Every table names the artefact "
        "file it was read from; rebuild with `lasa report --run-dir " + str(rd) + "`."
    )
    with _reading(RunDir(rd).bottleneck):
        _locate_section(doc, rd)
    _ssi_section(doc, rd)
    with _reading(rd / "align" / "*" / "summary.json"):
        _align_section(doc, rd)
    with _reading(rd / "eval" / "*" / "results.json (or its judgements)"):
        _eval_section(doc, rd, variants)
    _timings_section(doc, rd, pipeline)
    if cfg_path.is_file():
        doc.h(2, "Resolved configuration")
        doc.code(cfg_path.read_text(encoding="utf-8"))
    md = rd / "report.md"
    htm = rd / "report.html"
    write_text(md, render_md(doc))
    write_text(htm, render_html(doc, rd, f"LASA run {rd.name}"))
    return {"markdown": str(md), "html": str(htm)}
