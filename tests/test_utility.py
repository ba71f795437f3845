from __future__ import annotations

import pytest
import torch

from lasa.errors import LasaError
from lasa.generate import GenerationSettings
from lasa.models import load_model
from lasa.utility import (
    answers_match,
    choice_logprobs,
    eval_mgsm,
    eval_mmlu,
    eval_xcopa,
    extract_answer,
    loglikelihood,
    mgsm_items,
    mmlu_prompt,
    mmlu_rows,
    normalize_digits,
    parse_number,
    xcopa_items,
    xcopa_pair,
)
from tiny import DEVICE, TOL

# -- pure helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 1,234.", 1234),
        ("১২", 12),
        ("উত্তর হল ১২।", 12),
        ("ดังนั้นคำตอบคือ ๔๕", 45),
        ("１２ apples", 12),
        ("She sells 16 - 3 - 4 = 9 eggs, so she earns 9 * 2 = 18 dollars.", 18),
        ("First 3, then 5, and finally 42.", 42),
        ("The answer is 5 apples; later she buys 7 more.", 5),
        ("Answer: 12", 12),
        ("答案是 42。", 42),
        ("It costs $1,000,000 in total", 1000000),
        ("Each costs 2.50 dollars", 2.5),
        ("The temperature is -3", -3),
        ("Read pages 3-5", 5),
        ("so \\boxed{72}, then 5 more checks", 72),
        ("12,34", 34),  # not a thousands group: two numbers
        ("উত্তর হল ২,৭৬,০০০", 276000),  # Indian lakh grouping
        ("It costs 1,14,200 rupees", 114200),
        ("1,2345", 2345),  # a group of three ends where its digits do
        ("The answer is −5", -5),  # the Unicode minus sign
        ("To get the answer: 16 - 3 - 4 = 9 eggs, and 9 * 2 = 18 dollars.", 18),
        ("Answer: 2.5 + 2.5 = 5. Then 7 more.", 5),
        ("no number here", None),
        ("x² and ①", None),  # superscripts and circled numbers are not decimal digits
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    got = extract_answer(text)
    assert got == expected
    assert type(got) is type(expected)


def test_number_helpers():
    assert normalize_digits("১২৩ ๔๕ ١٢") == "123 45 12"
    assert normalize_digits("abc 7") == "abc 7"
    assert parse_number("1,234") == 1234 and isinstance(parse_number("1,234"), int)
    assert parse_number("12.0") == 12 and isinstance(parse_number("12.0"), int)
    assert parse_number("2.50") == 2.5
    assert answers_match(18.0, 18) and answers_match(18, 18)
    assert not answers_match(None, 0) and not answers_match(17, 18)


def test_mgsm_items_use_the_evaluation_rows():
    from lasa.data.safety import MGSM_TRAIN_ROWS, mgsm_rows

    items = mgsm_items("bn", 3)
    assert [it["id"] for it in items] == [f"mgsm:{MGSM_TRAIN_ROWS + k}" for k in range(3)]
    rows = mgsm_rows("bn")
    assert [it["question"] for it in items] == [q for q, _ in rows[MGSM_TRAIN_ROWS : MGSM_TRAIN_ROWS + 3]]
    assert all(isinstance(it["gold"], int) for it in items)
    assert items[0]["gold"] == parse_number(normalize_digits(rows[MGSM_TRAIN_ROWS][1]))
    assert len(mgsm_items("en", None)) == len(rows) - MGSM_TRAIN_ROWS


def test_xcopa_pair_formats():
    zh = xcopa_items("zh")[0]
    assert zh["question"] == "cause" and zh["premise"].endswith("。")
    ctx, (c1, c2) = xcopa_pair(zh, "zh")
    assert ctx == zh["premise"][:-1] + "，因为"
    assert (c1, c2) == (zh["choice1"], zh["choice2"])

    it = xcopa_items("it")[0]
    ctx, (c1, _) = xcopa_pair(it, "it")
    assert ctx == "L'oggetto era incartato nella plastica bollata perché"
    assert c1 == " era delicato."  # first letter lowercased, space-joined

    th = xcopa_items("th")[0]  # no final punctuation in Thai: nothing may be cut
    assert (
        th["question_upstream"] == "effect" and th["question"] == "cause"
    )  # upstream th says "effect" always
    ctx, (c1, _) = xcopa_pair(th, "th")
    assert ctx == th["premise"] + " เพราะ"
    assert c1 == th["choice1"]

    effect = next(x for x in xcopa_items("sw") if x["question"] == "effect")
    assert xcopa_pair(effect, "sw")[0].endswith(" kwa hiyo")


def test_xcopa_question_type_is_shared_across_languages():
    zh, vi = xcopa_items("zh"), xcopa_items("vi")
    assert [x["question_upstream"] for x in zh] == [x["question_upstream"] for x in vi]
    for lang in ("it", "sw", "th"):
        items = xcopa_items(lang)
        assert [x["question"] for x in items] == [x["question"] for x in zh]
        assert [x["label"] for x in items] == [x["label"] for x in zh]
    assert sum(x["question"] == "cause" for x in xcopa_items("th")) == 250


def test_mmlu_rows_round_robin():
    rows = mmlu_rows()
    assert len(rows) == 57 * 20
    first = mmlu_rows(57)
    assert len({r["subject"] for r in first}) == 57
    assert mmlu_rows(58)[57]["subject"] == first[0]["subject"]
    assert mmlu_rows(58)[57]["question"] != first[0]["question"]
    assert all(r["answer"] in "ABCD" for r in rows)
    prompt = mmlu_prompt(first[0])
    assert prompt.endswith("\nD. " + first[0]["D"] + "\nAnswer:")
    assert "abstract algebra" in prompt.splitlines()[0]


# -- with the tiny models --------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tiny_qwen):
    return load_model(str(tiny_qwen), device=DEVICE)


PAIRS = [
    ("The cat sat on the", " mat."),
    ("一个很长的中文句子，用来测试左侧填充是否正确处理了位置编码和注意力掩码，因为", "它很易碎。"),
    ("Answer: ", "A"),  # trailing space moves into the continuation
    ("x", " y z w v u t s r q p"),
    ("Il gatto", ""),  # empty continuation scores 0
]


def _manual(model_lm, ctx: str, cont: str) -> float:
    """The documented definition, one example at a time, full-vocabulary log-softmax."""
    tok = model_lm.tokenizer
    stripped = ctx.rstrip()
    cont = ctx[len(stripped) :] + cont
    c_ids = tok(stripped, add_special_tokens=True)["input_ids"]
    x_ids = tok(cont, add_special_tokens=False)["input_ids"] if cont else []
    ids = torch.tensor([c_ids + x_ids], device=model_lm.model.device)
    with torch.no_grad():
        logp = model_lm.model(input_ids=ids).logits[0].float().log_softmax(-1)
    return float(sum(logp[len(c_ids) - 1 + k, t] for k, t in enumerate(x_ids)))


@pytest.mark.parametrize("kind", ["tiny_qwen", "tiny_llama"])
def test_loglikelihood_matches_manual_and_is_batch_invariant(kind, request):
    model_lm = load_model(str(request.getfixturevalue(kind)), device=DEVICE)
    ctxs, conts = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    manual = [_manual(model_lm, c, x) for c, x in PAIRS]
    one = loglikelihood(model_lm, ctxs, conts, batch_size=1, progress=False)
    batched = loglikelihood(model_lm, ctxs, conts, batch_size=len(PAIRS), progress=False)
    two = loglikelihood(model_lm, ctxs, conts, batch_size=2, progress=False)
    assert manual[-1] == 0.0 and one[-1] == 0.0
    assert all(m < 0 for m in manual[:-1])
    assert len({round(m, 3) for m in manual}) == len(manual)  # distinct: a mix-up would show
    for got in (one, batched, two):
        assert got == pytest.approx(manual, abs=1e-4, rel=1e-5)


def test_loglikelihood_input_errors(lm):
    with pytest.raises(LasaError, match="2 contexts but 1 continuations"):
        loglikelihood(lm, ["a", "b"], ["c"], progress=False)
    with pytest.raises(LasaError, match="context 0 is empty"):
        loglikelihood(lm, [""], [" x"], progress=False)


def test_single_token_choices_agree_with_loglikelihood(lm):
    letters = ["A", "B", "C", "D"]
    assert all(len(lm.tokenizer(x, add_special_tokens=False)["input_ids"]) == 1 for x in letters)
    prompts = [mmlu_prompt(r) for r in mmlu_rows(3)]
    fast = choice_logprobs(lm, prompts, letters, batch_size=2, progress=False)  # one forward per prompt
    slow = loglikelihood(lm, [p for p in prompts for _ in letters], letters * len(prompts), progress=False)
    assert fast.shape == (3, 4)
    assert fast.flatten().tolist() == pytest.approx(slow, abs=TOL)


def test_eval_xcopa_end_to_end(lm):
    res = eval_xcopa(lm, ["zh", "sw", "it"], n_per_lang=4, batch_size=3, progress=False)
    assert res["task"] == "xcopa" and res["n_per_lang"] == 4 and res["chance"] == 0.5
    assert list(res["accuracy"]) == ["zh", "sw", "it"]
    for acc in res["accuracy"].values():
        assert 0.0 <= acc <= 1.0 and (acc * 4).is_integer()
    assert res["mean"] == pytest.approx(sum(res["accuracy"].values()) / 3)
    # the per-language bookkeeping: recompute the last language on its own
    items = xcopa_items("it")[:4]
    pairs = [xcopa_pair(x, "it") for x in items]
    scores = loglikelihood(
        lm, [c for c, _ in pairs for _ in range(2)], [x for _, cs in pairs for x in cs], progress=False
    )
    right = sum(
        int((0 if scores[2 * k] >= scores[2 * k + 1] else 1) == x["label"]) for k, x in enumerate(items)
    )
    assert res["accuracy"]["it"] == right / 4


def test_eval_mmlu_end_to_end(lm):
    res = eval_mmlu(lm, n=4, batch_size=2, progress=False)
    assert set(res) >= {"task", "n", "n_subjects", "accuracy", "chance"}
    assert res["n"] == 4 and res["n_subjects"] == 4 and res["chance"] == 0.25
    assert 0.0 <= res["accuracy"] <= 1.0 and (res["accuracy"] * 4).is_integer()
    rows = mmlu_rows(4)
    scores = loglikelihood(
        lm,
        [mmlu_prompt(r) for r in rows for _ in "ABCD"],
        [f" {x}" for _ in rows for x in "ABCD"],
        progress=False,
    )
    expected = sum(
        int("ABCD"[max(range(4), key=lambda j: scores[4 * k + j])] == r["answer"]) for k, r in enumerate(rows)
    )
    assert res["accuracy"] == expected / 4
    predicted = ["ABCD"[max(range(4), key=lambda j: scores[4 * k + j])] for k in range(4)]
    assert res["predicted_letters"] == {x: predicted.count(x) for x in "ABCD"}
    assert 0.0 < res["letter_mass"] <= 1.0


def test_eval_mgsm_end_to_end(lm):
    settings = GenerationSettings(max_new_tokens=6, batch_size=4)
    summary, records = eval_mgsm(lm, "en,th", n_per_lang=2, settings=settings, progress=False)
    assert list(summary["accuracy"]) == ["en", "th"] and summary["n_per_lang"] == 2
    assert summary["truncated"]["en"] == sum(r["finish"] == "length" for r in records[:2]) / 2
    assert [r["id"] for r in records] == ["mgsm:100", "mgsm:101"] * 2
    assert [r["lang"] for r in records] == ["en", "en", "th", "th"]
    for r in records:
        assert set(r) >= {
            "id",
            "lang",
            "prompt",
            "response",
            "prediction",
            "gold",
            "correct",
            "ssi_score",
            "gated",
        }
        assert r["prompt"].endswith("The answer is <number>'.")
        assert r["prediction"] == extract_answer(r["response"])
        assert r["correct"] == answers_match(r["prediction"], r["gold"])
        assert r["ssi_score"] is None and r["gated"] is False
    assert summary["accuracy"]["en"] == sum(r["correct"] for r in records[:2]) / 2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda lm: eval_mgsm(lm, ["vi"], 2, progress=False), "mgsm has no 'vi'; choose from en zh th bn sw"),
        (lambda lm: eval_xcopa(lm, "en", 2, progress=False), "xcopa has no 'en'; choose from it sw th vi zh"),
        (
            lambda lm: eval_xcopa(lm, "zh", 501, progress=False),
            "xcopa has 500 test items per language; asked for 501",
        ),
        (
            lambda lm: eval_mmlu(lm, 0, progress=False),
            "mmlu: the number of items must be a positive integer, got 0",
        ),
        (
            lambda lm: eval_mgsm(lm, "sw", 151, progress=False),
            "mgsm has 150 evaluation problems per language (rows 100 onwards); asked for 151",
        ),
    ],
)
def test_input_errors_are_one_line(lm, call, message):
    with pytest.raises(LasaError) as err:
        call(lm)
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_every_configurable_utility_task_has_a_runner():
    from lasa.config import UTILITY_TASKS
    from lasa.utility.runner import UTILITY_RUNNERS

    assert set(UTILITY_TASKS) == set(UTILITY_RUNNERS)


# -- drift -----------------------------------------------------------------------------------


def test_drift_is_zero_without_an_adapter_and_measures_one(tiny_qwen):
    import copy
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model

    from lasa.utility.drift import eval_drift

    lm = load_model(str(tiny_qwen), device=DEVICE)
    base = eval_drift(lm, ["en", "sw"], n=4, batch_size=3, progress=False)
    en = base["per_language"]["en"]
    assert base["mean"]["token_kl"] == 0 == base["mean"]["first_token_kl"] and en["ppl"] == en["ppl_base"]
    assert 1 < en["ppl"] < lm.tokenizer.vocab_size * 10 and en["tokens"] > 20
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = replace(lm, model=get_peft_model(copy.deepcopy(lm.model), lora))
    d = eval_drift(adapted, ["en", "sw"], n=4, batch_size=2, progress=False)
    assert d["adapter"] and d["mean"]["token_kl"] > 0 and d["mean"]["first_token_kl"] > 0
    # the base is read by disabling the adapter: its perplexity is the plain model's
    assert d["per_language"]["en"]["ppl_base"] == pytest.approx(en["ppl"], rel=1e-4)
    assert d["per_language"]["en"]["ppl"] != pytest.approx(en["ppl"], rel=1e-4)


def test_per_text_drift_adds_up_to_the_corpus_perplexity(tiny_qwen):
    """The per-text NLLs a paired interval resamples are the same tokens as the pooled perplexity."""
    import math

    from lasa.utility.drift import token_drift

    lm = load_model(str(tiny_qwen), device=DEVICE)
    adapted = _upper_half_lora(lm, seed=3)
    texts = ["The river floods every spring.", "Mvua inanyesha leo asubuhi sana.", "", "A longer line " * 5]
    d = token_drift(adapted, texts, batch_size=2, progress=False, per_text=True)
    rows = d["per_text"]
    assert len(rows["nll"]) == len(texts) and sum(rows["tokens"]) == d["tokens"]
    assert rows["tokens"][2] == 0 and all(rows["tokens"][i] > 0 for i in (0, 1, 3))  # aligned with texts
    assert math.exp(sum(rows["nll"]) / d["tokens"]) == pytest.approx(d["ppl"], rel=1e-5)
    assert math.exp(sum(rows["nll_base"]) / d["tokens"]) == pytest.approx(d["ppl_base"], rel=1e-5)
    assert rows["nll"] != rows["nll_base"]  # the adapter changes each text's likelihood
    # text by text, the same as measuring it alone (batching and padding do not leak between rows)
    alone = token_drift(adapted, [texts[1]], batch_size=1, progress=False)
    assert math.exp(rows["nll"][1] / rows["tokens"][1]) == pytest.approx(alone["ppl"], rel=1e-4)
    assert "per_text" not in token_drift(adapted, texts[:1], progress=False)


def _upper_half_lora(lm, seed: int):
    """``lm`` with a random LoRA (q, v) on its upper half of blocks: the default placement's shape."""
    import copy
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model

    from lasa.models import find_decoder_layers

    n = len(lm.layers)
    torch.manual_seed(seed)
    lora = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        layers_to_transform=list(range(n // 2, n)),
        init_lora_weights=False,
    )
    peft = get_peft_model(copy.deepcopy(lm.model), lora)
    path, layers = find_decoder_layers(peft)
    return replace(lm, model=peft, layers=layers, layers_path=path)


def test_second_adapter_variant_reads_the_base_side_and_gets_the_same_drift(tiny_qwen, tmp_path):
    """The first adapter variant keeps the base's states; the next one with the same split runs only
    the adapted blocks and must report exactly what a full computation reports."""

    from lasa.utility.drift import eval_drift

    lm = load_model(str(tiny_qwen), device=DEVICE)
    ref = tmp_path / "eval" / "drift_reference.safetensors"
    first, second = _upper_half_lora(lm, 0), _upper_half_lora(lm, 1)
    plain = eval_drift(second, ["en", "sw"], n=4, batch_size=3, progress=False)
    kept = eval_drift(first, ["en", "sw"], n=4, batch_size=3, progress=False, reference_path=ref)
    assert ref.is_file() and kept["base_batches_read"] == 0
    read = eval_drift(second, ["en", "sw"], n=4, batch_size=3, progress=False, reference_path=ref)
    assert read["base_batches_read"] == 8  # 2 languages x (2 FLORES + 2 chat batches)
    for lang in ("en", "sw"):
        for key in ("ppl", "ppl_base", "token_kl", "first_token_kl"):
            assert read["per_language"][lang][key] == plain["per_language"][lang][key]  # exactly
    assert read["mean"]["token_kl"] != pytest.approx(kept["mean"]["token_kl"], rel=1e-3)  # two adapters
    # other settings (here the batch size) never read a reference kept for different batches
    other = eval_drift(second, ["en", "sw"], n=4, batch_size=2, progress=False, reference_path=ref)
    assert other["base_batches_read"] == 0
    assert other["mean"]["token_kl"] == pytest.approx(plain["mean"]["token_kl"], rel=1e-5)


def test_base_variant_keeps_its_flores_pass_for_the_adapter_variants(tiny_qwen, tmp_path):
    """In a run whose adapters leave the lower half alone, the base variant's own FLORES pass is the
    base side the first adapter variant reads: its ppl_base is then the base variant's ppl exactly,
    and every figure matches a computation without any reference."""
    import json

    from lasa.utility.drift import eval_drift, run_adapter_split

    lm = load_model(str(tiny_qwen), device=DEVICE)
    n = len(lm.layers)
    adapted = _upper_half_lora(lm, 0)
    run = tmp_path / "run"
    assert run_adapter_split(run) == 0  # no adapters yet
    for name, first in (("kto", n // 2), ("lasa", n // 2)):
        (run / "align" / name / "adapter").mkdir(parents=True)
        cfg = {"layers_to_transform": list(range(first, n))}
        (run / "align" / name / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    assert run_adapter_split(run) == n // 2
    ref = run / "eval" / "drift_reference.safetensors"
    langs = ["en", "sw"]
    base = eval_drift(lm, langs, n=4, batch_size=3, progress=False, reference_path=ref, base_split=n // 2)
    assert ref.is_file() and base["base_batches_kept"] == 4  # 2 languages x 2 FLORES batches
    plain = eval_drift(adapted, langs, n=4, batch_size=3, progress=False)
    read = eval_drift(adapted, langs, n=4, batch_size=3, progress=False, reference_path=ref)
    assert read["base_batches_read"] == 4 and read["base_batches_kept"] == 4  # the chats: its own
    for lang in langs:
        assert read["per_language"][lang]["ppl_base"] == base["per_language"][lang]["ppl"]  # exactly
        for key in ("ppl", "ppl_base", "token_kl", "first_token_kl"):
            assert read["per_language"][lang][key] == pytest.approx(
                plain["per_language"][lang][key], rel=1e-5
            )
    again = eval_drift(adapted, langs, n=4, batch_size=3, progress=False, reference_path=ref)
    assert again["base_batches_read"] == 8 and again["per_language"] == read["per_language"]
    # adapters that disagree on their first block: nothing is kept for them
    cfg = {"layers_to_transform": list(range(1, n))}
    (run / "align" / "lasa" / "adapter" / "adapter_config.json").write_text(json.dumps(cfg))
    assert run_adapter_split(run) == 0


def test_drift_base_pass_from_the_shared_blocks_equals_a_full_base_pass(tiny_qwen):
    """LoRA above a layer: the base pass restarts from the adapted pass's state below it and must
    give exactly the log-probs of a full forward with the adapter disabled."""
    import copy
    from dataclasses import replace

    from peft import LoraConfig, get_peft_model

    from lasa.hidden import pad_batch
    from lasa.models import base_model, find_decoder_layers
    from lasa.utility.drift import _forward, paired_log_probs, shared_blocks

    lm = load_model(str(tiny_qwen), device=DEVICE)
    n = len(lm.layers)
    top = list(range(n // 2, n))  # 0-based blocks above the middle
    lora = LoraConfig(
        r=4,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=top,
        init_lora_weights=False,
    )
    peft = get_peft_model(copy.deepcopy(lm.model), lora)
    path, layers = find_decoder_layers(peft)
    adapted = replace(lm, model=peft, layers=layers, layers_path=path)
    assert shared_blocks(adapted) == n // 2
    # a family that rescales inputs_embeds (Gemma: by sqrt(d)) would scale the replayed state twice
    peft.config.model_type = "gemma"
    try:
        assert shared_blocks(adapted) == 0
    finally:
        peft.config.model_type = "qwen2"
    seqs = [lm.tokenizer(t)["input_ids"] for t in ["Habari ya asubuhi, rafiki yangu", "hi", "你好，世界"]]
    ids, mask = pad_batch(seqs, lm.tokenizer.pad_token_id or 0, "left")
    lp, lb = paired_log_probs(adapted, ids, mask)
    full_adapted = _forward(adapted, ids, mask)
    with base_model(adapted):
        full_base = _forward(adapted, ids, mask)
    real = mask.bool()
    assert torch.allclose(lp[real], full_adapted[real], atol=1e-5)
    assert torch.allclose(lb[real], full_base[real], atol=1e-5)
    assert not torch.allclose(lp[real], lb[real], atol=1e-3)  # the adapter does change the output
    assert len(find_decoder_layers(peft)[1]) == n  # the block list is restored
    lp1, lb1 = paired_log_probs(adapted, ids, mask, keep=1)
    assert torch.allclose(lp1[:, -1], full_adapted[:, -1], atol=1e-5)
    assert torch.allclose(lb1[:, -1], full_base[:, -1], atol=1e-5)
    # an adapter on the first block shares nothing and still gives the plain two passes
    peft_all = get_peft_model(copy.deepcopy(lm.model), LoraConfig(r=4, target_modules=["q_proj"]))
    path, layers = find_decoder_layers(peft_all)
    assert shared_blocks(replace(lm, model=peft_all, layers=layers, layers_path=path)) == 0
