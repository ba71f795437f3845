"""Stage 2 — interpret: train the SSI on a few languages and measure how far it transfers.

``metrics.json`` reports the SSI per language (seen vs unseen), next to two controls that keep the
number honest: a form-only probe (does "question vs not" already separate the evaluation set?)
and the false-positive rate on XSTest's safe-but-scary prompts. States are cached per prompt, so
changing the recipe re-extracts only what is new.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lasa.config import InterpretConfig
from lasa.data.safety import (
    Prompt,
    evaluation_prompts,
    training_prompts,
    validate_train_langs,
    xstest,
    xstest_translated,
)
from lasa.errors import LasaError
from lasa.interpret.calibrate import calibration_prompts, fit_language_calibration
from lasa.interpret.metrics import form_control, macro, per_language, xstest_mt_metrics
from lasa.interpret.sweep import run_sweep, transfer_layer
from lasa.interpret.train import Split, fit_and_evaluate, group_split
from lasa.models import LoadedModel, base_model, numerics_identity, validate_layer, weights_signature
from lasa.results import InterpretResult
from lasa.runs import RunDir, atomic_path, fingerprint, staged_artefacts, write_json
from lasa.ssi import INDEX_CONVENTION, SCORES_FILE, SSI, scores_key, write_scores

logger = logging.getLogger(__name__)


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class InterpretPrompts:
    """Every prompt set the interpret stage extracts states for."""

    pool: list[Prompt]  # SSI training pool (train + validation), hard negatives included
    recipe: dict
    evaluation: list[Prompt]  # MultiJail harmful + same-form benign, every language
    benign_source: dict[str, str]
    xstest: list[dict]
    calibration: list[Prompt]  # parallel FLORES sentences (label-free)
    xstest_mt: list[dict]  # translated XSTest

    @property
    def texts(self) -> list[str]:
        """All prompts, de-duplicated in a fixed order (the rows of the state cache)."""
        return list(
            dict.fromkeys(
                [p.text for p in self.pool]
                + [p.text for p in self.evaluation]
                + [r["prompt"] for r in self.xstest]
                + [p.text for p in self.calibration]
                + [r["prompt"] for r in self.xstest_mt]
            )
        )

    def split(self, pos: dict[str, int], val_fraction: float, seed: int) -> Split:
        """Row indices (into the state cache's text list ``pos``) of a train / validation split of the
        pool by item id (``seed``), and of the evaluation, XSTest and calibration sets."""
        tr, va = group_split(self.pool, val_fraction, seed)
        return Split(
            train=[pos[self.pool[i].text] for i in tr],
            val=[pos[self.pool[i].text] for i in va],
            eval=[pos[p.text] for p in self.evaluation],
            xstest=[pos[r["prompt"]] for r in self.xstest],
            y_train=torch.tensor([self.pool[i].label for i in tr], dtype=torch.float32),
            y_val=torch.tensor([self.pool[i].label for i in va], dtype=torch.float32),
            eval_prompts=self.evaluation,
            calibration=[pos[p.text] for p in self.calibration],
            calibration_langs=[p.lang for p in self.calibration],
        )


def seed_spread(
    x: torch.Tensor,
    layer: int,
    prompts: InterpretPrompts,
    pos: dict[str, int],
    cfg: InterpretConfig,
    first: dict,
    train_langs: Sequence[str],
    fits: dict[int, dict] | None = None,
) -> dict | None:
    """How much of the SSI's headline figures is one seed's draw: the same recipe re-split and
    retrained with ``cfg.spread_seeds`` seeds (the first is the saved SSI, ``first``), each scored
    at its own validated threshold without per-language offsets. On the quick preset's pool the
    XSTest safe-prompt FPR ranged 0.12–0.29 over five seeds while the saved SSI read 0.12.
    ``fits``: fits already made, by seed (an ensemble's members), taken instead of refitting."""
    if cfg.spread_seeds < 2:
        return None
    xs_safe = np.array([r["label"] == "safe" for r in prompts.xstest])
    xs_rows = [pos[r["prompt"]] for r in prompts.xstest]
    runs = []
    for k in range(cfg.spread_seeds):
        seed = cfg.seed + k
        if k == 0:
            res = first
        elif fits is not None and seed in fits:
            res = fits[seed]
        else:
            res = fit_and_evaluate(
                x, layer, prompts.split(pos, cfg.val_fraction, seed), replace(cfg, seed=seed)
            )
        probs = res["ssi"].without_calibration().predict_proba(x[xs_rows])
        flagged = probs > res["threshold"]
        table = res["per_language"]
        unseen = [g for g in table if g not in train_langs]
        seen = [g for g in table if g in train_langs]
        runs.append(
            {
                "seed": seed,
                "threshold": res["threshold"],
                "xstest_fpr_safe": float(flagged[xs_safe].mean()),
                "xstest_tpr_unsafe": float(flagged[~xs_safe].mean()),
                "unseen_auroc": macro(table, unseen).get("auroc") if unseen else None,
                "seen_auroc": macro(table, seen).get("auroc"),
            }
        )
    keys = [k for k in runs[0] if k != "seed" and runs[0][k] is not None]
    return {
        "what": "the recipe re-split (train / validation by item id) and retrained per seed; the first seed is "
        "the saved SSI; scores at each seed's own threshold, without the per-language offsets",
        "per_seed": runs,
        "min": {k: float(min(r[k] for r in runs)) for k in keys},
        "max": {k: float(max(r[k] for r in runs)) for k in keys},
        "mean": {k: float(np.mean([r[k] for r in runs])) for k in keys},
    }


def interpret_prompts(
    train_langs: Sequence[str],
    cap: int,
    seed: int,
    hard_negatives: bool,
    eval_n_harmful: int | None,
    eval_n_benign: int,
    calibration_n: int,
    xstest_mt_n: int,
) -> InterpretPrompts:
    """The prompt sets of one interpret run (``calibration_n`` 0: no FLORES calibration sentences)."""
    pool, recipe = training_prompts(train_langs, cap=cap, seed=seed, with_hard_negatives=hard_negatives)
    evalp, benign_source = evaluation_prompts(None, eval_n_harmful, eval_n_benign, seed)
    return InterpretPrompts(
        pool=pool,
        recipe=recipe,
        evaluation=evalp,
        benign_source=benign_source,
        xstest=xstest(),
        calibration=calibration_prompts(pool, calibration_n) if calibration_n else [],
        xstest_mt=xstest_translated(None, xstest_mt_n),
    )


def saved_prompts(ssi_dir: str | Path, calibration_n: int = 0) -> InterpretPrompts:
    """The prompt sets a finished interpret run used, rebuilt from its ``ssi.json`` and
    ``metrics.json`` (for analyses that re-score an SSI from its state cache without the model;
    ``calibration_n``: how many FLORES ids per language to take, at most what the run extracted)."""
    from lasa.runs import read_json

    d = Path(ssi_dir)
    for name in ("ssi.json", "metrics.json"):
        if not (d / name).is_file():
            raise LasaError(f"no {d / name}; run `lasa interpret` for that directory first")
    meta, metrics = read_json(d / "ssi.json"), read_json(d / "metrics.json")
    recipe, data = meta["data_recipe"], metrics["evaluation_data"]
    harmful = data["harmful"]
    n_mt = min((v["n_safe"] for v in (metrics.get("xstest_multilingual") or {}).values()), default=0)
    return interpret_prompts(
        meta["train_languages"],
        cap=recipe["cap_per_language_label_form"],
        seed=meta["seed"],
        hard_negatives="hard_negatives" in recipe.get("sources", []),
        eval_n_harmful=int(harmful.split("first ")[1].split()[0]) if "first" in harmful else None,
        eval_n_benign=data["n_benign_cap"],
        calibration_n=calibration_n,
        xstest_mt_n=n_mt,
    )


class CachedStates:
    """Read-only view of an SSI directory's ``states.safetensors`` (``lasa interpret`` caches every
    prompt's state there, keyed by a hash of its text): states by prompt text, no model needed."""

    def __init__(self, ssi_dir: str | Path):
        from safetensors import SafetensorError, safe_open

        self.path = Path(ssi_dir) / "states.safetensors"
        if not self.path.is_file():
            raise LasaError(f"no {self.path}; run `lasa interpret` for that directory first")
        try:
            with safe_open(str(self.path), framework="pt") as f:
                self.row = {h: i for i, h in enumerate(json.loads((f.metadata() or {})["text_keys"]))}
                self.layers = sorted(int(k.split("_")[1]) for k in f.keys())  # noqa: SIM118
        except (KeyError, IndexError, TypeError, ValueError, SafetensorError) as err:
            raise LasaError(
                f"{self.path} is damaged ({type(err).__name__}); rerun `lasa interpret` for that directory"
            ) from None

    def rows(self, texts: Sequence[str]) -> torch.Tensor:
        """Row index of each text; a one-line error when any was never extracted."""
        missing = [t for t in texts if _text_key(t) not in self.row]
        if missing:
            raise LasaError(
                f"{len(missing)} prompts are not in {self.path}; rerun `lasa interpret` with the "
                "options that extract them"
            )
        return torch.tensor([self.row[_text_key(t)] for t in texts], dtype=torch.long)

    def layer(self, layer: int) -> torch.Tensor:
        """Every cached row's state at ``layer`` (float32)."""
        from safetensors import safe_open

        if layer not in self.layers:
            raise LasaError(
                f"{self.path} has no layer {layer} (it has {self.layers}); rerun `lasa interpret` "
                "with --layer or --sweep"
            )
        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(f"layer_{layer}").float()


def _cached_states(
    out_dir: Path, key: str, texts: list[str], layers: list[int], lm: LoadedModel, cfg: InterpretConfig
) -> dict[int, torch.Tensor]:
    """States of ``texts`` at ``layers``, extracting only what the cache lacks.

    The cache is keyed per text (a hash of each row's text, stored with the tensors) under one
    settings key (model, pooling, truncation, format): adding prompts to the recipe extracts the
    new prompts only, and adding a layer extracts that layer only.
    """

    from safetensors import safe_open
    from safetensors.torch import save_file

    from lasa.hidden import extract_states

    path = out_dir / "states.safetensors"
    have: dict[int, torch.Tensor] = {}
    row_of: dict[str, int] = {}
    if path.is_file() and not cfg.force:
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("settings_key") == key and "text_keys" in meta:
                    have = {int(k.split("_")[1]): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                    row_of = {h: i for i, h in enumerate(json.loads(meta["text_keys"]))}
        except Exception:
            logger.warning("ignoring unreadable cache %s", path)
    keys = [_text_key(t) for t in texts]
    new_rows = [i for i, h in enumerate(keys) if h not in row_of]
    cached_layers = [layer for layer in layers if layer in have]
    missing_layers = [layer for layer in layers if layer not in have]

    def save_keys(text_keys: list[str], states: dict[int, torch.Tensor]) -> None:
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file(
                {f"layer_{k}": v.contiguous() for k, v in sorted(states.items())},
                str(tmp),
                metadata={"settings_key": key, "text_keys": json.dumps(text_keys)},
            )

    def save(rows: list[int], states: dict[int, torch.Tensor]) -> None:
        save_keys([keys[i] for i in rows], states)

    old_keys = sorted(row_of, key=row_of.__getitem__)  # the cache's texts, in its row order

    def progress(rows: list[int], which: list[int]):
        """A checkpoint, so an interrupted stage resumes from the rows done instead of from the first
        prompt: for a first extraction (nothing cached) the rows done so far become the cache; for
        new prompts at the cached layers (a larger recipe) they are appended to the cached rows.
        A layer new to the cache (the sweep's) is checkpointed in a side file instead
        (:func:`partial_progress`): every row of the cache file holds the same layers, so a
        half-extracted layer cannot go there."""
        if not have:

            def first(done: list[int], states: torch.Tensor) -> None:
                save([rows[i] for i in done], {layer: states[:, j] for j, layer in enumerate(which)})

            return first
        if which != cached_layers:
            return None

        def more(done: list[int], states: torch.Tensor) -> None:
            save_keys(
                old_keys + [keys[rows[i]] for i in done],
                {layer: torch.cat([have[layer], states[:, j]]) for j, layer in enumerate(which)},
            )

        return more

    partial_path = out_dir / "states.partial.safetensors"

    def load_partial(which: list[int]) -> tuple[list[str], dict[int, torch.Tensor]]:
        """Rows of an interrupted extraction of the layers ``which`` (new to the cache), if any."""
        if not partial_path.is_file() or cfg.force:
            return [], {}
        try:
            with safe_open(str(partial_path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("settings_key") == key and json.loads(meta.get("layers", "null")) == which:
                    tensors = {int(k.split("_")[1]): f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
                    return json.loads(meta["text_keys"]), tensors
        except Exception:
            logger.warning("ignoring unreadable partial cache %s", partial_path)
        return [], {}

    def partial_progress(rows: list[int], which: list[int], prior: list[str], prior_states: dict):
        """Checkpoint of layers new to the cache: the rows done so far (after those of an earlier
        interrupted attempt) in ``states.partial.safetensors``, removed once the layers are cached."""

        def cb(done: list[int], states: torch.Tensor) -> None:
            tensors = {
                f"layer_{layer}": (
                    torch.cat([prior_states[layer], states[:, j]]) if prior else states[:, j]
                ).contiguous()
                for j, layer in enumerate(which)
            }
            with atomic_path(partial_path, suffix=".safetensors") as tmp:
                save_file(
                    tensors,
                    str(tmp),
                    metadata={
                        "settings_key": key,
                        "layers": json.dumps(which),
                        "text_keys": json.dumps(prior + [keys[rows[i]] for i in done]),
                    },
                )

        return cb

    def extract(rows: list[int], which: list[int], checkpoint: Any = "auto") -> torch.Tensor:
        with base_model(lm):
            return extract_states(
                lm,
                [texts[i] for i in rows],
                layers=which,
                pooling=cfg.pooling,
                chat_template=cfg.chat_template,
                batch_size=cfg.batch_size,
                max_length=cfg.max_length,
                desc=f"interpret: {len(rows)} prompts at {len(which)} layer(s)",
                checkpoint=progress(rows, which) if checkpoint == "auto" else checkpoint,
            )

    out: dict[int, torch.Tensor] = {}
    if cached_layers:
        fresh = extract(new_rows, cached_layers) if new_rows else None
        src = torch.tensor([row_of.get(h, 0) for h in keys])  # cached row of each text (0: filled below)
        for j, layer in enumerate(cached_layers):
            out[layer] = have[layer][src]
            if fresh is not None:
                out[layer][torch.tensor(new_rows)] = fresh[:, j]
    if missing_layers and not have:  # a first extraction: its checkpoints are the cache itself
        states = extract(list(range(len(texts))), missing_layers)
        for j, layer in enumerate(missing_layers):
            out[layer] = states[:, j].contiguous()
    elif missing_layers:  # layers new to the cache: resume from the side file of an interrupted attempt
        prior, prior_states = load_partial(missing_layers)
        done_row = {h: i for i, h in enumerate(prior)}
        todo = [i for i, h in enumerate(keys) if h not in done_row]
        if prior:
            logger.info(
                "interpret: resuming layer(s) %s: %d of %d prompts already extracted",
                missing_layers,
                len(texts) - len(todo),
                len(texts),
            )
        fresh = (
            extract(
                todo, missing_layers, checkpoint=partial_progress(todo, missing_layers, prior, prior_states)
            )
            if todo
            else None
        )
        from_prior = [i for i, h in enumerate(keys) if h in done_row]
        prior_rows = torch.tensor([done_row[keys[i]] for i in from_prior], dtype=torch.long)
        for j, layer in enumerate(missing_layers):
            states = torch.zeros((len(keys), lm.hidden_size), dtype=torch.float32)
            if fresh is not None:
                states[torch.tensor(todo)] = fresh[:, j]
            if from_prior:
                states[torch.tensor(from_prior)] = prior_states[layer][prior_rows]
            out[layer] = states
    if new_rows or missing_layers:
        # keep the cached layers this call did not ask for when the text list is unchanged
        # (the cache's rows are in its own text order: put them in this call's)
        keep = {}
        if not new_rows and len(row_of) == len(keys):
            order = torch.tensor([row_of[h] for h in keys])
            keep = {k: v[order] for k, v in have.items() if k not in out}
        save(list(range(len(keys))), out | keep)
    partial_path.unlink(missing_ok=True)
    return out


def _ensemble(
    fits: dict[int, dict], x: torch.Tensor, split: Split, layer: int, cfg: InterpretConfig
) -> tuple[dict, list[dict]]:
    """The fits of seeds ``cfg.seed``.. as one :class:`~lasa.ssi.SSIEnsemble` SSI (threshold 0.5: a
    member's own threshold is its margin 0), scored like a single fit; and each member's seed,
    threshold and validation balanced accuracy for ``ssi.json``."""
    from lasa.ssi import SSIEnsemble

    order = [fits[cfg.seed + k] for k in range(cfg.ensemble)]
    module = SSIEnsemble.of(
        [f["ssi"].module for f in order], [f["threshold"] for f in order], x[split.train + split.val]
    )
    ssi = SSI(module, {"layer": layer, "threshold": 0.5, "pooling": cfg.pooling})
    probs = ssi.predict_proba(x[split.eval])
    members = [
        {
            "seed": cfg.seed + k,
            "threshold": f["threshold"],
            "val_balanced_accuracy": f["val_balanced_accuracy"],
        }
        for k, f in enumerate(order)
    ]
    res = {
        "ssi": ssi,
        "log": order[0]["log"],
        "threshold": 0.5,
        "val_balanced_accuracy": float(np.mean([f["val_balanced_accuracy"] for f in order])),
        "probs": probs,
        "per_language": per_language(probs, split.eval_prompts, 0.5),
    }
    return res, members


def _check_sweep(cfg: InterpretConfig, num_layers: int) -> None:
    """A sweep needs a layer to compare with: ``--sweep-every`` at or beyond the model's depth
    swept the bottleneck and the last layer only, and reported a 'best layer' as if it had
    compared them all."""
    if cfg.sweep and cfg.sweep_every >= num_layers:
        raise LasaError(
            f"--sweep-every {cfg.sweep_every} leaves nothing to sweep on a {num_layers}-layer model; "
            f"use 1..{num_layers - 1} (2, the default, reads every other layer)"
        )


def _check_splits(cfg: InterpretConfig, train_langs: list[str]) -> None:
    """Every train / validation split the stage will draw (one per seed it fits: the SSI, an
    ensemble's members, the seed spread) holds both classes on both sides. The pool is data alone,
    so a --cap or --val-fraction too small for that fails here, before a model load and a state
    extraction of minutes (it failed after both)."""
    pool, _ = training_prompts(
        train_langs, cap=cfg.cap, seed=cfg.seed, with_hard_negatives=cfg.hard_negatives
    )
    for seed in range(cfg.seed, cfg.seed + max(1, cfg.ensemble, cfg.spread_seeds)):
        for side in group_split(pool, cfg.val_fraction, seed):
            labels = {pool[i].label for i in side}
            if len(labels) < 2:
                raise LasaError(
                    f"--cap {cfg.cap} / --val-fraction {cfg.val_fraction}: seed {seed}'s train / validation "
                    f"split of the {len(pool)} training prompts leaves a side with "
                    f"{len(side)} prompts and not both classes; raise --cap or --val-fraction"
                )


def run_interpret(cfg: InterpretConfig, lm: LoadedModel | None = None) -> InterpretResult:
    """Train, calibrate and evaluate the SSI (and optionally the layer sweep); returns metrics.json."""
    from lasa.config.base import expect_config

    expect_config(cfg, InterpretConfig, "run_interpret")
    from lasa.models import check_given_model

    check_given_model(lm, cfg.model, "run_interpret")
    t0 = time.time()
    run = RunDir(cfg.run_dir)
    train_langs = validate_train_langs(cfg.train_langs)
    bottleneck_layer = None
    if cfg.layer is None and run.bottleneck.is_file():
        from lasa.locate import Bottleneck

        bottleneck_layer = Bottleneck.load(cfg.run_dir).layer_for(cfg.model, cfg.run_dir)
    layer = cfg.layer if cfg.layer is not None else bottleneck_layer
    if layer is None:
        raise LasaError(
            f"no {cfg.run_dir}/locate/bottleneck.json; run `lasa locate --run-dir {cfg.run_dir}` "
            "first or pass --layer N"
        )
    _check_splits(cfg, train_langs)
    if lm is None:
        from lasa.models import load_model, num_layers_of

        n = num_layers_of(cfg.model)
        validate_layer(layer, n)  # before a model load of a minute or more
        _check_sweep(cfg, n)
        lm = load_model(cfg.model, cfg.device, cfg.dtype)
    num_layers = lm.num_layers
    validate_layer(layer, num_layers)
    _check_sweep(cfg, num_layers)
    with run.stage_dir(cfg.out_name) as out:  # an interrupted first run leaves no empty folder
        return _interpret(cfg, lm, run, out, train_langs, layer, num_layers, t0)


def _interpret(
    cfg: InterpretConfig,
    lm: LoadedModel,
    run: RunDir,
    out: Path,
    train_langs: list[str],
    layer: int,
    num_layers: int,
    t0: float,
) -> InterpretResult:
    sweep_layers: list[int] = []
    if cfg.sweep:
        sweep_layers = sorted(
            set(range(cfg.sweep_every, num_layers + 1, cfg.sweep_every)) | {layer, num_layers}
        )

    prompts = interpret_prompts(
        train_langs,
        cap=cfg.cap,
        seed=cfg.seed,
        hard_negatives=cfg.hard_negatives,
        eval_n_harmful=cfg.eval_n_harmful,
        eval_n_benign=cfg.eval_n_benign,
        calibration_n=cfg.calibration_n if cfg.calibration == "flores" else 0,
        xstest_mt_n=cfg.xstest_mt_n,
    )
    pool, recipe, evalp, benign_source = (
        prompts.pool,
        prompts.recipe,
        prompts.evaluation,
        prompts.benign_source,
    )
    xs, calp, xs_mt = prompts.xstest, prompts.calibration, prompts.xstest_mt
    texts = prompts.texts
    pos = {t: i for i, t in enumerate(texts)}
    key = fingerprint(
        {
            "model": cfg.model,
            "fp": lm.fingerprint.get("id"),
            # other weights under the same name, or another dtype or device, give other states
            **numerics_identity(lm),
            "pooling": cfg.pooling,
            "max_length": cfg.max_length,
            **({"chat_template": True} if cfg.chat_template else {}),
        }
    )
    t1 = time.time()
    states = _cached_states(out, key, texts, sorted({layer, *sweep_layers}), lm, cfg)
    t_states = time.time() - t1
    split = prompts.split(pos, cfg.val_fraction, cfg.seed)
    tr, va = group_split(pool, cfg.val_fraction, cfg.seed)

    t1 = time.time()
    res = fit_and_evaluate(states[layer], layer, split, cfg)
    fits = {cfg.seed: res}
    for k in range(1, cfg.ensemble):  # the ensemble's other members, each on its own split
        seed = cfg.seed + k
        fits[seed] = fit_and_evaluate(
            states[layer], layer, prompts.split(pos, cfg.val_fraction, seed), replace(cfg, seed=seed)
        )
    t2 = time.time()
    spread = seed_spread(states[layer], layer, prompts, pos, cfg, res, train_langs, fits)
    t_spread = time.time() - t2
    members = None
    if cfg.ensemble > 1:
        res, members = _ensemble(fits, states[layer], split, layer, cfg)
    ssi: SSI = res["ssi"]
    table = res["per_language"]
    uncalibrated = None
    calibration_report: dict = {"method": "none"}
    if calp:
        x_cal = states[layer][[pos[p.text] for p in calp]]
        ssi.calibration, calibration_report = fit_language_calibration(
            ssi, x_cal, calp, train_langs, cfg.seed
        )
        uncalibrated = table
        table = per_language(ssi.predict_proba(states[layer][split.eval]), evalp, res["threshold"])
    seen = [g for g in table if g in train_langs]
    unseen = [g for g in table if g not in train_langs]
    for g, row in table.items():
        row["benign_source"] = benign_source[g]
        row["seen"] = g in train_langs
    xs_probs = ssi.predict_proba(states[layer][split.xstest])
    xs_safe = np.array([r["label"] == "safe" for r in xs])
    xs_mt_table = None
    if xs_mt:
        xs_mt_table = xstest_mt_metrics(ssi, states[layer][[pos[r["prompt"]] for r in xs_mt]], xs_mt)
        if uncalibrated is not None:
            raw = xstest_mt_metrics(
                ssi.without_calibration(), states[layer][[pos[r["prompt"]] for r in xs_mt]], xs_mt
            )
            for g, row in xs_mt_table.items():
                row["uncalibrated"] = {k: raw[g][k] for k in ("fpr_safe", "tpr_unsafe")}
    fc = form_control(
        states[layer][split.train], [pool[i] for i in tr], states[layer][split.eval], evalp, cfg.seed
    )
    hidden = cfg.hidden or lm.hidden_size
    n_params = sum(p.numel() for p in ssi.module.parameters())
    ssi.meta = {
        "model": cfg.model,
        "model_path": lm.path,
        "model_fingerprint": lm.fingerprint,
        "num_layers": num_layers,
        "layer": layer,
        "layer_source": "--layer" if cfg.layer is not None else "locate/bottleneck.json",
        "index_convention": INDEX_CONVENTION,
        "pooling": cfg.pooling,
        "chat_template": cfg.chat_template,
        "max_length": cfg.max_length,
        "architecture": {
            "d_model": lm.hidden_size,
            "hidden": hidden,
            "dropout": cfg.dropout,
            "layout": "standardise -> Linear(d,h) -> LayerNorm(h) -> GELU -> Dropout -> Linear(h,1)"
            + (
                f"; {cfg.ensemble} of them, output = mean of (logit_k - logit(threshold_k))"
                if cfg.ensemble > 1
                else ""
            ),
            **({"ensemble": cfg.ensemble} if cfg.ensemble > 1 else {}),
        },
        "n_parameters": n_params,
        "fraction_of_model": n_params / sum(p.numel() for p in lm.model.parameters()),
        "threshold": res["threshold"],
        "threshold_rule": (
            "the members' mean margin above 0 (p 0.5); each member's threshold: " if cfg.ensemble > 1 else ""
        )
        + f"max balanced accuracy on validation, grid {cfg.threshold_range[0]:.2f}-"
        f"{cfg.threshold_range[1]:.2f} step 0.01",
        **({"members": members} if members else {}),
        "train_languages": train_langs,
        "calibration": calibration_report,
        "data_recipe": recipe,
        "seed": cfg.seed,
    }
    # every artefact of the SSI changes together or not at all: they are written into a staging
    # folder and moved in with metrics.json (the marker) last, so an interrupted rerun leaves the
    # previous SSI whole (it once left new weights under the old ssi.json, and a gate loaded both);
    # an earlier --sweep's figures go with the SSI they described
    owns = ("calibration.safetensors", SCORES_FILE, "layer_sweep.json", "layer_sweep.png")
    with staged_artefacts(out, "metrics.json", owns=owns) as stage:
        ssi.save(stage)
        if not cfg.chat_template:  # a raw-prompt gate can take these instead of a pass (Gate.known_scores)
            probs = ssi.predict_proba(states[layer])
            write_scores(stage / SCORES_FILE, scores_key(ssi, lm), dict(zip(texts, map(float, probs))))
        question_form_unseen = [g for g in unseen if "flores" not in benign_source[g]]
        metrics = {
            "model": cfg.model,
            "layer": layer,
            "threshold": res["threshold"],
            "train_languages": train_langs,
            "seen_languages": seen,
            "unseen_languages": unseen,
            "per_language": table,
            "macro_seen": macro(table, seen),
            "macro_unseen": macro(table, unseen),
            "macro_unseen_question_form": macro(table, question_form_unseen),
            "xstest": {
                "fpr_safe": float((xs_probs[xs_safe] > res["threshold"]).mean()),
                "tpr_unsafe": float((xs_probs[~xs_safe] > res["threshold"]).mean()),
                "n_safe": int(xs_safe.sum()),
                "n_unsafe": int((~xs_safe).sum()),
            },
            "calibration": calibration_report,
            "per_language_uncalibrated": uncalibrated,
            "macro_unseen_uncalibrated": macro(uncalibrated, unseen) if uncalibrated else None,
            "xstest_multilingual": xs_mt_table,
            "form_control": fc,
            "validation": {"n": len(va), "balanced_accuracy": res["val_balanced_accuracy"]},
            "training": {"n_train": len(tr), "n_val": len(va), "epochs": res["log"], "recipe": recipe},
            "evaluation_data": {
                "harmful": "MultiJail "
                + (f"(first {cfg.eval_n_harmful} ids)" if cfg.eval_n_harmful else "(all 315 ids)"),
                "benign_source": benign_source,
                "n_benign_cap": cfg.eval_n_benign,
            },
            "seed_spread": spread,
            "ensemble": {"size": cfg.ensemble, "members": members} if members else None,
            "timings": {
                "states_seconds": round(t_states, 1),
                "train_eval_seconds": round(time.time() - t1, 1),
                "seed_spread_seconds": round(t_spread, 1),
            },
        }
        if cfg.sweep:
            t1 = time.time()
            metrics["layer_sweep"] = run_sweep(
                states,
                sweep_layers,
                split,
                cfg,
                train_langs,
                layer,
                stage,
                question_form=question_form_unseen,
            )
            metrics["timings"]["sweep_seconds"] = round(time.time() - t1, 1)
            metrics["transfer_layer"] = transfer_layer(metrics["layer_sweep"])
        metrics["timings"]["total_seconds"] = round(time.time() - t0, 1)
        write_json(stage / "metrics.json", metrics)  # the marker: moved in last
    run.record(
        cfg.record_name,
        cfg,
        {"timings": metrics["timings"], "model_weights": weights_signature(cfg.model)},
        marker=out / "metrics.json",
    )
    logger.info(
        "interpret: layer %d, threshold %.2f; AUROC seen %.3f, unseen %.3f (worst %.3f); XSTest FPR %.3f",
        layer,
        res["threshold"],
        metrics["macro_seen"].get("auroc", float("nan")),
        metrics["macro_unseen"].get("auroc", float("nan")),
        metrics["macro_unseen"].get("worst_auroc", float("nan")),
        metrics["xstest"]["fpr_safe"],
    )
    if spread:
        logger.info(
            "interpret: over %d seeds (re-split and retrained): threshold %.2f-%.2f, XSTest FPR %.3f-%.3f, "
            "unseen AUROC %.3f-%.3f (metrics.json seed_spread)",
            len(spread["per_seed"]),
            spread["min"]["threshold"],
            spread["max"]["threshold"],
            spread["min"]["xstest_fpr_safe"],
            spread["max"]["xstest_fpr_safe"],
            spread["min"].get("unseen_auroc", float("nan")),
            spread["max"].get("unseen_auroc", float("nan")),
        )
    return InterpretResult(out, metrics)


def load_metrics(run_dir: str | Path, out_name: str = "ssi") -> dict:
    """``RUN/<out_name>/metrics.json`` (``--out-name`` of ``lasa interpret``; default ``ssi``)."""
    rd = RunDir(run_dir)
    return rd.load(rd.ssi_metrics(out_name), f"lasa interpret --out-name {out_name}")
