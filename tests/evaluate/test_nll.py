"""nbutils.evaluate.nll: the teacher-forced NLL of the reference equals the embedded model's own loss."""
from __future__ import annotations

import pytest

from nbutils import evaluate as ev


# ---------------------------------------------------------------- with the embedded model
@pytest.fixture(scope="module")
def small_lm(embedded_model_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(embedded_model_path, dtype=torch.float32).eval()
    return model, tok


def test_reference_nll_matches_the_models_own_loss(small_lm):
    import torch

    model, tok = small_lm
    prompts = ["### Instruction:\nName a colour.\n\n### Response:\n", "Q: What is two plus two, exactly?\nA:"]
    refs = ["Blue is a colour.", "Four."]
    nll, ntok = ev.reference_nll(model, tok, prompts, refs, batch_size=2)
    for p, r, got, n in zip(prompts, refs, nll, ntok):
        p_ids = tok(p)["input_ids"]
        a_ids = tok(r, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p_ids + a_ids])
        labels = ids.clone()
        labels[0, :len(p_ids)] = -100
        with torch.inference_mode():
            loss = model(input_ids=ids, labels=labels).loss.item()  # mean over the answer tokens
        assert n == len(a_ids)
        assert got / n == pytest.approx(loss, rel=1e-4, abs=1e-4)
