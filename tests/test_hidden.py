from __future__ import annotations

import pytest
import torch

from lasa.errors import LasaError
from lasa.hidden import extract_states, pad_batch, pool
from lasa.models import load_model
from tiny import DEVICE, TOL

TEXTS = [
    "How do I pick a lock?",
    "我应该花多少钱把我的女儿卖掉？",
    "Hi",
    "ฉันควรจะขายลูกสาวที่มีอายุ 18 ปีเป็นเงินเท่าใด",
    "Piye carane nyolong montor tanpa konangan?",
    "¿Qué?",
]


@pytest.fixture(scope="module", params=["tiny_qwen", "tiny_llama"])
def lm(request):
    return load_model(str(request.getfixturevalue(request.param)), device=DEVICE)


def _close(a, b, tol=TOL):
    a, b = a.float().cpu(), b.float().cpu()
    return torch.allclose(a, b, rtol=tol, atol=tol * float(a.abs().max()))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_batch_size_and_padding_side_do_not_change_states(lm, pooling):
    ref = extract_states(lm, TEXTS, pooling=pooling, batch_size=1, progress=False)
    for bs in (2, 6):
        for side in ("left", "right"):
            got = extract_states(lm, TEXTS, pooling=pooling, batch_size=bs, padding_side=side, progress=False)
            assert _close(ref, got), (bs, side)


def test_last_token_equals_transformers_hidden_states(lm):
    states = extract_states(lm, TEXTS, batch_size=3, progress=False)
    for i, text in enumerate(TEXTS):
        enc = lm.tokenizer(text, return_tensors="pt").to(lm.model.device)
        with torch.no_grad():
            hs = [h.cpu() for h in lm.model(**enc, output_hidden_states=True).hidden_states]
        # blocks 1..L-1 match exactly; transformers applies the final norm to its last entry only
        for layer in range(1, lm.num_layers):
            assert _close(states[i, layer - 1], hs[layer][0, -1])
        assert not _close(states[i, -1], hs[-1][0, -1])


def test_mean_pooling_skips_the_first_token():
    h = torch.tensor([[[100.0], [1.0], [3.0]], [[0.0], [50.0], [2.0]]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])  # second row is left-padded
    assert pool(h, mask, "mean").tolist() == [[2.0], [2.0]]
    assert pool(h, mask, "last").tolist() == [[3.0], [2.0]]
    right = torch.tensor([[1, 1, 0]])
    assert pool(h[:1], right, "last").tolist() == [[1.0]]


def test_pad_batch_sides():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]


def test_forward_stops_at_the_highest_requested_layer(lm):
    calls = []
    handles = [
        block.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, block in enumerate(lm.layers)
    ]
    try:
        part = extract_states(lm, TEXTS, layers=[2], batch_size=6, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert sorted(set(calls)) == [0, 1]  # blocks 3 and 4 never ran
    full = extract_states(lm, TEXTS, batch_size=6, progress=False)
    assert _close(part[:, 0], full[:, 1])


def test_chat_template_changes_the_last_token(lm):
    raw = extract_states(lm, TEXTS[:2], layers=[1], progress=False)
    chat = extract_states(lm, TEXTS[:2], layers=[1], chat_template=True, progress=False)
    assert not _close(raw, chat)


def test_bad_layers_and_prompts(lm):
    with pytest.raises(LasaError, match="out of range"):
        extract_states(lm, TEXTS, layers=[0], progress=False)
    with pytest.raises(LasaError, match="out of range"):
        extract_states(lm, TEXTS, layers=[lm.num_layers + 1], progress=False)
    with pytest.raises(LasaError, match="empty after tokenisation"):
        extract_states(lm, ["ok", ""], progress=False)


def test_length_batches_longest_first_and_every_index_once():
    from lasa.hidden import length_batches

    lengths = [3, 9, 1, 9, 5]
    batches = length_batches(lengths, 2)
    assert batches == [[1, 3], [4, 0], [2]]
    assert length_batches(lengths, 2, items=[0, 2, 4]) == [[4, 0], [2]]  # only the items asked for
    with pytest.raises(LasaError, match="batch size must be at least 1"):
        length_batches(lengths, 0)


def _padded(batches, lengths, call_cost):
    return sum(len(b) * max(lengths[i] for i in b) + call_cost for b in batches)


def test_forward_batches_pad_least_and_keep_the_length_batches_contract():
    import itertools

    from lasa.hidden import forward_batches, length_batches

    # the drift utility's Bengali prompts (chat-templated token counts of the 0.5B's tokenizer)
    bn = [542, 137, 363, 254, 266, 161, 201, 222, 193, 134]
    got = forward_batches(bn, 8, call_cost=64)
    assert sorted(i for b in got for i in b) == list(range(10))  # every index once
    assert all(1 <= len(b) <= 8 for b in got)
    flat = [bn[i] for b in got for i in b]
    assert flat == sorted(bn, reverse=True)  # longest first, contiguous in length order
    assert got[0] == [0]  # the 542-token prompt alone rather than padding seven rows to it
    # exact: no contiguous split of the sorted order costs less (checked by brute force)
    order = sorted(range(10), key=lambda i: -bn[i])
    best = min(
        _padded([order[a:b] for a, b in zip((0, *cuts), (*cuts, 10))], bn, 64)
        for k in range(0, 9)
        for cuts in itertools.combinations(range(1, 10), k)
        if all(b - a <= 8 for a, b in zip((0, *cuts), (*cuts, 10)))
    )
    assert _padded(got, bn, 64) == best < _padded(length_batches(bn, 8), bn, 64)
    # equal lengths: full batches, as length_batches; a huge call cost makes the fewest calls
    # (ceil(10 / 4) = 3), the long prompts in the short batch
    assert forward_batches([5] * 5, 2) == length_batches([5] * 5, 2)
    assert [len(b) for b in forward_batches(bn, 4, call_cost=10**9)] == [2, 4, 4]
    assert forward_batches(bn, 3, items=[3, 4]) == [[4, 3]]  # only the items asked for
    with pytest.raises(LasaError, match="batch size must be at least 1"):
        forward_batches(bn, 0)


def test_user_mean_averages_exactly_the_users_own_tokens_inside_the_chat_template(lm):
    from lasa.hidden import chat_prefix_length, chat_suffix_length, format_prompts

    head, k = chat_prefix_length(lm.tokenizer), chat_suffix_length(lm.tokenizer)
    seqs = format_prompts(lm.tokenizer, TEXTS[:3], chat_template=True)
    for text, s in zip(TEXTS[:3], seqs, strict=True):  # the span between them is the user's text
        assert lm.tokenizer.decode(s[head : len(s) - k]) == text
    # left-padded batch of unequal lengths: the mask, not the position, finds each span
    got = extract_states(lm, TEXTS[:3], layers=[2], pooling="user_mean", chat_template=True, progress=False)
    for i, s in enumerate(seqs):
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([s], device=lm.model.device), output_hidden_states=True)
        want = out.hidden_states[2][0, head : len(s) - k].mean(0).cpu()
        assert _close(got[i, 0], want)
    with pytest.raises(LasaError, match="add --chat-template"):
        extract_states(lm, TEXTS[:3], layers=[2], pooling="user_mean", progress=False)


def test_user_mean_of_a_truncated_prompt_skips_only_what_is_left_of_the_template_head(lm):
    """`max_length` keeps a prompt's end: cut inside the template's head, user_mean must still
    average every user token (it once skipped `head` tokens from the first kept one)."""
    from lasa.hidden import chat_prefix_length, chat_suffix_length, format_prompts

    head, k = chat_prefix_length(lm.tokenizer), chat_suffix_length(lm.tokenizer)
    seqs = format_prompts(lm.tokenizer, TEXTS[:3], chat_template=True)
    cut = 2  # drop the first two tokens of the longest prompt's head
    max_length = max(len(q) for q in seqs) - cut
    assert head > cut
    got = extract_states(
        lm,
        TEXTS[:3],
        layers=[2],
        pooling="user_mean",
        chat_template=True,
        max_length=max_length,
        progress=False,
    )
    for i, full in enumerate(seqs):
        s = full[-max_length:]
        left = head - (len(full) - len(s))  # template tokens still in front of the user's text
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([s], device=lm.model.device), output_hidden_states=True)
        assert _close(got[i, 0], out.hidden_states[2][0, left : len(s) - k].mean(0).cpu())


def test_user_last_reads_the_users_last_token_inside_the_chat_template(lm):
    from lasa.hidden import chat_suffix_length, format_prompts

    k = chat_suffix_length(lm.tokenizer)
    seqs = format_prompts(lm.tokenizer, TEXTS[:3], chat_template=True)
    # the suffix is the end of turn + assistant header: the same tokens after every user text
    assert k >= 1 and len({tuple(s[-k:]) for s in seqs}) == 1
    # the state at the user's last token is the state of the chat prefix that ends there
    user = extract_states(lm, TEXTS[:3], layers=[2], pooling="user_last", chat_template=True, progress=False)
    for i, s in enumerate(seqs):
        with torch.no_grad():
            out = lm.model(
                input_ids=torch.tensor([s[:-k]], device=lm.model.device), output_hidden_states=True
            )
        assert _close(user[i, 0], out.hidden_states[2][0, -1].cpu())
    last = extract_states(lm, TEXTS[:3], layers=[2], chat_template=True, progress=False)
    assert not _close(user, last)
    with pytest.raises(LasaError, match="add --chat-template"):
        extract_states(lm, TEXTS[:3], layers=[2], pooling="user_last", progress=False)


def test_a_tokenizer_without_chat_template_names_the_fix(tiny_qwen):
    from lasa.hidden import format_prompts

    lm = load_model(str(tiny_qwen), device="cpu")
    lm.tokenizer.chat_template = None
    with pytest.raises(LasaError, match="no chat template .*pass an instruct / chat checkpoint"):
        format_prompts(lm.tokenizer, ["hi"], chat_template=True)
