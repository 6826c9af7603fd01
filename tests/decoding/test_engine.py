"""nbutils.decoding.engine: the path chosen (plain on CPU, static when asked), a session running both passes
with cache keys that follow the path, and the batch size fitted to free memory."""
from __future__ import annotations

import pytest

from nbutils.decoding import EngineSettings, GenerationEngine, choose_path, fit_batch_size
from nbutils.decoding.engine import bytes_per_sequence
from tests.support.tiny_llama import GREEDY, IdTokenizer, prompts, tiny_llama, with_lora


def test_engine_chooses_plain_on_cpu_and_static_when_asked():
    model = tiny_llama()
    assert choose_path(EngineSettings(), model, GREEDY)[0] == "plain"
    assert choose_path(EngineSettings(path="static"), model, GREEDY)[0] == "static"
    with pytest.raises(ValueError, match="engine path"):
        EngineSettings(path="fast")


def test_engine_session_runs_both_passes_and_keys_follow_the_path():
    model = with_lora(tiny_llama())
    tok = IdTokenizer()
    batch = prompts(6)
    out = {}
    for path in ("plain", "static"):
        engine = GenerationEngine(model, tok, EngineSettings(path=path, compile=False))
        with engine.session(GREEDY, [len(p) for p in batch], batch_size=4) as s:
            assert s.batch_size == 4 and sorted(i for b in s.batches for i in b) == list(range(6))
            for variant in ("base", "tuned"):
                with s.adapter(variant == "tuned"):
                    rows = {}
                    for b in s.batches:
                        rows.update(zip(b, s.generate([batch[i] for i in b])))
                    out[path, variant] = [rows[i]["ids"] for i in range(6)]
            out[path, "key"] = s.key()
            out[path, "describe"] = s.describe()
    assert out["plain", "base"] == out["static", "base"]
    assert out["plain", "tuned"] == out["static", "tuned"]
    assert out["plain", "key"] == ""                      # the plain path keeps older cache keys
    assert out["static", "key"] and out["static", "key"] != out["plain", "key"]
    assert out["static", "describe"]["adapter"].startswith("merged")
    assert out["plain", "describe"]["path"] == "plain"


def test_batch_size_fits_free_memory():
    model = tiny_llama()
    per_seq = bytes_per_sequence(model.config, prompt_len=100, cache_len=612)
    assert fit_batch_size(64, per_seq, free_bytes=None) == 64
    assert fit_batch_size(64, per_seq, free_bytes=per_seq * 10, fraction=1.0) == 10
    assert fit_batch_size(64, per_seq, free_bytes=1) == 1
