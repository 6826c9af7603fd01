"""nbutils.evaluate.answers: cache keys follow the engine settings that change answers (the plain path keeps the
keys of caches written before the engine), answers through a session equal the plain path's, and the prediction
cache survives a torn line."""
from __future__ import annotations

import torch

from nbutils import evaluate as ev
from nbutils.decoding import EngineSettings, GenerationEngine, GenParams
from nbutils.evaluate import EvaluateConfig, generate_answers
from nbutils.evaluate.stage import run_key
from tests.support.tiny_llama import IdTokenizer, prompts, tiny_llama, with_lora


class PromptTokenizer(IdTokenizer):
    """IdTokenizer that also encodes: a prompt is a string of characters '!'+id."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[ord(c) - ord("!") for c in t] for t in texts]}


def test_run_key_changes_with_the_engine_key_and_not_for_the_plain_path():
    cfg = EvaluateConfig()
    fp, gen = {"base": "b", "adapter": "a"}, GenParams()
    plain = run_key(cfg, fp, "tuned", "alpaca", gen, False)
    assert run_key(cfg, fp, "tuned", "alpaca", gen, False, "") == plain
    static = run_key(cfg, fp, "tuned", "alpaca", gen, False, "engine=static,compiled=True,merged=True")
    eager = run_key(cfg, fp, "tuned", "alpaca", gen, False, "engine=static,compiled=False,merged=True")
    assert len({plain, static, eager}) == 3


def test_eval_config_engine_is_checked():
    import pytest

    from nbutils.config import ConfigValueError

    assert EvaluateConfig().engine == "auto"
    with pytest.raises(ConfigValueError):
        EvaluateConfig.from_params(profile="demo", engine="fast")


def test_generate_answers_through_a_session_equals_the_plain_path_for_both_passes():
    model = with_lora(tiny_llama())
    tok = PromptTokenizer()
    texts = ["".join(chr(ord("!") + i) for i in p) for p in prompts(5)]
    gen = GenParams(max_new_tokens=10, stop_markers=())
    with model.disable_adapter():
        base_plain = generate_answers(model, tok, texts, gen, batch_size=2)
    tuned_plain = generate_answers(model, tok, texts, gen, batch_size=2)
    engine = GenerationEngine(model, tok, EngineSettings(path="static", compile=False))
    with engine.session(gen, [len(t) for t in texts], 2) as s:
        with s.adapter(False):
            base = generate_answers(model, tok, texts, gen, batch_size=2, session=s)
        with s.adapter(True):
            tuned = generate_answers(model, tok, texts, gen, batch_size=2, session=s)
    assert [a["text"] for a in base] == [a["text"] for a in base_plain]
    assert [a["text"] for a in tuned] == [a["text"] for a in tuned_plain]
    assert [a["text"] for a in base] != [a["text"] for a in tuned]
    assert torch.is_grad_enabled()


# ---------------------------------------------------------------- the prediction cache
def test_prediction_cache_survives_a_torn_line(tmp_path):
    path = tmp_path / "c.jsonl"
    c = ev.PredictionCache(path)
    c.add([{"key": "a", "text": "x"}])
    with open(path, "a") as f:
        f.write('{"key": "b", "te')                      # a killed writer
    c2 = ev.PredictionCache(path)
    assert c2.get("a")["text"] == "x" and c2.get("b") is None
    c2.add([{"key": "b", "text": "y"}])
    assert ev.PredictionCache(path).get("b")["text"] == "y"
