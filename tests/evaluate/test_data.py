"""nbutils.evaluate.data: references from the original JSON come without its wrapping quotes and trailing
markup."""
from __future__ import annotations

import json

from nbutils import evaluate as ev


# ---------------------------------------------------------------- with the embedded model
def test_references_from_the_original_json_come_without_its_wrapping_quotes_and_trailing_markup(tmp_path, capsys):
    rows = [{"Instruction": f'"What is claim {i}?"', "Input": "", "Output": f'"Claim {i} holds."\n\n**'}
            for i in range(10)]
    (tmp_path / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))
    examples = ev.load_eval_examples(ev.EvaluateConfig.from_params(profile="demo", data_dir=str(tmp_path)))
    assert "cleaned 20 of 30 fields" in capsys.readouterr().out
    numbers = [e["instruction"].split()[-1].rstrip("?") for e in examples]
    assert [e["output"] for e in examples] == [f"Claim {n} holds." for n in numbers]
    assert all(not e["instruction"].startswith('"') for e in examples)
