"""Real-model checks on the embedded default model (``make test-slow``; needs lasa[default-model])."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lm():
    from lasa import default_model
    from lasa.errors import LasaError
    from lasa.models import load_model

    try:
        default_model.prepare("default")
    except LasaError as err:  # parts not installed: say how to get them
        pytest.skip(str(err))
    return load_model("default", device="cpu")


def test_default_model_is_the_expected_checkpoint(lm):
    assert type(lm.model).__name__ == "Qwen2ForCausalLM"
    assert (lm.num_layers, lm.hidden_size) == (24, 896)
    assert lm.tokenizer.chat_template and lm.tokenizer.eos_token == "<|im_end|>"


def test_real_model_states_are_padding_invariant(lm):
    from lasa.data import load_multijail
    from lasa.hidden import extract_states

    mj = load_multijail()
    texts = [mj.texts[lang][7] for lang in mj.languages]
    one = extract_states(lm, texts, batch_size=1, progress=False)
    many = extract_states(lm, texts, batch_size=10, padding_side="left", progress=False)
    cos = torch.nn.functional.cosine_similarity(one, many, dim=-1)
    assert float(cos.min()) > 0.9999


def test_locate_on_the_real_model(lm, tmp_path):
    from lasa.config import LocateConfig
    from lasa.locate import run_locate

    cfg = LocateConfig(model="default", run_dir=str(tmp_path), n_queries=20, n_bootstrap=100, plots=False)
    bn = run_locate(cfg, lm=lm)
    rows = json.loads((tmp_path / "locate" / "layer_scores.json").read_text())
    assert len(rows) == 24 and 1 <= bn.layer <= 24
    # the deep layers of this model cluster by language (the U-shape's right arm)
    assert rows[-1]["silhouette_language"] > rows[bn.layer - 1]["silhouette_language"]
