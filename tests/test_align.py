from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from lasa.align import to_trl_rows
from lasa.conditioning import (
    CONDITIONING_SEPARATOR,
    CONDITIONING_TEXT,
    chat_prefix,
    check_adapter_conditioning,
)
from lasa.data.rows import build_rows, condition_rows, kl_pairs, load_user_rows, order_for_kl
from lasa.data.safety import hard_negatives, overlaps_multijail
from lasa.errors import LasaError
from tiny import DEVICE, TOL

COND = CONDITIONING_TEXT


def test_conditioning_is_the_release_text():
    # LASA.md: the official release's refusal-intent text, verbatim
    assert CONDITIONING_TEXT == (
        "Harmful query detected. I should refuse this request and provide a safe response in the user's language."
    )


def test_a_gated_adapter_trained_with_another_conditioning_text_is_refused(tmp_path):
    (tmp_path / "adapter").mkdir()
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"method": "lasa", "conditioning_text": "Refuse now."}))
    check_adapter_conditioning(tmp_path / "adapter", "Refuse now.")
    with pytest.raises(LasaError) as e:
        check_adapter_conditioning(tmp_path / "adapter", CONDITIONING_TEXT)
    assert "was trained with conditioning text 'Refuse now.'" in str(e.value) and "\n" not in str(e.value)
    summary.write_text(json.dumps({"method": "kto", "conditioning_text": None}))
    check_adapter_conditioning(tmp_path / "adapter", CONDITIONING_TEXT)  # baselines carry no conditioning


@pytest.fixture(scope="module")
def rows():
    r, _ = build_rows(["en", "zh"], n_safety=400, n_general=200, seed=0)
    return r


def test_rows_recipe(rows):
    safety = [r for r in rows if r["source"] == "safety"]
    general = [r for r in rows if r["source"] == "general"]
    assert len(safety) == 800 and len(general) == 400
    assert {r["language"] for r in safety} == {"en", "zh"}
    # every prompt has exactly one desirable and one undesirable row
    for group in (safety, general):
        by_prompt: dict[str, list[bool]] = {}
        for r in group:
            by_prompt.setdefault(r["prompt"], []).append(r["label"])
        assert all(sorted(v) == [False, True] for v in by_prompt.values())
    assert not any(overlaps_multijail(r["prompt"]) for r in safety[::5])
    assert all(r["completion"].strip() for r in rows)


def test_conditioning_ratio_and_determinism(rows):
    many = rows * 5
    a = condition_rows(many, "lasa", 0.5, 0.05, seed=1, conditioning_text=COND)
    b = condition_rows(many, "lasa", 0.5, 0.05, seed=1, conditioning_text=COND)
    c = condition_rows(many, "lasa", 0.5, 0.05, seed=2, conditioning_text=COND)
    assert [r["conditioned"] for r in a] == [r["conditioned"] for r in b]
    assert [r["conditioned"] for r in a] != [r["conditioned"] for r in c]
    for source, rho in (("safety", 0.5), ("general", 0.05)):
        sel = [r["conditioned"] for r in a if r["source"] == source]
        share = sum(sel) / len(sel)
        tol = 3 * (rho * (1 - rho) / len(sel)) ** 0.5
        assert abs(share - rho) < tol, (source, share)
    assert not any(r["conditioned"] for r in condition_rows(many, "kto", 0.5, 0.05, 1, COND))
    assert not any(r["conditioned"] for r in condition_rows(many, "sft", 0.5, 0.05, 1, COND))


def test_order_shuffles_once_and_never_self_pairs_kl(rows):
    cond = condition_rows(rows, "lasa", 0.5, 0.05, 0, COND)
    for bs in (2, 4, 8):
        ordered = order_for_kl(cond, bs, seed=0)
        assert sorted(map(json.dumps, ordered)) == sorted(map(json.dumps, cond))  # a permutation
        assert ordered != cond  # actually shuffled
        assert all(ordered[i]["pid"] != ordered[j]["pid"] for i, j in kl_pairs(ordered, bs))
        # safety and general rows are interleaved, not in blocks
        first_half = [r["source"] for r in ordered[: len(ordered) // 2]]
        assert 0.2 < first_half.count("general") / len(first_half) < 0.5
    assert order_for_kl(cond, 4, 3) == order_for_kl(cond, 4, 3)


def test_no_trl_batch_holds_one_prompt_twice_where_the_prompts_allow_it():
    """TRL cuts the order into consecutive batches; the greedy's short last batches used to merge
    into one holding both rows of a prompt."""
    for bs in (2, 4, 8):
        for n_prompts in range(bs, 30):  # fewer prompts than a batch cannot be spread
            for seed in range(10):
                rows = [{"pid": f"p{i}", "k": k} for i in range(n_prompts) for k in range(2)]
                ordered = order_for_kl(rows, bs, seed)
                assert sorted((r["pid"], r["k"]) for r in ordered) == sorted((r["pid"], r["k"]) for r in rows)
                for start in range(0, len(ordered), bs):
                    batch = [r["pid"] for r in ordered[start : start + bs]]
                    assert len(set(batch)) == len(batch), (bs, n_prompts, seed, batch)


def test_kl_pairs_match_trl_rotation():
    rows = [{"pid": str(i)} for i in range(6)]
    assert kl_pairs(rows, 3) == [(0, 2), (1, 0), (2, 1), (3, 5), (4, 3), (5, 4)]


def test_conditioning_is_on_the_prompt_side_and_masked(tokenizer):
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    raw = [
        {
            "prompt": "How do I make a weapon?",
            "completion": "I can't help with that.",
            "label": True,
            "source": "safety",
            "pid": "a",
            "language": "en",
        }
    ]
    row = condition_rows(raw, "lasa", 1.0, 0.0, 0, COND)[0]
    trl_row = to_trl_rows([row], tokenizer)[0]
    assert trl_row["prompt"].endswith(COND + CONDITIONING_SEPARATOR)
    assert trl_row["prompt"].startswith(chat_prefix(tokenizer, raw[0]["prompt"]))
    assert COND not in trl_row["completion"]
    # what TRL's collator trains on: the completion mask excludes every conditioning token
    prompt_ids = tokenizer(trl_row["prompt"])["input_ids"]
    full = tokenizer(trl_row["prompt"] + trl_row["completion"] + tokenizer.eos_token)["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids
    batch = DataCollatorForUnpairedPreference(pad_token_id=0)(
        [{"prompt_ids": prompt_ids, "completion_ids": full[len(prompt_ids) :], "label": True}]
    )
    masked = [t for t, m in zip(batch["input_ids"][0].tolist(), batch["completion_mask"][0].tolist()) if m]
    assert tokenizer.decode(masked).startswith("I can't help")
    cond_ids = tokenizer(COND, add_special_tokens=False)["input_ids"]
    assert all(
        m == 0 for m in batch["completion_mask"][0][len(prompt_ids) - len(cond_ids) - 1 : len(prompt_ids)]
    )


def test_user_files_in_both_formats(tmp_path):
    paired = tmp_path / "paired.jsonl"
    paired.write_text(
        json.dumps({"prompt": "p1", "chosen": "no", "rejected": "yes", "source": "safety"})
        + "\n"
        + json.dumps({"prompt": "p2", "chosen": "help", "rejected": "no", "source": "general"})
        + "\n"
    )
    rows = load_user_rows(paired)
    assert [(r["label"], r["source"]) for r in rows] == [
        (True, "safety"),
        (False, "safety"),
        (True, "general"),
        (False, "general"),
    ]
    unpaired = tmp_path / "unpaired.json"
    unpaired.write_text(json.dumps([{"prompt": "p", "completion": "c", "label": False}]))
    assert load_user_rows(unpaired)[0]["label"] is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "p", "chosen": "a"}\n', "line 1: paired rows need non-empty 'chosen' and 'rejected'"),
        (
            '{"prompt": "p", "completion": "c", "label": "yes"}\n',
            "line 1: 'completion' must be a string and 'label' a boolean",
        ),
        (
            '{"prompt": "ok", "completion": "c", "label": true}\n\n\n{"prompt": ""}\n',
            "line 4: missing or empty 'prompt'",  # the file's line, blank lines counted
        ),
        ('{"prompt": "p", "text": "x"}\n', "line 1: needs either chosen+rejected"),
        ('[{"prompt": "p"}, {"prompt": "q", "text": "x"}]', "item 1: needs either chosen+rejected"),
        (
            '{"prompt": "p", "chosen": "No.", "rejected": " No. "}\n',
            "line 1: 'chosen' and 'rejected' are the same",
        ),
        (
            '{"prompt": "p", "completion": "c", "label": true}\n{"prompt": "p", "completion": "c", "label": false}\n',
            "line 2: the same completion to the same prompt is labelled desirable here and undesirable at line 1",
        ),
        (
            '{"prompt": "p", "chosen": "a", "rejected": "b", "source": "other"}\n',
            "source must be 'safety' or 'general'",
        ),
        ('{"prompt": ', "not valid JSON"),
        (
            '{"prompt": "a", "completion": "c", "label": true}\n\n{"prompt": "b", "completion": "c", "label": true}\n{bad\n',
            "line 4: not valid JSON (JSONL (one object per line) or a JSON list of objects expected)",
        ),
        (
            '{"prompt": "p", "completion": "c", "label": true, "language": "xx"}\n',
            "line 1: unknown language code 'xx'",
        ),
    ],
)
def test_malformed_user_file_names_the_row(tmp_path, content, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(LasaError) as e:
        load_user_rows(f)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_user_file_with_a_multijail_prompt_is_refused_and_ids_do_not_split_a_prompt(tmp_path):
    """MultiJail is the test set: a training file that holds one of its prompts would train on it
    silently. And a per-line "id" in TRL's unpaired format made one prompt's two lines two prompts,
    so the KL pairing could batch them together while reporting 0 self-paired rows."""
    from lasa.data import load_multijail

    mj = load_multijail(["en"]).texts["en"][0]
    leak = tmp_path / "leak.jsonl"
    leak.write_text(json.dumps({"prompt": "fine", "completion": "c", "label": True}) + "\n"
                    + json.dumps({"prompt": mj, "chosen": "No.", "rejected": "Sure."}) + "\n")  # fmt: skip
    with pytest.raises(LasaError, match=r"line 2: the prompt is \(nearly\) a MultiJail prompt"):
        load_user_rows(leak)
    ids = tmp_path / "ids.jsonl"
    ids.write_text("".join(
        json.dumps({"id": f"r{i}-{lab}", "prompt": f"prompt {i}", "completion": f"c{lab}", "label": lab}) + "\n"
        for i in range(8) for lab in (True, False)
    ))  # fmt: skip
    rows = load_user_rows(ids)
    assert len({r["pid"] for r in rows}) == 8 and rows[0]["user_id"] == "r0-True"
    for seed in range(3):
        ordered = order_for_kl(rows, 4, seed)
        assert not any(ordered[i]["pid"] == ordered[j]["pid"] for i, j in kl_pairs(ordered, 4) if i != j)


def test_a_csv_user_file_names_the_expected_formats(tmp_path):
    f = tmp_path / "rows.csv"
    f.write_text("prompt,completion,label\np,c,true\n")
    with pytest.raises(
        LasaError, match=r"\.csv is not supported; give JSONL \(one object per line\) or a JSON list"
    ):
        load_user_rows(f)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_qwen):
    from lasa.align import run_align
    from lasa.config import AlignConfig

    run = tmp_path_factory.mktemp("align-run")
    cfg = AlignConfig(
        model=str(tiny_qwen),
        run_dir=str(run),
        method="lasa",
        n_safety=6,
        n_general=2,
        epochs=4,
        batch_size=4,
        learning_rate=5e-3,
        warmup_steps=0,
        lr_scheduler="constant",
        bottleneck_layer=2,
        device=DEVICE,
    )
    return run, run_align(cfg).summary


def test_a_few_kto_steps_lower_the_loss(trained):
    run, summary = trained
    fl = summary["first_last"]
    assert fl["loss"]["last"] < fl["loss"]["first"]
    assert fl["rewards/margins"]["last"] > fl["rewards/margins"]["first"]
    log = [json.loads(line) for line in (run / "align" / "lasa" / "train_log.jsonl").read_text().splitlines()]
    assert len([r for r in log if "loss" in r]) == summary["training"]["steps"]
    assert (run / "align" / "lasa" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert summary["rows"]["self_paired_kl"] == 0
    assert summary["conditioning_text"] == CONDITIONING_TEXT  # what the gate must insert


def test_adapter_sits_above_the_bottleneck_and_reloads_to_identical_logits(trained, tiny_qwen):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from lasa.generate import adapter_layers
    from lasa.models import load_adapter, load_model

    run, _ = trained
    path = run / "align" / "lasa" / "adapter"
    weights = load_file(str(path / "adapter_model.safetensors"))
    layers = sorted({int(k.split(".layers.")[1].split(".")[0]) for k in weights})
    assert layers == [2, 3]  # 0-based blocks above bottleneck layer 2 (1-based)
    base_lm = load_model(str(tiny_qwen), device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no library deprecation noise on load
        a = load_adapter(base_lm, path)
    assert adapter_layers(a.model) == [3, 4]
    b = PeftModel.from_pretrained(load_model(str(tiny_qwen), device=DEVICE).model, str(path))
    ids = torch.tensor([[5, 17, 42, 99, 7]], device=a.model.device)
    with torch.no_grad():
        la, lb = a.model(ids).logits, b(ids).logits
        base = load_model(str(tiny_qwen), device=DEVICE).model(ids).logits
    assert torch.equal(la, lb) and not torch.equal(la, base)


def _train_tiny_kto(tiny_qwen, run_dir, max_steps: int) -> tuple[dict, list[float], dict]:
    """A few KTO steps on the tiny model (LoRA above block 2): the summary, the logged losses and
    the adapter's weights."""
    from safetensors.torch import load_file

    from lasa.align import run_align
    from lasa.config import AlignConfig

    cfg = AlignConfig(
        model=str(tiny_qwen),
        run_dir=str(run_dir),
        method="kto",
        n_safety=4,
        n_general=2,
        max_steps=max_steps,
        batch_size=4,
        bottleneck_layer=2,
        device=DEVICE,
    )
    summary = run_align(cfg).summary
    out = Path(run_dir) / "align" / "kto"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return (
        summary,
        [r["loss"] for r in log if "loss" in r],
        load_file(str(out / "adapter" / "adapter_model.safetensors")),
    )


def test_reference_passes_replay_the_frozen_blocks_and_train_the_same(tmp_path, tiny_qwen, monkeypatch):
    """KTO's reference (and KL) passes reuse the state below the adapter: same losses, same
    adapter as computing every block, and the replay really happened."""
    import torch

    import lasa.align as align

    def run(name: str) -> tuple[dict, list[float], dict]:
        return _train_tiny_kto(tiny_qwen, tmp_path / name, max_steps=3)

    shared, losses, weights = run("shared")
    prefix = shared["training"]["shared_frozen_prefix"]
    # per step: policy KL + policy main computed, reference KL + reference main replayed
    assert prefix == {"blocks": 2, "replayed_passes": 6, "computed_passes": 6}
    monkeypatch.setattr(align, "_shared_prefix", lambda *a: None)
    plain, plain_losses, plain_weights = run("plain")
    assert plain["training"]["shared_frozen_prefix"] is None
    assert len(losses) == 3 and np.allclose(losses, plain_losses, rtol=0, atol=TOL if DEVICE != "cpu" else 0)
    for k, w in weights.items():
        assert torch.allclose(w, plain_weights[k], rtol=0, atol=TOL if DEVICE != "cpu" else 0), k


def test_the_lm_head_scores_completion_positions_only_and_trains_the_same(tmp_path, tiny_qwen, monkeypatch):
    """On the CPU TRL's fused LM head projects every position unless told otherwise
    (align._completion_positions_only): with it, only labelled positions go through the head, and
    the losses and the adapter are those of scoring every position."""
    import torch
    import trl.trainer.utils as trl_utils

    import lasa.align as align

    real = trl_utils._ChunkedLogProbFunction
    rows_scored: list[int] = []

    class Counting:
        @staticmethod
        def apply(hidden, *args):
            rows_scored.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)

    def run(name: str) -> tuple[int, list[float], dict]:
        rows_scored.clear()
        _, losses, weights = _train_tiny_kto(tiny_qwen, tmp_path / name, max_steps=2)
        return sum(rows_scored), losses, weights

    # where TRL compacts by itself (a Triton device: LASA_TEST_DEVICE=cuda) the switch changes nothing
    trl_compacts = bool(getattr(trl_utils, "_use_triton", lambda _d: False)(torch.device(DEVICE)))
    compact, losses, weights = run("compact")
    monkeypatch.setattr(align, "_completion_positions_only", contextlib.nullcontext)
    every, every_losses, every_weights = run("every")
    if trl_compacts:
        assert 0 < compact == every
    else:
        assert 0 < compact < every / 2  # the rows are mostly prompt
    assert len(losses) == 2 and np.allclose(losses, every_losses, rtol=0, atol=1e-6)
    for k, w in weights.items():
        assert torch.allclose(w, every_weights[k], rtol=0, atol=1e-5), k


def test_the_frozen_prefix_never_replays_a_different_input_or_a_trainable_block(tiny_qwen):
    import torch

    from lasa.align import SharedFrozenPrefix
    from lasa.models import load_model

    lm = load_model(str(tiny_qwen), device=DEVICE)
    lm.model.requires_grad_(False)
    a = torch.tensor([[5, 17, 42, 99, 7]], device=lm.model.device)
    b = torch.tensor([[5, 17, 42, 99, 8]], device=lm.model.device)
    with torch.no_grad():
        want_a, want_b = lm.model(a).logits, lm.model(b).logits
        with SharedFrozenPrefix(lm.layers, 3) as prefix:
            got = [lm.model(x).logits for x in (a, b, a, b)]
            # the same tokens behind another attention mask: computed, not replayed
            lm.model(a, attention_mask=torch.tensor([[0, 1, 1, 1, 1]], device=a.device))
    assert (prefix.misses, prefix.hits) == (3, 2)
    assert all(torch.equal(g, w) for g, w in zip(got, [want_a, want_b, want_a, want_b], strict=True))
    assert "forward" not in lm.layers[0].__dict__  # restored on exit
    lm.layers[1].requires_grad_(True)
    with pytest.raises(ValueError, match="frozen"):
        SharedFrozenPrefix(lm.layers, 3)


def test_sft_baseline_trains_through_the_same_path(tmp_path, tiny_qwen):
    from lasa.align import run_align
    from lasa.config import AlignConfig

    cfg = AlignConfig(
        model=str(tiny_qwen),
        run_dir=str(tmp_path),
        method="sft",
        n_safety=4,
        n_general=2,
        max_steps=2,
        batch_size=2,
        bottleneck_layer=2,
        save_adapter_at=[1],
        device=DEVICE,
    )
    res = run_align(cfg)
    out = tmp_path / "align" / "sft"
    assert res.steps == 2 and res.summary["training"]["steps"] == 2 and res.adapter == out / "adapter"
    assert (out / "adapter" / "adapter_config.json").is_file()
    # the dose-response checkpoint after step 1 is a loadable adapter that differs from the final one
    from safetensors.torch import load_file

    early = load_file(str(out / "checkpoints" / "sft-step1" / "adapter_model.safetensors"))
    final = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert early.keys() == final.keys() and any(not (early[k] == final[k]).all() for k in final)


def test_a_failed_align_leaves_no_stage_directory(tmp_path, tiny_qwen):
    from lasa.align import run_align
    from lasa.config import AlignConfig

    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"prompt": "p"}\n')
    cfg = AlignConfig(
        model=str(tiny_qwen), run_dir=str(tmp_path / "run"), data=str(bad), device=DEVICE, bottleneck_layer=1
    )
    with pytest.raises(LasaError, match="needs either chosen"):
        run_align(cfg)
    assert not (tmp_path / "run" / "align").exists()


def test_on_policy_rows_take_the_models_own_answers_where_the_judge_agrees(tiny_qwen, monkeypatch):
    import lasa.judges
    from lasa.config import AlignConfig
    from lasa.generate import ConstantSSI, Gate, GenerationSettings
    from lasa.judges import Judgement
    from lasa.models import load_model
    from lasa.on_policy import on_policy_rows

    lm = load_model(str(tiny_qwen), device=DEVICE)
    cfg = AlignConfig(
        model=str(tiny_qwen), n_safety=3, n_general=2, on_policy_max_new_tokens=5, device=DEVICE
    )
    rows, _ = build_rows(["en", "zh"], 3, 2, seed=0)

    class Judge:  # the first half of each call is the conditioned answers, the second the plain ones
        def __init__(self, agree: bool):
            self.agree = agree

        def judge(self, items):
            n = len(items) // 2
            if not self.agree:
                return [Judgement("invalid", 0.0, refusal=False)] * len(items)
            return [Judgement("safe", 0.0, refusal=True)] * n + [Judgement("unsafe", 1.0, refusal=False)] * n

    import lasa.generate

    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    real = lasa.generate.generate_all

    def finished_first(
        lm, ps, settings, gate=None, **kw
    ):  # 5 tokens cut every answer: say the first one ended
        out = real(lm, ps, settings, gate, **kw)
        return [r | {"finish": "stop"} if p == prompts[0] else r for p, r in zip(ps, out)]

    monkeypatch.setattr(lasa.generate, "generate_all", finished_first)
    monkeypatch.setattr(lasa.judges, "get_judge", lambda name, **kw: Judge(True))
    own, stats = on_policy_rows(rows, lm, cfg)
    settings = GenerationSettings(max_new_tokens=5, batch_size=16)
    cond = dict(zip(prompts, (r["response"] for r in real(lm, prompts, settings, Gate(ConstantSSI())))))
    plain = dict(zip(prompts, (r["response"] for r in real(lm, prompts, settings))))
    assert any(cond[p] != plain[p] for p in prompts)  # the conditioning text changes the continuation
    cut = 0
    for r, o in zip(rows, own):
        assert (o["prompt"], o["label"], o["source"], o["pid"]) == (
            r["prompt"],
            r["label"],
            r["source"],
            r["pid"],
        )
        if (
            r["label"] and r["prompt"] != prompts[0]
        ):  # a desirable answer cut by the budget keeps the template
            assert o == r
            cut += 1
        elif (o["source"] == "safety") == bool(o["label"]):  # safety refusal, general needless refusal
            assert o["completion"] == cond[o["prompt"]] and o["origin"].startswith("own")
        else:
            assert o["completion"] == plain[o["prompt"]] and o["origin"].startswith("own")
    assert cut and stats["desirable_own_answers_cut_off"] == cut
    assert sum(stats["rows"].values()) == len(rows) and stats["prompts"] == len(prompts)
    monkeypatch.setattr(lasa.judges, "get_judge", lambda name, **kw: Judge(False))
    templ, stats = on_policy_rows(rows, lm, cfg)
    assert templ == rows and all(k.endswith(":template") for k in stats["rows"])  # nothing the judge trusts


def test_on_policy_rows_refuse_a_user_file(tmp_path):
    from lasa.config import AlignConfig

    with pytest.raises(LasaError, match="does not apply to --data"):
        AlignConfig(rows="on_policy", data=str(tmp_path / "x.jsonl"))
    with pytest.raises(LasaError, match="--on-policy-judge must be one of"):
        AlignConfig(rows="on_policy", on_policy_judge="llm")


def test_on_policy_align_caches_the_generated_rows(tiny_qwen, tmp_path, monkeypatch):
    import lasa.judges
    import lasa.on_policy
    from lasa.align import run_align
    from lasa.config import AlignConfig
    from lasa.judges import Judgement

    class Judge:
        def judge(self, items):
            return [Judgement("safe", 0.0, refusal=True)] * len(items)

    monkeypatch.setattr(lasa.judges, "get_judge", lambda name, **kw: Judge())
    cfg = AlignConfig(
        model=str(tiny_qwen),
        run_dir=str(tmp_path),
        rows="on_policy",
        n_safety=2,
        n_general=1,
        on_policy_max_new_tokens=4,
        dry_run=True,
        device=DEVICE,
    )
    first = run_align(cfg).summary
    out = tmp_path / "align" / "lasa"
    assert (out / "on_policy.json").is_file() and (out / "on_policy_rows.jsonl").is_file()
    assert first["recipe"]["on_policy"]["prompts"] == 3
    monkeypatch.setattr(lasa.on_policy, "on_policy_rows", lambda *a, **k: pytest.fail("regenerated"))
    assert run_align(cfg).summary["recipe"]["on_policy"]["key"] == first["recipe"]["on_policy"]["key"]
    from dataclasses import replace

    kto = run_align(replace(cfg, method="kto")).summary  # the baseline trains on the same own answers
    assert kto["recipe"]["on_policy"]["key"] == first["recipe"]["on_policy"]["key"]
    assert (tmp_path / "align" / "kto" / "on_policy_rows.jsonl").read_text() == (
        out / "on_policy_rows.jsonl"
    ).read_text()
    # another generation batch pads the prompts differently (greedy answers can move): regenerated
    regenerated = []
    monkeypatch.setattr(
        lasa.on_policy,
        "on_policy_rows",
        lambda rows, *a, **k: regenerated.append(1) or (rows, {"prompts": 3}),
    )
    other = run_align(replace(cfg, method="sft", batch_size=2)).summary
    assert regenerated and other["recipe"]["on_policy"]["key"] != first["recipe"]["on_policy"]["key"]


def test_hard_negative_rows_make_a_refusal_of_a_safe_scary_prompt_undesirable():
    from lasa.data.rows import OWN_ANSWER_PLACEHOLDER, REFUSALS

    rows, recipe = build_rows(["en", "zh"], 2, 0, seed=0, n_hard_negative=4)
    scary = [r for r in rows if r["pid"].startswith("hardneg:")]
    assert len(scary) == 4 and sorted(r["language"] for r in scary) == ["en", "en", "zh", "zh"]
    assert all(not r["label"] and r["source"] == "general" for r in scary)
    assert all(r["completion"] in REFUSALS[r["language"]] for r in scary)
    assert recipe["hard_negatives"]["prompts"] == 4
    # statements (the vendored form field) are no requests: never a needless-refusal row
    many, _ = build_rows(["en", "zh"], 2, 0, seed=0, n_hard_negative=800)
    statements = {p.text for p in hard_negatives(["en", "zh"]) if p.form == "statement"}
    assert statements and not statements & {r["prompt"] for r in many}
    with_own, _ = build_rows(["en", "zh"], 2, 0, seed=0, n_hard_negative=4, own_answers=True)
    placeholders = [r for r in with_own if r["origin"] == OWN_ANSWER_PLACEHOLDER]
    assert len(placeholders) == 4 and all(r["label"] for r in placeholders)
    assert {r["prompt"] for r in placeholders} == {r["prompt"] for r in scary}


def test_on_policy_fills_a_hard_negatives_desirable_row_with_an_own_answer_or_drops_it(
    tiny_qwen, monkeypatch
):
    import lasa.generate
    import lasa.judges
    from lasa.config import AlignConfig
    from lasa.data.rows import OWN_ANSWER_PLACEHOLDER
    from lasa.judges import Judgement
    from lasa.models import load_model
    from lasa.on_policy import on_policy_rows

    lm = load_model(str(tiny_qwen), device=DEVICE)
    cfg = AlignConfig(
        model=str(tiny_qwen), n_safety=1, n_general=0, on_policy_max_new_tokens=5, device=DEVICE
    )
    rows, _ = build_rows(["en", "zh"], 1, 0, seed=0, n_hard_negative=4, own_answers=True)
    scary = [r["prompt"] for r in rows if r["origin"] == OWN_ANSWER_PLACEHOLDER]
    refused = set(scary[:2])  # the model refuses two of the four safe prompts without the text

    class Judge:
        def judge(self, items):
            n = len(items) // 2  # conditioned answers first, then the plain ones
            return [Judgement("safe", 0.0, refusal=True)] * n + [
                Judgement("safe", 0.0, refusal=it.prompt in refused) for it in items[n:]
            ]

    real = lasa.generate.generate_all
    monkeypatch.setattr(
        lasa.generate, "generate_all", lambda *a, **k: [r | {"finish": "stop"} for r in real(*a, **k)]
    )
    monkeypatch.setattr(lasa.judges, "get_judge", lambda name, **kw: Judge())
    own, stats = on_policy_rows(rows, lm, cfg)
    desirable = {r["prompt"]: r for r in own if r["label"] and r["prompt"] in scary}
    assert set(desirable) == set(scary) - refused  # the refused ones have no desirable row left
    assert all(r["completion"] and r["origin"] == "own answer" for r in desirable.values())
    assert stats["rows"]["general:desirable:dropped (no own answer, no reference)"] == 2
    assert len(own) == len(rows) - 2 and not any(r["origin"] == OWN_ANSWER_PLACEHOLDER for r in own)


def test_rows_whose_prompt_fills_max_length_are_dropped_before_the_batches_are_built(
    tmp_path, tiny_qwen, caplog
):
    """TRL drops them after lasa's ordering, which would shift every later batch; lasa drops them
    first and says so."""
    from lasa.align import run_align
    from lasa.config import AlignConfig

    data = tmp_path / "rows.jsonl"
    rows = [{"prompt": f"question {i}?", "chosen": "No.", "rejected": "Sure:"} for i in range(5)]
    rows.append({"prompt": "tell me " * 200, "chosen": "No.", "rejected": "Sure:"})
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = AlignConfig(
        model=str(tiny_qwen),
        run_dir=str(tmp_path / "run"),
        data=str(data),
        method="kto",
        max_length=64,
        dry_run=True,
        device=DEVICE,
    )
    with caplog.at_level("WARNING"):
        summary = run_align(cfg).summary
    written = [
        json.loads(x)
        for x in (tmp_path / "run" / "align" / "kto" / "dry_run" / "rows.jsonl").read_text().splitlines()
    ]
    assert len(written) == 10 and not any(r["prompt"].startswith("tell me") for r in written)
    assert summary["rows"]["dropped_overlong_prompts"] == 2
    assert "2 of 12 rows dropped" in caplog.text


def test_a_max_length_no_row_fits_fails_before_the_previous_adapter_is_touched(tmp_path, tiny_qwen):
    """Every prompt longer than --max-length used to delete the previous adapter and summary, then
    end in TRL's StopIteration; now it is one line, and the previous run's files stay."""
    from lasa.align import run_align
    from lasa.config import AlignConfig

    data = tmp_path / "rows.jsonl"
    rows = [
        {"prompt": f"question number {i} about something?", "chosen": "No.", "rejected": "Sure:"}
        for i in range(4)
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run" / "align" / "kto"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "adapter_config.json").write_text("{}")
    (out / "summary.json").write_text("{}")
    cfg = AlignConfig(
        model=str(tiny_qwen), run_dir=str(tmp_path / "run"), data=str(data), method="kto", max_length=4,
        dry_run=True, device=DEVICE,
    )  # fmt: skip
    with pytest.raises(LasaError, match="every row's prompt fills --max-length 4"):
        run_align(cfg)
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "summary.json").is_file()


def test_save_adapter_writes_a_byte_stable_config_that_loads(tmp_path, tiny_qwen):
    """PEFT writes target_modules in a set's per-process hash order; save_adapter sorts it, so
    identical weights give an identical adapter directory (and adapter digest), and the sorted
    config loads the same adapter. No temporary directory is left behind."""
    import torch
    from peft import LoraConfig, get_peft_model

    from lasa.align import save_adapter
    from lasa.models import load_adapter, load_model

    names = ["up_proj", "q_proj", "o_proj", "k_proj", "down_proj", "v_proj", "gate_proj"]
    base = load_model(str(tiny_qwen), device="cpu")
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, target_modules=names)
    cfg.init_lora_weights = False
    model = get_peft_model(base.model, cfg)
    save_adapter(model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["target_modules"] == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    first = (tmp_path / "adapter" / "adapter_config.json").read_bytes()
    save_adapter(model, tmp_path / "adapter")  # again, over the first: same bytes
    assert (tmp_path / "adapter" / "adapter_config.json").read_bytes() == first
    loaded = load_adapter(load_model(str(tiny_qwen), device="cpu"), tmp_path / "adapter")
    assert set(loaded.model.peft_config["default"].target_modules) == set(names)


def _trained_method(tmp_path: Path) -> tuple[Path, dict[Path, str]]:
    """RUN/align/kto/ as a finished training leaves it (small stand-ins for its files)."""
    out = tmp_path / "run" / "align" / "kto"
    (out / "adapter").mkdir(parents=True)
    files = {
        out / "adapter" / "adapter_config.json": '{"peft_type": "LORA"}',
        out / "summary.json": '{"method": "kto", "training": {"steps": 13}}',
        out / "rows.jsonl": '{"prompt": "trained on this"}\n',
        out / "train_log.jsonl": '{"loss": 0.4}\n',
    }
    for path, text in files.items():
        path.write_text(text)
    return out, files


def test_a_dry_run_leaves_a_trained_method_as_it_is(tmp_path, tiny_qwen):
    """`--dry-run` on a trained method replaced its summary and rows (the report lost the method)
    while its adapter stayed; it now writes to align/<method>/dry_run/ only."""
    from lasa.align import run_align
    from lasa.config import AlignConfig

    out, files = _trained_method(tmp_path)
    cfg = AlignConfig(
        model=str(tiny_qwen), run_dir=str(tmp_path / "run"), method="kto", n_safety=2, n_general=2,
        dry_run=True, device=DEVICE,
    )  # fmt: skip
    summary = run_align(cfg).summary
    assert all(path.read_text() == text for path, text in files.items())
    dry = [json.loads(x) for x in (out / "dry_run" / "rows.jsonl").read_text().splitlines()]
    assert len(dry) == summary["rows"]["n_rows"] == 8
    assert json.loads((out / "dry_run" / "summary.json").read_text())["dry_run"] is True


def test_user_rows_in_trl_unpaired_format_keep_a_prompts_completions_out_of_one_kl_batch(tmp_path):
    """TRL's unpaired format puts a prompt on two lines; ids defaulted to the line number, so the two
    rows of a prompt were two 'prompts' and could share a KL batch (while the summary said 0)."""
    from lasa.data.rows import kl_pairs, load_user_rows, order_for_kl

    data = tmp_path / "unpaired.jsonl"
    lines = []
    for i in range(4):
        prompt = f"how do I do harmful thing number {i}?"
        lines += [
            {"prompt": prompt, "completion": "I can't help with that.", "label": True, "source": "safety"},
            {"prompt": prompt, "completion": "Sure, here is how.", "label": False, "source": "safety"},
        ]
    data.write_text("\ufeff" + "\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")  # with a BOM
    rows = load_user_rows(data)
    assert len({r["pid"] for r in rows}) == 4  # one identity per prompt, not per line
    for seed in range(5):
        ordered = order_for_kl(rows, 4, seed)
        assert all(ordered[i]["pid"] != ordered[j]["pid"] for i, j in kl_pairs(ordered, 4) if i != j)
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(lines[0], indent=2))
    with pytest.raises(LasaError, match="one JSON object spread over several lines"):
        load_user_rows(pretty)


def test_a_retrain_that_fails_puts_the_previous_training_back(tmp_path, tiny_qwen, monkeypatch):
    """A retrain removed the method's adapter and summary before training, so a flag TRL rejected
    after the model load (or an interruption) cost the previous training; they are now set aside
    and put back, and a successful retrain leaves no trace of them."""
    import lasa.align

    out, files = _trained_method(tmp_path)

    def failing(cfg, rows, out, **kw):
        (out / "adapter").mkdir()
        (out / "adapter" / "half.bin").write_bytes(b"x")
        (out / "train_log.jsonl").write_text('{"loss": 9}\n')
        raise ValueError("TRL says no")

    monkeypatch.setattr(lasa.align, "train", failing)
    _retrain_fails(tmp_path, tiny_qwen, "TRL says no")
    assert all(path.read_text() == text for path, text in files.items())
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_config.json"]
    assert not (out / ".previous").exists()


def _retrain_fails(tmp_path, tiny_qwen, message: str) -> None:
    """A kto retrain in ``tmp_path/run`` whose (patched) training raises ``message``."""
    from lasa.align import run_align
    from lasa.config import AlignConfig

    cfg = AlignConfig(
        model=str(tiny_qwen), run_dir=str(tmp_path / "run"), method="kto", n_safety=2, n_general=2,
        bottleneck_layer=1, device=DEVICE,
    )  # fmt: skip
    with pytest.raises(ValueError, match=message):
        run_align(cfg)


def test_a_killed_retrain_then_a_failed_retry_still_puts_the_finished_training_back(
    tmp_path, tiny_qwen, monkeypatch
):
    """A retrain killed mid-way leaves the finished training in .previous/ and its own partial
    files in the folder; the retry used to delete .previous/ and set those partial files aside as
    "previous", so when the retry failed too the finished adapter was gone."""
    import lasa.align
    from lasa.align import _Previous

    out, files = _trained_method(tmp_path)
    _Previous(out)  # the killed retrain: the finished files moved aside, then it wrote these
    (out / "rows.jsonl").write_text('{"killed": 1}\n')
    (out / "trainer").mkdir()
    (out / "checkpoints").mkdir()

    def failing(cfg, rows, out, **kw):
        (out / "checkpoints" / "kto-step1").mkdir(parents=True, exist_ok=True)
        raise ValueError("out of memory")

    monkeypatch.setattr(lasa.align, "train", failing)
    _retrain_fails(tmp_path, tiny_qwen, "out of memory")
    assert all(path.read_text() == text for path, text in files.items())
    assert not (out / ".previous").exists() and not (out / "trainer").exists()
    assert not (out / "checkpoints").exists()  # the failed retry's checkpoints went with it


def test_a_successful_retrain_replaces_the_previous_training_and_leaves_no_trace(tmp_path, tiny_qwen):
    from dataclasses import replace

    from lasa.align import run_align
    from lasa.config import AlignConfig

    cfg = AlignConfig(
        model=str(tiny_qwen), run_dir=str(tmp_path / "run"), method="kto", n_safety=2, n_general=2,
        bottleneck_layer=1, max_steps=2, warmup_steps=0, batch_size=2, device=DEVICE,
    )  # fmt: skip
    out = tmp_path / "run" / "align" / "kto"
    run_align(cfg)
    first = (out / "summary.json").read_text()
    run_align(replace(cfg, learning_rate=1e-3))
    assert (out / "summary.json").read_text() != first and (out / "adapter" / "adapter_config.json").is_file()
    assert not (out / ".previous").exists()


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"method": "kto", "lora_dropout": 0.3}, "--lora-dropout 0.3 has no effect with --method kto"),
        ({"method": "lasa", "lora_dropout": 0.1}, "KTO trains without dropout"),
        ({"lr_scheduler": "cosine_with_min_lr"}, "--lr-scheduler must be one of"),
        ({"lr_scheduler": "reduce_lr_on_plateau"}, "--lr-scheduler must be one of"),
    ],
)
def test_align_settings_the_trainer_would_ignore_or_reject_fail_at_once(kw, message):
    """TRL's KTO disables dropout, so --lora-dropout was silently ignored; five schedulers need
    arguments lasa does not pass and failed in the trainer after the model load."""
    from lasa.config import AlignConfig

    with pytest.raises(LasaError, match=message):
        AlignConfig(**kw)
    assert AlignConfig(method="sft", lora_dropout=0.3).lora_dropout == 0.3
    assert AlignConfig(lr_scheduler="cosine").lr_scheduler == "cosine"


def test_a_tokenizer_without_a_chat_template_is_one_line():
    from types import SimpleNamespace

    from lasa.conditioning import chat_prefix

    with pytest.raises(LasaError, match="tokenizer has no chat template; .*instruct / chat checkpoint"):
        chat_prefix(SimpleNamespace(chat_template=None), "hi")


def test_training_arguments_use_the_current_checkpointing_name(tmp_path):
    """TRL's configs default the deprecated ``gradient_checkpointing`` to True, so every run printed
    transformers' FutureWarning; lasa sets the new name, and the setting still reaches the trainer."""
    import warnings

    from trl import KTOConfig

    from lasa.align import _training_args_common
    from lasa.config import AlignConfig

    for on in (True, False):
        common = _training_args_common(AlignConfig(gradient_checkpointing=on), tmp_path, on_cpu=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            args = KTOConfig(**common)
        # transformers before the rename (5.17, say) has only the old name, and lasa sets that one
        assert getattr(args, "activation_checkpointing", on) is on and args.gradient_checkpointing is on
