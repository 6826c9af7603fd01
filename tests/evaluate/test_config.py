"""nbutils.evaluate.config: field defaults are the full recipe, demo overrides them; the command line types
its values and refuses a bad one."""
from __future__ import annotations

import json

from nbutils import evaluate as ev


# ---------------------------------------------------------------- configuration
def test_eval_config_field_defaults_are_the_full_recipe_and_demo_overrides_them():
    full, demo = ev.EvaluateConfig(), ev.EvaluateConfig.from_params(profile="demo")
    assert full.profile == "full" and full.base_model == "meta-llama/Meta-Llama-3-8B"
    assert (full.max_new_tokens, full.batch_size, full.n_bootstrap, full.max_prompt_tokens) == (512, 64, 10000, 2048)
    assert ev.EvaluateConfig.from_params(profile="full").to_dict() == full.to_dict()
    assert demo.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (demo.max_examples, demo.max_new_tokens, demo.batch_size, demo.n_bootstrap, demo.max_prompt_tokens) == (
        12, 40, 12, 1000, 1024)


def test_print_config_parses_values_by_type_and_refuses_a_bad_one(capsys):
    from nbutils.config import stage_main

    assert stage_main(ev.EvaluateConfig, ev.run, ["--print-config", "--do_sample", "True", "--max_new_tokens", "7",
                                              "--load_in_4bit", "none"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["do_sample"], cfg["max_new_tokens"], cfg["load_in_4bit"], cfg["profile"]) == (True, 7, None, "demo")
    assert stage_main(ev.EvaluateConfig, ev.run, ["--print-config", "--judge_backend", "grok"]) == 2
    assert "judge_backend='grok'" in capsys.readouterr().err
