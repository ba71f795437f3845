from __future__ import annotations

import pytest

from lasa.data import LANGUAGES, TIERS, load_multijail, load_sib200, normalize_language, normalize_languages
from lasa.errors import LasaError


def test_multijail_is_parallel_in_ten_languages():
    mj = load_multijail()
    assert len(mj) == 315
    assert mj.languages == list(LANGUAGES)
    assert mj.ids[:3] == ["0", "1", "2"]
    assert all(t.strip() for col in mj.texts.values() for t in col)
    # the BOM must not leak into the first header or text
    assert not mj.texts["en"][0].startswith("\ufeff")


def test_sib200_is_parallel_and_unquoted():
    sib = load_sib200(["en", "sw", "jw"])
    assert len(sib) == 1004
    assert sib.languages == ["en", "sw", "jv"]
    # QUOTE_NONE keeps the sentences' own quotation marks
    assert any('"' in t for t in sib.texts["en"])


def test_sample_is_seeded_and_parallel():
    mj = load_multijail(["en", "zh"])
    a, b, c = mj.sample(20, 1), mj.sample(20, 1), mj.sample(20, 2)
    assert a.ids == b.ids and a.ids != c.ids
    i = mj.ids.index(a.ids[5])
    assert a.texts["zh"][5] == mj.texts["zh"][i]
    with pytest.raises(LasaError, match="315"):
        mj.sample(400, 0)


def test_language_codes():
    assert normalize_language("JW") == "jv"
    assert normalize_languages("en,zh sw") == ["en", "zh", "sw"]
    assert normalize_languages(["all"]) == list(LANGUAGES)
    assert sum(len(v) for v in TIERS.values()) == 9
    with pytest.raises(
        LasaError, match="unknown language code 'xx'; valid codes: en zh it vi ar ko th bn sw jv"
    ):
        normalize_languages(["en", "xx"])


def test_malformed_multijail_file_is_a_one_line_error(tmp_path):
    bad = tmp_path / "mj.csv"
    bad.write_text("id,tags,en,zh\n0,[],How?,怎么？\n1,[],Why?,\n")
    with pytest.raises(LasaError, match=r"mj.csv:3: empty zh prompt for id 1"):
        load_multijail(["en", "zh"], path=bad)
    bad.write_text("id,tags,en\n0,[],How?\n")
    with pytest.raises(LasaError, match="missing column"):
        load_multijail(["en", "sw"], path=bad)


@pytest.mark.parametrize("lang", ["zh", "it", "vi", "ar", "ko", "th", "bn", "sw", "jv"])
def test_translated_xstest_is_complete_and_aligned(lang):
    from lasa.data.safety import xstest, xstest_multilingual

    en, tr = xstest(), xstest_multilingual(lang)
    assert [r["id"] for r in tr] == [r["id"] for r in en]
    assert [r["label"] for r in tr] == [r["label"] for r in en]
    assert sum(r["label"] == "safe" for r in tr) == 250
    # translated, not copied: at most a handful of prompts (names, code) survive verbatim
    same = sum(a["prompt"] == b["prompt"] for a, b in zip(en, tr))
    assert same <= 10, same


def test_xquad_split_is_at_an_article_boundary():
    """No article's questions on both sides: a probe trained on one side must not have read
    the evaluation side's article (the split was row 595, which cut Newcastle_upon_Tyne)."""
    from lasa.data.safety import XQUAD_TRAIN_ROWS, _read_csv, xquad

    rows = _read_csv("xquad", "xquad_questions_parallel.csv")
    train = {r["title"] for r in rows[:XQUAD_TRAIN_ROWS]}
    held = {r["title"] for r in rows[XQUAD_TRAIN_ROWS:]}
    assert not train & held
    assert abs(XQUAD_TRAIN_ROWS - len(rows) / 2) < 20  # still about half and half
    ids = {p.id for p in xquad("en", "train")} & {p.id for p in xquad("en", "eval")}
    assert not ids


def test_hard_negatives_keep_the_vendored_form(tmp_path, monkeypatch):
    """The authors' form field wins over the question-mark guess: statements stay statements,
    so align's statement filter and the SSI's form cells see them."""
    from lasa.data import safety

    hard = safety.hard_negatives(["en", "zh"])
    forms = {p.form for p in hard}
    assert forms == {"question", "instruction", "statement"}
    statements = [p for p in hard if p.form == "statement"]
    assert len(statements) == 109
    assert all(not p.text.rstrip().endswith(("?", "？")) for p in statements)
    # a corrupt form value is a one-line error naming the file
    (tmp_path / "hard_negatives").mkdir()
    (tmp_path / "hard_negatives" / "en.jsonl").write_text(
        '{"id": "X-1", "lang": "en", "category": "c", "form": "shout", "text": "Kill the process."}\n',
        encoding="utf-8",
    )
    monkeypatch.setattr(safety, "data_path", lambda *parts: tmp_path.joinpath(*parts))
    with pytest.raises(LasaError, match=r"en.jsonl line 1: form 'shout'"):
        safety.hard_negatives(["en"])
