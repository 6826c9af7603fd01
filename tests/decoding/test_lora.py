"""nbutils.decoding.lora: answers with the adapter merged equal the unmerged model's, and the model is
restored afterwards."""
from __future__ import annotations

import torch

from nbutils.decoding.lora import DecodeWeights
from nbutils.decoding.plain import generate_plain
from tests.support.tiny_llama import EOS, GREEDY, PAD, prompts, static_tokens, tiny_llama, with_lora


def test_merged_adapter_answers_equal_unmerged_and_model_is_restored():
    model = with_lora(tiny_llama())
    batch = prompts()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unmerged_tuned = generate_plain(model, batch, PAD, [PAD, EOS], GREEDY)
    with model.disable_adapter():
        unmerged_base = generate_plain(model, batch, PAD, [PAD, EOS], GREEDY)
    assert [r["ids"] for r in unmerged_tuned] != [r["ids"] for r in unmerged_base]   # the adapter matters
    x = torch.tensor([batch[0]])
    with torch.inference_mode():
        ref_logits = model(input_ids=x).logits
    with model.disable_adapter(), DecodeWeights(model) as off:
        assert not off.merged                    # starts as the PeftModel stands: adapter off here
    with DecodeWeights(model) as w:
        assert w.n_layers == 14 and w.merged     # and on here
        w.use_adapter(True)
        with torch.inference_mode():
            merged_logits = model.get_base_model()(input_ids=x).logits
        tuned = static_tokens(model.get_base_model(), batch)
        w.use_adapter(False)
        base = static_tokens(model.get_base_model(), batch)
    assert torch.allclose(merged_logits, ref_logits, atol=1e-4, rtol=1e-4)
    from nbutils.decoding import rows_from_new_tokens

    assert [r["ids"] for r in rows_from_new_tokens(tuned, [PAD, EOS])] == [r["ids"] for r in unmerged_tuned]
    assert [r["ids"] for r in rows_from_new_tokens(base, [PAD, EOS])] == [r["ids"] for r in unmerged_base]
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)   # originals restored bit for bit
