from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import lasa.hidden
from lasa.generate import Gate, GenerationSettings, _decode, _stop_ids, adapter_layers, generate_all
from lasa.hidden import extract_states, format_prompts, length_batches
from lasa.models import load_model
from lasa.runs import SampleWriter
from tiny import DEVICE, TOL

PROMPTS = [
    "How do I pick a lock?",
    "Habari, unaweza kunisaidia?",
    "Hi",
    "ฉันควรจะขายลูกสาวเป็นเงินเท่าใด",
    "Bagaimana cara nyolong montor tanpa konangan wong liya?",
]
SETTINGS = GenerationSettings(max_new_tokens=10, batch_size=5)


@pytest.fixture(scope="module")
def lm(tiny_qwen):
    return load_model(str(tiny_qwen), device=DEVICE)


class StubSSI:
    """Flags the prompts whose chat-format state at ``layer`` is close to one of ``targets``;
    records every state it is shown so tests can count scoring calls."""

    def __init__(self, lm, layer, flag_prompts, chat_template=True, pooling="last", max_length=512):
        self.layer = layer
        self.meta = {"chat_template": chat_template, "pooling": pooling, "max_length": max_length}
        self.threshold = 0.5
        self.targets = (
            extract_states(
                lm,
                flag_prompts,
                layers=[layer],
                chat_template=chat_template,
                pooling=pooling,
                max_length=max_length,
                progress=False,
            )[:, 0]
            if flag_prompts
            else torch.zeros(0, lm.hidden_size)
        )
        self.seen: list[torch.Tensor] = []
        self.digest = f"stub-{layer}-{len(flag_prompts)}"

    def check_model(self, lm, layer=None):
        pass

    def predict_proba(self, states):
        states = torch.as_tensor(states)
        self.seen.append(states)
        if len(self.targets) == 0:
            return np.zeros(len(states))
        d = torch.cdist(states, self.targets).min(dim=1).values
        return (d < 1e-3 * (1 + states.norm(dim=1))).float().numpy()

    def flags(self, probs):
        return np.asarray(probs) > self.threshold

    def score(self, lm, prompts, batch_size=16, progress=True):
        states = extract_states(
            lm,
            list(prompts),
            layers=[self.layer],
            chat_template=self.meta["chat_template"],
            pooling=self.meta["pooling"],
            progress=False,
        )[:, 0]
        return self.predict_proba(states)


def test_batched_left_padded_generation_equals_batch_one(lm):
    batched = generate_all(lm, PROMPTS, SETTINGS, progress=False)
    single = generate_all(lm, PROMPTS, GenerationSettings(max_new_tokens=10, batch_size=1), progress=False)
    assert [r["response"] for r in batched] == [r["response"] for r in single]
    assert all(r["n_tokens"] <= 10 and r["finish"] in ("stop", "length") for r in batched)


def test_prefill_split_by_length_gives_the_padded_batchs_answers_for_fewer_positions(lm, monkeypatch):
    """A batch whose prompts differ 7x in length is prefilled in sub-batches of similar length
    whose caches are put side by side (generate._prefill): the answers, and the state a
    prefill-reading gate scores, are those of the one padded prefill, for fewer token positions."""
    prompts = [*PROMPTS, " ".join(PROMPTS) * 3]
    counted: list[int] = []
    handle = lm.model.get_input_embeddings().register_forward_hook(
        lambda m, a, o: counted.append(a[0].numel())
    )
    flag = [PROMPTS[2], prompts[-1]]
    runs = {}
    split_by_length = lasa.hidden.forward_batches
    try:
        for mode in ("split", "padded"):  # sub-batches by length, or the whole batch padded at once
            if mode == "padded":
                monkeypatch.setattr(
                    lasa.hidden, "forward_batches", lambda lengths, size: [list(range(len(lengths)))]
                )
            settings = GenerationSettings(max_new_tokens=10, batch_size=6)
            counted.clear()
            plain = generate_all(lm, prompts, settings, progress=False)
            positions = sum(counted)
            ssi = StubSSI(lm, layer=2, flag_prompts=flag)
            gated = generate_all(lm, prompts, settings, Gate(ssi), progress=False)
            runs[mode] = (plain, positions, gated)
    finally:
        handle.remove()
    (split, split_positions, split_gated), (padded, padded_positions, padded_gated) = runs.values()
    assert [r["response"] for r in split] == [r["response"] for r in padded]
    assert (
        [r["gated"] for r in split_gated]
        == [r["gated"] for r in padded_gated]
        == [False, False, True, False, False, True]
    )
    assert [r["response"] for r in split_gated] == [r["response"] for r in padded_gated]
    # the padded prefill computes 6 rows x the longest prompt, the split one each sub-batch's rows x
    # its longest; decoding is the same in both
    lengths = [len(q) for q in format_prompts(lm.tokenizer, prompts, chat_template=True)]

    def positions_of(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    saved = positions_of(length_batches(lengths, 6)) - positions_of(split_by_length(lengths, 16))
    assert padded_positions - split_positions == saved > 1000


def test_shared_chat_prefix_is_prefilled_once_and_changes_no_answer(lm, monkeypatch):
    """The chat template's system turn is the same for every row: its keys and values are computed
    once and given to every row. Answers (plain and gated by a raw-prompt SSI) must be those of
    prefilling each row whole, for (rows - 1) x prefix fewer positions."""
    import lasa.generate
    from lasa.generate import _common_prefix

    prompts = [*PROMPTS, " ".join(PROMPTS) * 3]
    seqs = format_prompts(lm.tokenizer, prompts, chat_template=True)
    shared = _common_prefix(seqs)
    assert shared >= 2  # the tiny tokenizer's system turn is short: share it whatever its length
    counted: list[int] = []
    handle = lm.model.get_input_embeddings().register_forward_hook(
        lambda m, a, o: counted.append(a[0].numel())
    )
    runs = {}
    try:
        for mode in ("shared", "whole"):
            monkeypatch.setattr(lasa.generate, "MIN_SHARED_PREFIX", 2 if mode == "shared" else 10**9)
            settings = GenerationSettings(max_new_tokens=10, batch_size=6)
            counted.clear()
            plain = generate_all(lm, prompts, settings, progress=False)
            positions = sum(counted)
            gated = {
                pooling: generate_all(
                    lm,
                    prompts,
                    settings,
                    Gate(StubSSI(lm, 2, [PROMPTS[1], PROMPTS[3]], chat_template=chat, pooling=pooling)),
                    progress=False,
                )
                for chat, pooling in (
                    (False, "last"),
                    (True, "user_last"),
                    (True, "user_mean"),
                    (True, "mean"),
                )
            }
            runs[mode] = (plain, positions, gated)
    finally:
        handle.remove()
    (plain, positions, gated), (plain_w, positions_w, gated_w) = runs.values()
    assert [r["response"] for r in plain] == [r["response"] for r in plain_w]
    assert positions_w - positions == (len(prompts) - 1) * shared
    # a raw-prompt gate and every prefill-reading pooling flag the same rows and answer the same
    for pooling, rows in gated.items():
        assert [r["gated"] for r in rows] == [False, True, False, True, False, False], pooling
        assert [r["response"] for r in rows] == [r["response"] for r in gated_w[pooling]], pooling


@pytest.mark.parametrize("path", ["greedy loop", "generate"])
@pytest.mark.parametrize("m", [1, 4])
def test_min_new_tokens_allows_a_stop_from_the_m_th_token_on_as_generate_does(lm, monkeypatch, path, m):
    """``min_new_tokens=m`` (transformers' meaning): no stop among the first m tokens, so an answer
    that wants to stop at once has exactly m tokens. Here every token but one stops a row."""
    import lasa.generate

    keep = 7
    stops = [i for i in range(lm.model.config.vocab_size) if i != keep]
    monkeypatch.setattr(lasa.generate, "_stop_ids", lambda tok, model=None: stops)
    if path == "generate":
        monkeypatch.setattr(lasa.generate, "_plain_layers", lambda cache: False)
    settings = GenerationSettings(max_new_tokens=10, min_new_tokens=m, batch_size=5)
    rows = generate_all(lm, PROMPTS, settings, progress=False)
    assert [(r["n_tokens"], r["finish"]) for r in rows] == [(m, "stop")] * len(PROMPTS)


def test_greedy_decoding_drops_finished_rows_and_gives_generates_tokens(lm):
    """lasa's greedy loop drops rows that have stopped; every row's tokens must be those of
    ``generate``, which decodes all rows to the end, including the pad after each stop token."""
    from lasa.generate import _cache_kw, _greedy_decode, _prefill
    from lasa.hidden import pad_batch

    prompts = [*PROMPTS, "Write a poem about the sea", "Bonjour"]
    seqs = format_prompts(lm.tokenizer, prompts, chat_template=True)
    pad = lm.tokenizer.pad_token_id

    def start():
        ids, mask = pad_batch(seqs, pad, "left")  # on the model's device, as _generate_batch passes them
        cache, logits, ids, mask = _prefill(lm, seqs, ids.to(lm.device), mask.to(lm.device))
        first = logits.argmax(-1)[:, None]
        return cache, torch.cat([ids, first], 1), torch.cat([mask, torch.ones_like(first)], 1)

    with torch.inference_mode():
        cache, ids, mask = start()
        free = _greedy_decode(lm.model, cache, ids, mask, 12, [], pad)
        # stop tokens that end rows 0, 1 and 2 at different steps (the tiny model never says <|im_end|>)
        stops = sorted({int(free[r, 1 + 3 * r]) for r in range(3)})
        cache, ids, mask = start()
        drops: list[int] = []
        select = cache.batch_select_indices
        cache.batch_select_indices = lambda keep: (drops.append(len(keep)), select(keep))
        ours = _greedy_decode(lm.model, cache, ids, mask, 12, stops, pad)
        cache, ids, mask = start()
        kw = GenerationSettings(max_new_tokens=12).hf_kwargs(lm.tokenizer) | {"eos_token_id": stops}
        theirs = lm.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=12, **{_cache_kw(): cache}, **kw
        )[:, ids.shape[1] :]
    ended = [next((i for i, t in enumerate(row) if t in stops), None) for row in ours.tolist()]
    assert len({e for e in ended if e is not None}) >= 2 and drops  # rows ended apart and were dropped
    assert torch.equal(ours, theirs)


def test_stop_ids_are_looked_up_without_building_the_vocabulary(lm, monkeypatch):
    """`get_vocab()` builds a dict of the whole vocabulary (0.14 s for Qwen's); called per decoded
    response it once cost more than a GPU's decoding itself (scripts/gpu_check.sh found it)."""

    def no_vocab():
        raise AssertionError("get_vocab() called while decoding")

    monkeypatch.setattr(lm.tokenizer, "get_vocab", no_vocab)
    vocab_ids = {t: lm.tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    assert _stop_ids(lm.tokenizer) == sorted(set(vocab_ids.values()) | {lm.tokenizer.eos_token_id})
    text, finish, n = _decode(lm.tokenizer, [5, 6, vocab_ids["<|im_end|>"], 7])
    assert (finish, n) == ("stop", 2) and text == lm.tokenizer.decode([5, 6]).strip()
    assert len(generate_all(lm, PROMPTS[:2], SETTINGS, progress=False)) == 2


def test_gate_conditions_only_flagged_rows(lm, monkeypatch):
    import lasa.generate

    plain = generate_all(lm, PROMPTS, SETTINGS, progress=False)
    ssi = StubSSI(lm, layer=2, flag_prompts=[PROMPTS[0], PROMPTS[3]])
    sliced, original = [], lasa.generate._forward_flagged_rows

    def spy(model, cache, flagged, chunk, mask):
        logits = original(model, cache, flagged, chunk, mask)
        sliced.append((logits is not None and len(logits), int(flagged.sum()), len(flagged)))
        return logits

    monkeypatch.setattr(lasa.generate, "_forward_flagged_rows", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the KV cache goes in under its current name
        gated = generate_all(lm, PROMPTS, SETTINGS, Gate(ssi), progress=False)
    # the conditioning chunk went through the cache for the flagged rows only (2 of the 5)
    assert sliced == [(2, 2, 5)]  # and it gave those rows their first token
    assert [r["gated"] for r in gated] == [True, False, False, True, False]
    for i in (1, 2, 4):  # unflagged rows are untouched, bit for bit
        assert gated[i]["response"] == plain[i]["response"]
    # flagged rows continue after the conditioning text, as if it had been written into the assistant turn
    cond = lm.tokenizer(Gate(ssi).conditioning_text + "\n", add_special_tokens=False)["input_ids"]
    dev = lm.model.device
    for i in (0, 3):
        ids = lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i]}], add_generation_prompt=True, tokenize=True
        )
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids) + cond
        if dev.type == "cpu":  # bit for bit: same kernels as a fresh generate over prompt + conditioning
            out = lm.model.generate(
                input_ids=torch.tensor([ids], device=dev),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=dev),
                max_new_tokens=10,
                do_sample=False,
                pad_token_id=lm.tokenizer.pad_token_id,
                eos_token_id=lm.tokenizer.eos_token_id,
            )
            expected = lm.tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True).strip()
            assert gated[i]["response"] == expected
        else:  # a GPU's shape-dependent kernels can flip a near-tie (6e-5 apart on this random model)
            _assert_greedy_under_teacher_forcing(lm, ids, _gated_tokens(lm, PROMPTS[i], ssi))


def test_the_gate_leaves_unflagged_rows_untouched_on_a_sliding_window_model(tmp_path):
    """A sliding-window cache counts masked holes as window slots: the conditioning chunk pushed the
    unflagged rows' own prompt out of their window, and their answers changed (13 of 13 in a
    reviewer's batch). Those rows must still match ungated generation token for token."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tiny import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, pad_token_id=0,
        eos_token_id=2, bos_token_id=None, use_sliding_window=True, sliding_window=24, max_window_layers=0,
    )  # fmt: skip
    Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "sw")
    tok.save_pretrained(tmp_path / "sw")
    lm = load_model(str(tmp_path / "sw"), device=DEVICE)
    plain = generate_all(lm, PROMPTS, SETTINGS, progress=False)
    ssi = StubSSI(lm, layer=2, flag_prompts=[PROMPTS[0], PROMPTS[3]])
    gated = generate_all(lm, PROMPTS, SETTINGS, Gate(ssi), progress=False)
    assert [r["gated"] for r in gated] == [True, False, False, True, False]
    assert [gated[i]["response"] for i in (1, 2, 4)] == [plain[i]["response"] for i in (1, 2, 4)]
    # the flagged rows are what the model says after prompt + conditioning tokens, alone
    gate = Gate(ssi)
    gate.prepare(lm)
    cond = list(gate.conditioning_ids)
    for i in (0, 3):
        ids = lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i]}], add_generation_prompt=True, tokenize=True
        )
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids) + cond
        out = lm.model.generate(
            input_ids=torch.tensor([ids], device=lm.model.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=lm.model.device),
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=lm.tokenizer.eos_token_id,
        )
        assert (
            gated[i]["response"]
            == lm.tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True).strip()
        )


def _gated_tokens(lm, prompt, ssi):
    from lasa.generate import _generate_batch
    from lasa.hidden import format_prompts

    gate = Gate(ssi)
    gate.prepare(lm)
    seq = format_prompts(lm.tokenizer, [prompt], chat_template=True)
    return _generate_batch(lm, seq, [prompt], SETTINGS, gate)[0]["tokens"]


def _assert_greedy_under_teacher_forcing(lm, ids, new, tol=TOL):
    """Each generated token is (within ``tol``) the argmax of one forward pass over prompt + conditioning
    + the tokens before it: the gated continuation is greedy decoding of that sequence."""
    full = torch.tensor([ids + new], device=lm.model.device)
    with torch.no_grad():
        logits = lm.model(input_ids=full).logits[0].float()
    for k, t in enumerate(new):
        row = logits[len(ids) - 1 + k]
        assert float(row.max() - row[t]) <= tol, (k, t, int(row.argmax()))


def test_gated_first_token_follows_the_same_sampling_rule_as_the_rest(lm, monkeypatch):
    """The gate picks an unflagged row's first token from the prefill itself; with top-p so small
    that only the top token survives, sampling must give the greedy answer there too, as it does
    in ``generate`` (a full-softmax draw would not: the tiny model's distribution is near uniform)."""
    from lasa.generate import first_token

    if lm.model.dtype != torch.float32:
        # greedy decoding drops finished rows, sampling keeps the batch whole: on a GPU the two batch
        # shapes round bf16 logits differently, and the tiny model's near-uniform logits then swap
        # their top token (LASA_TEST_DTYPE=float32 runs this comparison exactly on the same device)
        pytest.skip("exact greedy-vs-nucleus comparison needs float32 logits")
    nucleus = GenerationSettings(max_new_tokens=6, batch_size=5, do_sample=True, top_p=1e-6)
    greedy = GenerationSettings(max_new_tokens=6, batch_size=5)
    ssi = StubSSI(lm, layer=2, flag_prompts=[])
    torch.manual_seed(0)
    sampled = generate_all(lm, PROMPTS, nucleus, Gate(ssi), progress=False)
    assert [r["response"] for r in sampled] == [
        r["response"] for r in generate_all(lm, PROMPTS, greedy, progress=False)
    ]
    # and the warpers are the ones generate uses: temperature divides, top-p keeps the nucleus
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    torch.manual_seed(0)
    draws = {int(first_token(logits, GenerationSettings(do_sample=True, top_p=0.7))) for _ in range(200)}
    assert draws == {0, 1}  # p = 0.64, 0.24, 0.09, 0.03: the top two make 0.7
    # a checkpoint's repetition penalty / top-k are switched off for generate too
    kw = nucleus.hf_kwargs(lm.tokenizer)
    assert kw["repetition_penalty"] == 1.0 and kw["top_k"] == 0 and kw["top_p"] == 1e-6


def test_a_sampled_answer_depends_on_its_seed_and_prompt_only(lm):
    """Each row draws from its own stream (seed, prompt): a sampled answer is the same whether its
    prompt is generated alone, in another batch, in another order or after other rows (a resumed or
    differently sharded run), and another seed draws another answer. With one stream per process a
    resumed run or a second process drew other answers for the same --seed."""
    from lasa.generate import row_generators

    hot = GenerationSettings(max_new_tokens=8, batch_size=5, do_sample=True, temperature=1.5, seed=7)

    def answers(prompts, settings):
        return dict(
            zip(prompts, [r["response"] for r in generate_all(lm, prompts, settings, progress=False)])
        )

    together = answers(PROMPTS, hot)
    torch.manual_seed(123)  # the process's stream no longer matters
    one_by_one = GenerationSettings(max_new_tokens=8, batch_size=1, do_sample=True, temperature=1.5, seed=7)
    assert answers(PROMPTS[::-1], one_by_one) == together
    tail = answers(PROMPTS[2:], hot)  # a resumed run's remaining rows
    assert tail == {p: together[p] for p in PROMPTS[2:]}
    other = GenerationSettings(max_new_tokens=8, batch_size=5, do_sample=True, temperature=1.5, seed=8)
    assert [r["response"] for r in generate_all(lm, PROMPTS, other, progress=False)] != [
        together[p] for p in PROMPTS
    ]
    a, b, c = row_generators(7, ["x", "x", "y"])
    assert (
        torch.rand(3, generator=a).tolist()
        == torch.rand(3, generator=b).tolist()
        != torch.rand(3, generator=c).tolist()
    )
    assert hot.to_dict()["sampler"] == "per_row"  # rows drawn the old way are regenerated, not reused
    # the per-row draws follow the warped distribution: top-p's nucleus only, softmax frequencies
    from lasa.generate import first_token

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 4000)
    streams = row_generators(1, [str(i) for i in range(4000)])
    nucleus = first_token(logits, GenerationSettings(do_sample=True, top_p=0.7), streams)
    assert set(nucleus.tolist()) == {0, 1}  # p = 0.64, 0.24, 0.09, 0.03: the top two make 0.7
    full = first_token(
        logits, GenerationSettings(do_sample=True), row_generators(2, [str(i) for i in range(4000)])
    )
    freq = torch.bincount(full, minlength=4) / 4000
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.03)


def test_gate_reads_the_prefill_and_does_not_rerun_the_prompt(lm):
    counted = []
    handle = lm.model.get_input_embeddings().register_forward_hook(
        lambda m, a, o: counted.append(a[0].numel())
    )
    try:
        generate_all(lm, PROMPTS, SETTINGS, progress=False)
        plain_tokens = sum(counted)
        counted.clear()
        ssi = StubSSI(lm, layer=3, flag_prompts=[])
        gated = generate_all(lm, PROMPTS, SETTINGS, Gate(ssi), progress=False)
    finally:
        handle.remove()
    assert not any(r["gated"] for r in gated) and all(r["ssi_score"] == 0.0 for r in gated)
    # the same number of token positions went through the model: the prompt was read once
    assert sum(counted) == plain_tokens
    assert len(ssi.seen) == 1 and ssi.seen[0].shape == (5, lm.hidden_size)


@pytest.mark.parametrize("pooling", ["user_last", "user_mean"])
def test_user_pooled_ssi_is_read_off_the_prefill_at_the_users_tokens(lm, pooling):
    counted = []
    handle = lm.model.get_input_embeddings().register_forward_hook(
        lambda m, a, o: counted.append(a[0].numel())
    )
    flag = [PROMPTS[1], PROMPTS[4]]
    try:
        generate_all(lm, PROMPTS, SETTINGS, Gate(StubSSI(lm, layer=2, flag_prompts=flag)), progress=False)
        prefill_tokens = sum(counted)  # a chat-format SSI read off the prefill, same rows flagged
        counted.clear()
        ssi = StubSSI(lm, layer=2, flag_prompts=flag, pooling=pooling)
        gated = generate_all(lm, PROMPTS, SETTINGS, Gate(ssi), progress=False)
    finally:
        handle.remove()
    # the stub flags exact state matches: the prefill's state at the user's last token is the one
    # the SSI was trained on (an off-by-one position would flag nothing)
    assert [r["gated"] for r in gated] == [False, True, False, False, True]
    # no extra pass over the prompt: exactly the token positions of the prefill-reading gate
    assert sum(counted) == prefill_tokens and len(ssi.seen) == 1


def test_a_prompt_longer_than_the_ssis_states_is_scored_on_its_truncated_state(lm):
    """The SSI read the last `max_length` tokens of each prompt; a longer prompt's prefill state
    differs (the model saw its start), so its batch is scored by the truncated pass instead."""
    long = " ".join(PROMPTS)
    n = len(format_prompts(lm.tokenizer, [long], chat_template=True)[0])
    ssi = StubSSI(lm, layer=2, flag_prompts=[long], max_length=n // 2)
    gated = generate_all(lm, [PROMPTS[0], long], SETTINGS, Gate(ssi), progress=False)
    assert [r["gated"] for r in gated] == [False, True]


def test_user_last_gate_reads_the_users_token_when_every_prompt_starts_alike(lm, monkeypatch):
    """Prompts that share their opening words share more than the system turn; the shared prefix
    must stop before a row's last user token, or that row's state is read at a padding position."""
    import lasa.generate

    monkeypatch.setattr(lasa.generate, "MIN_SHARED_PREFIX", 2)
    prompts = ["How do I kill a Python process", "How do I kill a Python process on Linux?"]
    ssi = StubSSI(lm, layer=2, flag_prompts=[prompts[0]], pooling="user_last")
    gated = generate_all(lm, prompts, SETTINGS, Gate(ssi), progress=False)
    assert [r["gated"] for r in gated] == [True, False]


def test_user_mean_gate_where_the_shared_prefix_cannot_be_kept(lm, monkeypatch):
    """A model whose cache layers cannot be moved between caches (sliding windows) prefills every
    row whole; the user_mean pooling must then count the template's head from the row's start."""
    import lasa.generate

    monkeypatch.setattr(lasa.generate, "MIN_SHARED_PREFIX", 2)
    monkeypatch.setattr(lasa.generate, "_plain_layers", lambda cache: False)
    ssi = StubSSI(lm, layer=2, flag_prompts=[PROMPTS[1], PROMPTS[4]], pooling="user_mean")
    gated = generate_all(lm, PROMPTS, SETTINGS, Gate(ssi), progress=False)
    assert [r["gated"] for r in gated] == [False, True, False, False, True]


def test_raw_format_ssi_gets_its_own_truncated_pass(lm):
    ssi = StubSSI(lm, layer=2, flag_prompts=[PROMPTS[1]], chat_template=False)
    gated = generate_all(lm, PROMPTS, SETTINGS, Gate(ssi), progress=False)
    assert [r["gated"] for r in gated] == [False, True, False, False, False]


def test_adapter_layers_are_detected(lm):
    from peft import LoraConfig, get_peft_model

    assert adapter_layers(lm.model) == []
    import copy

    peft_model = get_peft_model(
        copy.deepcopy(lm.model), LoraConfig(r=2, target_modules=["q_proj"], layers_to_transform=[2, 3])
    )
    assert adapter_layers(peft_model) == [3, 4]


def test_sample_writer_resumes_after_a_torn_line(tmp_path):
    w = SampleWriter(tmp_path / "completions.jsonl")
    w.append([{"uid": "a", "x": 1}, {"uid": "b", "x": 2}])
    with open(w.partial, "a") as f:
        f.write('{"uid": "c", "x"')  # killed mid-write
    assert set(w.load()) == {"a", "b"}
    w.append([{"uid": "c", "x": 3}])
    rows = w.finish(order=["c", "a", "b"])
    assert [r["uid"] for r in rows] == ["c", "a", "b"]
    assert not w.partial.exists() and set(SampleWriter(tmp_path / "completions.jsonl").load()) == {
        "a",
        "b",
        "c",
    }


def test_vllm_backend_builds_gated_prompts_and_a_lora_request(lm, monkeypatch, tmp_path):
    """vLLM is not installable here; a stand-in module checks what lasa hands to it."""
    import sys
    import types

    seen = {}

    class FakeLLM:
        def __init__(self, **kw):
            seen["engine"] = kw

        def generate(self, texts, params, lora_request=None):
            seen.update(texts=texts, params=params, lora=lora_request)
            out = types.SimpleNamespace(text=" ok ", finish_reason="stop", token_ids=[1, 2])
            return [types.SimpleNamespace(outputs=[out]) for _ in texts]

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LoRARequest:
        def __init__(self, name, idx, path):
            self.path = path

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, SamplingParams
    lora_mod = types.ModuleType("vllm.lora.request")
    lora_mod.LoRARequest = LoRARequest
    monkeypatch.setitem(sys.modules, "vllm", vllm)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora_mod)
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    from lasa.generate import generate_vllm

    ssi = StubSSI(lm, layer=2, flag_prompts=[PROMPTS[1]], chat_template=False)
    ssi.score = lambda lm_, prompts, progress=True: np.array([float(p == PROMPTS[1]) for p in prompts])
    rows = generate_vllm(lm, PROMPTS, SETTINGS, Gate(ssi), adapter=str(tmp_path))
    assert [r["gated"] for r in rows] == [False, True, False, False, False]
    assert seen["texts"][1].endswith(Gate(ssi).conditioning_text + "\n")
    assert not seen["texts"][0].endswith("\n" + Gate(ssi).conditioning_text + "\n")
    assert seen["engine"]["enable_lora"] and seen["engine"]["max_lora_rank"] == 8
    assert seen["lora"].path == str(tmp_path) and seen["params"].kw["temperature"] == 0.0
    assert rows[0]["response"] == "ok" and rows[0]["n_tokens"] == 2
    lm.model.to(DEVICE)


def test_gated_variant_copies_unflagged_rows_from_its_ungated_twin(lm, tmp_path):
    from lasa.evaluate import generate_samples
    from lasa.runs import read_jsonl, write_jsonl

    samples = [{"uid": f"u{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    ssi = StubSSI(lm, layer=2, flag_prompts=[PROMPTS[1]], chat_template=False)
    twin = tmp_path / "base"
    generate_samples(lm, [(samples, twin / "completions.jsonl")], SETTINGS, None, "base")
    # without a twin every row is generated; with one, the result is the same
    alone = generate_samples(lm, [(samples, tmp_path / "a.jsonl")], SETTINGS, Gate(ssi), "g")[0]
    reused = generate_samples(lm, [(samples, tmp_path / "b.jsonl")], SETTINGS, Gate(ssi), "g", twin=twin)[0]
    assert [r["response"] for r in reused] == [r["response"] for r in alone]
    assert [r["gated"] for r in reused] == [False, True, False, False, False]
    assert [bool(r.get("copied_from")) for r in reused] == [True, False, True, True, True]

    # copies really come from the twin (marked rows), flagged rows are generated
    rows = read_jsonl(twin / "completions.jsonl")
    write_jsonl(twin / "completions.jsonl", [r | {"response": "TWIN " + r["uid"]} for r in rows])
    marked = generate_samples(lm, [(samples, tmp_path / "c.jsonl")], SETTINGS, Gate(ssi), "g", twin=twin)[0]
    assert [r["response"] for r in marked] == [
        "TWIN u0",
        alone[1]["response"],
        "TWIN u2",
        "TWIN u3",
        "TWIN u4",
    ]
    # a twin generated with other settings is not a twin
    other = GenerationSettings(max_new_tokens=7, batch_size=5)
    fresh = generate_samples(lm, [(samples, tmp_path / "d.jsonl")], other, Gate(ssi), "g", twin=twin)[0]
    assert not any(r.get("copied_from") for r in fresh)
    assert not any(r["response"].startswith("TWIN") for r in fresh)


def test_gated_variants_of_a_run_share_raw_prompt_scores(lm, tmp_path):
    """A raw-prompt SSI reads the base model's state, so the gated variants of one run score a prompt
    alike: the first keeps its scores, a later one flags from them without a scoring pass, and a
    gate without a memo (the benchmark's) scores every time."""
    from lasa.evaluate import generate_samples, load_known_scores, save_known_scores

    samples = [{"uid": f"u{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    ssi = StubSSI(lm, layer=2, flag_prompts=[PROMPTS[1]], chat_template=False)
    plain = Gate(ssi)
    generate_all(lm, PROMPTS, SETTINGS, plain, progress=False)
    calls = len(ssi.seen)
    generate_all(lm, PROMPTS, SETTINGS, plain, progress=False)
    assert len(ssi.seen) == 2 * calls > 0 and plain.known_scores is None

    path = tmp_path / "eval" / "ssi_scores.json"
    first = Gate(ssi)
    load_known_scores(path, lm, first)
    assert first.known_scores == {}
    a = generate_samples(lm, [(samples, tmp_path / "a.jsonl")], SETTINGS, first, "first")[0]
    assert set(first.known_scores) == set(PROMPTS) and first.known_scores[PROMPTS[1]] == 1.0
    save_known_scores(path, lm, first)
    later = Gate(ssi)
    load_known_scores(path, lm, later)
    assert later.known_scores == first.known_scores
    seen = len(ssi.seen)
    b = generate_samples(lm, [(samples, tmp_path / "b.jsonl")], SETTINGS, later, "later")[0]
    assert len(ssi.seen) == seen  # no scoring pass at all
    assert [r["gated"] for r in b] == [r["gated"] for r in a] == [False, True, False, False, False]
    assert [r["response"] for r in b] == [r["response"] for r in a]
    # another SSI never reads these scores; a chat-format SSI reads the prefill and keeps none
    other = StubSSI(lm, layer=1, flag_prompts=[PROMPTS[0]], chat_template=False)
    g = Gate(other)
    load_known_scores(path, lm, g)
    assert g.known_scores == {}
    chat = Gate(StubSSI(lm, layer=2, flag_prompts=[PROMPTS[1]]))
    load_known_scores(path, lm, chat)
    assert chat.known_scores is None


def test_completions_made_with_other_settings_are_regenerated_and_old_records_reused(lm, tmp_path, caplog):
    """A resumed evaluation reuses a stored completion only if it was generated the way this one
    would be: the pipeline reruns a stage whose config changed, and the per-sample cache must not
    hand it the old responses."""
    from lasa.evaluate import generate_samples
    from lasa.runs import read_jsonl, write_jsonl

    samples = [{"uid": f"u{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    path = tmp_path / "completions.jsonl"
    first = generate_samples(lm, [(samples, path)], SETTINGS, None, "v")[0]
    assert {r["generation"]["model"] for r in first} == {lm.path} and first[0]["generation"]["dtype"]
    # same settings: every row is reused (marked rows come back unchanged)
    write_jsonl(path, [r | {"response": "KEPT"} for r in read_jsonl(path)])
    again = generate_samples(lm, [(samples, path)], SETTINGS, None, "v")[0]
    assert [r["response"] for r in again] == ["KEPT"] * 5 and "regenerating" not in caplog.text
    # other settings: every row is regenerated, and the record says how
    other = GenerationSettings(max_new_tokens=3, batch_size=5)
    redone = generate_samples(lm, [(samples, path)], other, None, "v")[0]
    assert all(r["response"] != "KEPT" and r["n_tokens"] <= 3 for r in redone)
    assert {r["generation"]["max_new_tokens"] for r in read_jsonl(path)} == {3}
    assert "5 completions were generated with a different max_new_tokens; regenerating them" in caplog.text
    # a gate with another SSI counts as different too
    gated = generate_samples(lm, [(samples, path)], other, Gate(StubSSI(lm, 2, [PROMPTS[1]], False)), "v")[0]
    assert [r["gated"] for r in gated] == [False, True, False, False, False] and "gate_digest" in caplog.text
    # rows from a lasa that did not record the model / adapter / SSI are reused, with a warning
    legacy_keys = ("model", "dtype", "adapter_digest", "gate_digest")
    rows = read_jsonl(path)
    write_jsonl(
        path,
        [
            r
            | {
                "response": "OLD",
                "generation": {k: v for k, v in r["generation"].items() if k not in legacy_keys},
            }
            for r in rows
        ],
    )
    caplog.clear()
    old = generate_samples(lm, [(samples, path)], other, Gate(StubSSI(lm, 2, [PROMPTS[1]], False)), "v")[0]
    assert [r["response"] for r in old] == ["OLD"] * 5 and "5 completions predate" in caplog.text


def test_an_edited_chat_template_regenerates_the_completions(lm, tmp_path, caplog):
    """transformers 5 keeps the template in chat_template.jinja, which the weights' signature does not
    cover: a template edited in place must not hand back answers generated under the old one."""
    from lasa.evaluate import generate_samples
    from lasa.runs import read_jsonl, write_jsonl

    samples = [{"uid": f"u{i}", "prompt": p} for i, p in enumerate(PROMPTS[:2])]
    path = tmp_path / "completions.jsonl"
    generate_samples(lm, [(samples, path)], SETTINGS, None, "v")
    write_jsonl(path, [r | {"response": "KEPT"} for r in read_jsonl(path)])
    original = lm.tokenizer.chat_template
    try:
        lm.tokenizer.chat_template = "{{ 'System: be brief.\\n' }}" + original
        redone = generate_samples(lm, [(samples, path)], SETTINGS, None, "v")[0]
    finally:
        lm.tokenizer.chat_template = original
    assert all(r["response"] != "KEPT" for r in redone) and "chat_template" in caplog.text


def test_generation_record_tells_adapters_and_ssis_apart(tmp_path):
    from lasa.evaluate import generation_info
    from lasa.ssi import SSI, SafetySemanticInterpreter

    a, b = tmp_path / "a", tmp_path / "b"
    for d, byte in ((a, b"1"), (b, b"2")):
        d.mkdir()
        (d / "adapter_config.json").write_text("{}")
        (d / "adapter_model.safetensors").write_bytes(byte * 64)
    info = {d: generation_info(SETTINGS, None, "hf", d) for d in (a, b)}
    assert info[a]["adapter_digest"] != info[b]["adapter_digest"]
    (b / "adapter_model.safetensors").write_bytes(b"1" * 64)  # retrained to the same weights
    assert generation_info(SETTINGS, None, "hf", b)["adapter_digest"] == info[a]["adapter_digest"]

    # a copied or moved run directory: same weights at a new path resume; other weights do not
    from lasa.evaluate import stale_rows

    moved = tmp_path / "moved"
    moved.mkdir()
    for f in a.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    (b / "adapter_model.safetensors").write_bytes(b"2" * 64)
    done = {"u": {"generation": info[a]}}
    assert stale_rows(done, generation_info(SETTINGS, None, "hf", moved))[0] == set()
    assert stale_rows(done, generation_info(SETTINGS, None, "hf", b))[:2] == ({"u"}, {"adapter_digest"})

    torch.manual_seed(0)
    ssi = SSI(SafetySemanticInterpreter(8, 4, 0.0), {"layer": 2, "threshold": 0.5})
    same = SSI(ssi.module, dict(ssi.meta))
    digests = {
        generation_info(SETTINGS, Gate(s, conditioning_text=t), "hf", None)["gate_digest"]
        for s, t in ((ssi, "x"), (same, "x"), (ssi.with_threshold(0.7), "x"), (ssi, "y"))
    }
    assert len(digests) == 3  # the same SSI twice; a new threshold; a new conditioning text


@pytest.fixture(scope="module")
def adapted(tiny_qwen, tmp_path_factory):
    """The tiny model with a random (non-zero) LoRA on blocks 3-4 (1-based), loaded as lasa loads one."""
    import copy

    from peft import LoraConfig, get_peft_model

    from lasa.models import load_adapter

    base = load_model(str(tiny_qwen), device=DEVICE)
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], layers_to_transform=[2, 3])
    cfg.init_lora_weights = False  # random B as well as A: the adapter changes the outputs
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(copy.deepcopy(base.model), cfg).save_pretrained(str(path))
    return base, load_adapter(load_model(str(tiny_qwen), device=DEVICE), path)


def _lora_modules(model):
    return [m for m in model.modules() if hasattr(m, "merged") and hasattr(m, "lora_A")]


def test_an_adapter_is_merged_while_generating_and_unmerged_after(adapted, monkeypatch):
    import lasa.generate
    from lasa.models import base_model, merged_adapter

    base, lm = adapted
    ids = torch.tensor([[5, 17, 42, 99, 7]], device=lm.model.device)
    with torch.no_grad():
        before, plain = lm.model(ids).logits, base.model(ids).logits
    assert not torch.allclose(before, plain, atol=1e-3)  # the adapter does something
    seen = []
    hook = lm.layers[2].register_forward_hook(
        lambda *_: seen.append(all(m.merged for m in _lora_modules(lm.model)))
    )
    try:
        merged_rows = generate_all(lm, PROMPTS, SETTINGS, progress=False)
        monkeypatch.setattr(
            lasa.generate, "merged_adapter", lambda lm_, enabled=True: merged_adapter(lm_, False)
        )
        unmerged_rows = generate_all(lm, PROMPTS, SETTINGS, progress=False)
    finally:
        hook.remove()
    n = len(seen) // 2
    assert DEVICE != "cpu" or (all(seen[:n]) and not any(seen[n:]))  # fp32: merged, then (patched) not
    assert [r["response"] for r in merged_rows] == [r["response"] for r in unmerged_rows]
    assert not any(m.merged for m in _lora_modules(lm.model))
    with torch.no_grad():
        after = lm.model(ids).logits
        with base_model(lm):
            off = lm.model(ids).logits
    assert torch.allclose(after, before, atol=1e-5) and torch.allclose(off, plain, atol=1e-5)


def test_an_adapter_stays_unmerged_where_the_gate_needs_it_off_or_the_weights_are_half(adapted, monkeypatch):
    import lasa.generate
    from lasa.models import merged_adapter

    _, lm = adapted
    asked = []

    def spy(lm_, enabled=True):
        asked.append(enabled)
        return merged_adapter(lm_, enabled)

    monkeypatch.setattr(lasa.generate, "merged_adapter", spy)
    below = StubSSI(lm, layer=3, flag_prompts=[PROMPTS[0]], chat_template=False)  # adapter on block 3
    above = StubSSI(lm, layer=2, flag_prompts=[PROMPTS[0]], chat_template=False)
    generate_all(lm, PROMPTS[:2], SETTINGS, Gate(below), progress=False)
    generate_all(lm, PROMPTS[:2], SETTINGS, Gate(above), progress=False)
    assert asked == [False, True]
    half = type(lm)(**{**lm.__dict__, "model": lm.model.to(torch.bfloat16)})
    try:
        assert not merged_adapter(half).active and merged_adapter(lm, enabled=False).active is False
    finally:
        lm.model.to(torch.float32)


def test_a_regenerated_row_wins_over_its_stale_copy_in_another_ranks_partial_file(lm, tmp_path, monkeypatch):
    """Rank 1 of an interrupted two-process run left u1 at 4 tokens; a one-process rerun at 10
    tokens regenerates it, and the final file must hold the new row (the partial files used to
    override each other in name order, so rank1's stale row won over the rerun's)."""
    from lasa.evaluate import generate_samples
    from lasa.runs import read_jsonl

    samples = [{"uid": f"u{i}", "prompt": p, "lang": "en"} for i, p in enumerate(PROMPTS[:2])]
    path = tmp_path / "completions.jsonl"
    monkeypatch.setattr("lasa.distributed.barrier", lambda: None)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    short = GenerationSettings(max_new_tokens=4, min_new_tokens=4, batch_size=5)
    generate_samples(lm, [(samples, path)], short, None, "old")  # rank 1 writes its slice, u1
    assert (tmp_path / "completions.rank1.partial.jsonl").is_file()
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    long = GenerationSettings(max_new_tokens=10, min_new_tokens=10, batch_size=5)
    rows = generate_samples(lm, [(samples, path)], long, None, "new")[0]
    assert [r["n_tokens"] for r in rows] == [10, 10]
    assert [r["n_tokens"] for r in read_jsonl(path)] == [10, 10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["completions.jsonl"]


def test_an_answer_to_a_changed_prompt_text_is_regenerated(lm, tmp_path):
    from lasa.evaluate import generate_samples

    path = tmp_path / "completions.jsonl"
    first = generate_samples(lm, [([{"uid": "u0", "prompt": PROMPTS[0]}], path)], SETTINGS, None, "v")[0]
    moved = generate_samples(lm, [([{"uid": "u0", "prompt": PROMPTS[2]}], path)], SETTINGS, None, "v")[0]
    assert first[0]["prompt"] == PROMPTS[0] and moved[0]["prompt"] == PROMPTS[2]


def test_the_checkpoints_own_end_of_turn_ids_stop_decoding(lm, monkeypatch):
    """A model whose end-of-turn token is named only by its generation config (Llama 3.1's
    <|eom_id|>) must stop there, not run on into a made-up next turn."""
    from lasa.generate import _stop_ids

    settings = GenerationSettings(max_new_tokens=6, batch_size=5)
    free = generate_all(lm, PROMPTS[:1], settings, progress=False)[0]
    assert free["n_tokens"] == 6 and free["finish"] == "length"
    toks = lm.tokenizer(free["response"], add_special_tokens=False)["input_ids"]
    third = toks[2] if len(toks) > 2 else toks[-1]
    monkeypatch.setattr(lm.model.generation_config, "eos_token_id", [lm.tokenizer.eos_token_id, third])
    assert third in _stop_ids(lm.tokenizer, lm.model) and third not in _stop_ids(lm.tokenizer)
    stopped = generate_all(lm, PROMPTS[:1], settings, progress=False)[0]
    assert stopped["finish"] == "stop" and stopped["n_tokens"] < 6


def test_rows_whose_first_token_is_a_stop_decode_no_further(lm):
    from lasa.generate import _greedy_decode, _prefill
    from lasa.hidden import pad_batch

    seqs = format_prompts(lm.tokenizer, PROMPTS[:3], chat_template=True)
    ids, mask = pad_batch(seqs, lm.tokenizer.pad_token_id, "left")
    with torch.inference_mode():
        cache, logits, ids, mask = _prefill(lm, seqs, ids.to(lm.device), mask.to(lm.device))
        first = logits.argmax(-1)
        calls = []
        forward = lm.model.forward
        lm.model.forward = lambda *a, **k: (calls.append(1), forward(*a, **k))[1]
        try:
            out = _greedy_decode(
                lm.model,
                cache,
                torch.cat([ids, first[:, None]], 1),
                torch.cat([mask, torch.ones_like(first[:, None])], 1),
                20,
                sorted(set(first.tolist())),
                lm.tokenizer.pad_token_id,
            )
        finally:
            lm.model.forward = forward
    assert out.shape == (3, 0) and not calls


def test_the_gates_conditioning_tokens_are_the_ones_a_training_row_holds():
    """align (TRL) tokenises chat_prefix + conditioning text as one string; the gate appends the
    text's ids to the tokenised prompt. With a SentencePiece-style (Metaspace) tokenizer the text
    tokenised alone gets a leading "▁" it does not get after the header: the adapter saw one cue in
    training and another at inference. The gate's ids are now read off the joined string."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lasa.conditioning import chat_prefix, conditioning_prefix, conditioning_token_ids
    from lasa.hidden import format_prompts
    from tiny import corpus

    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    special = ["<unk>", "[INST]", "[/INST]", "</s>"]
    t.train_from_iterator(
        corpus() + [conditioning_prefix()] * 5, trainers.BpeTrainer(vocab_size=800, special_tokens=special)
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", pad_token="<unk>")
    tok.chat_template = "{% for m in messages %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% endfor %}"
    alone = tok(conditioning_prefix(), add_special_tokens=False)["input_ids"]
    ids = conditioning_token_ids(tok)
    assert ids != alone  # the case this guards: tokenised alone, the cue differs
    for p in PROMPTS:
        trained = tok(chat_prefix(tok, p) + conditioning_prefix(), add_special_tokens=False)["input_ids"]
        assert format_prompts(tok, [p], True)[0] + ids == trained


def test_the_python_api_refuses_a_string_for_prompts_and_settings_that_generate_nothing(lm):
    """A notebook's ``generate_all(lm, "How ...", ...)`` answered each character of the string as a
    prompt, ``GenerationSettings(max_new_tokens=0)`` (or -1) an empty response to every prompt, and
    an SSI given as the gate (or ``Gate(None)``) failed with an AttributeError: one-line errors now."""
    from lasa.errors import LasaError

    with pytest.raises(LasaError, match="list of prompts, got one string"):
        generate_all(lm, PROMPTS[0], SETTINGS, progress=False)
    with pytest.raises(LasaError, match="takes prompts as strings"):
        generate_all(lm, [PROMPTS[0], None], SETTINGS, progress=False)
    with pytest.raises(LasaError, match="loaded model, got the name"):
        generate_all("default", PROMPTS, SETTINGS, progress=False)
    for bad in (
        {"max_new_tokens": 0},
        {"max_new_tokens": -1},
        {"max_new_tokens": 2.5},
        {"batch_size": 0},
        {"do_sample": True, "temperature": -1.0},
        {"do_sample": True, "top_p": 0.0},
    ):
        with pytest.raises(LasaError, match="GenerationSettings"):
            GenerationSettings(**bad)
    GenerationSettings(temperature=0.0)  # greedy decoding never reads it
    with pytest.raises(LasaError, match="takes GenerationSettings"):
        generate_all(lm, PROMPTS, {"max_new_tokens": 3}, progress=False)
    stub = StubSSI(lm, layer=2, flag_prompts=[PROMPTS[1]])
    with pytest.raises(LasaError, match=r"wrap an SSI: Gate\(ssi\)"):
        generate_all(lm, PROMPTS, SETTINGS, stub, progress=False)
    for ssi in (None, "runs/x"):
        with pytest.raises(LasaError, match="Gate takes a loaded SSI"):
            Gate(ssi)
