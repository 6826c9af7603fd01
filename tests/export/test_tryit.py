"""05's "try it" cell: one prompt to the base (adapter off) and the tuned model (adapter on), side by side, through
the decoding engine, in the training template."""
from __future__ import annotations

import torch

from nbutils.export import side_by_side, side_by_side_markdown
from nbutils.templates import alpaca_prompt


def test_side_by_side_gives_the_base_and_the_tuned_models_own_greedy_answers(data_dir, tiny_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_base))
    tok.padding_side = "left"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_base)),
                                      str(data_dir / "models" / "adapter")).eval()
    rows = side_by_side(model, tok, "What does the paper measure?", "alpaca", max_new_tokens=6)
    assert len(rows) == 1 and rows[0]["prompt"] == "What does the paper measure?"

    ids = torch.tensor([tok(alpaca_prompt("What does the paper measure?"))["input_ids"]])

    def greedy(m):
        with torch.no_grad():
            out = m.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    with model.disable_adapter():
        base = greedy(model)
    assert rows[0]["base"] == base.split("###")[0].strip()
    assert rows[0]["tuned"] == greedy(model).split("###")[0].strip()
    assert rows[0]["base"] != rows[0]["tuned"]
    md = side_by_side_markdown(rows)
    assert "**Base:**" in md and "**Tuned:**" in md
