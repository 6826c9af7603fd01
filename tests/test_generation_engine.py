"""The generation engine on CPU: the static decode loop gives generate's greedy tokens, merging the adapter gives
the unmerged answers, the PeftModel comes back unchanged, the engine picks the plain path on CPU, batches fit the
memory, cache keys follow the settings that change answers."""
from __future__ import annotations

import pytest
import torch

from nbutils.decoding import EngineSettings, GenerationEngine, GenParams, choose_path, fit_batch_size
from nbutils.decoding.engine import bytes_per_sequence
from nbutils.decoding.lora import DecodeWeights
from nbutils.decoding.plain import generate_plain
from nbutils.decoding.static import StaticDecoder, StaticShape

VOCAB, PAD, EOS = 96, 0, 1


class IdTokenizer:
    """Enough of a tokenizer for the engine: ids are characters 'a'+id; 0 pads, 1 ends."""

    pad_token_id, eos_token_id = PAD, EOS

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("!") + i) for i in ids if not (skip_special_tokens and i in (PAD, EOS)))


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=PAD, eos_token_id=EOS, bos_token_id=2)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.pad_token_id = PAD
    return model


def with_lora(model, r: int = 8, seed: int = 1):
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pm.eval()


def prompts(n: int = 5, seed: int = 3) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (int(k),), generator=g).tolist()
            for k in torch.randint(3, 12, (n,), generator=g)]


GREEDY = GenParams(max_new_tokens=12, stop_markers=())


def static_tokens(model, batch, gen=GREEDY, batch_size=8, check_every=4):
    dec = StaticDecoder(model, StaticShape(batch_size, 64), compile=False, check_every=check_every)
    return dec.generate(batch, PAD, [PAD, EOS], gen)


def test_static_loop_gives_generates_greedy_tokens():
    model = tiny_llama()
    batch = prompts()
    plain = generate_plain(model, batch, PAD, [PAD, EOS], GREEDY)
    static = static_tokens(model, batch)
    from nbutils.decoding import rows_from_new_tokens

    assert [r["ids"] for r in rows_from_new_tokens(static, [PAD, EOS])] == [r["ids"] for r in plain]


def test_static_loop_repetition_penalty_and_forced_length_match_generate():
    model = tiny_llama(seed=4)
    batch = prompts(4, seed=5)
    gen = GenParams(max_new_tokens=10, min_new_tokens=10, repetition_penalty=1.3, stop_markers=())
    plain = generate_plain(model, batch, PAD, [PAD, EOS], gen)
    static = static_tokens(model, batch, gen)
    assert [len(r) for r in static] == [10] * 4
    assert [r[:len(p["ids"])] for r, p in zip(static, plain)] == [p["ids"] for p in plain]


def test_two_static_runs_are_identical_and_short_batches_are_filled():
    model = tiny_llama()
    batch = prompts(3)
    dec = StaticDecoder(model, StaticShape(8, 64), compile=False)
    first = dec.generate(batch, PAD, [PAD, EOS], GREEDY)
    second = dec.generate(batch, PAD, [PAD, EOS], GREEDY)
    assert first == second and len(first) == 3
    with pytest.raises(ValueError, match="static batch size"):
        dec.generate(prompts(9), PAD, [PAD, EOS], GREEDY)


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


def test_static_loop_stops_at_a_stop_marker_like_generates_stop_strings():
    model = tiny_llama()
    tok = IdTokenizer()
    batch = prompts(4)
    free = static_tokens(model, batch)
    text = tok.decode(free[0])
    marker = text[3:5]                        # two characters the first row writes at new tokens 4-5
    gen = GenParams(max_new_tokens=12, stop_markers=(marker,))
    dec = StaticDecoder(model, StaticShape(8, 64), compile=False, check_every=4)
    cut = dec.generate(batch, PAD, [PAD, EOS], gen, tokenizer=tok)
    first = cut[0]
    k = tok.decode(free[0]).find(marker) + len(marker)
    assert first[:k] == free[0][:k] and all(t == PAD for t in first[k:])


def test_batch_size_fits_free_memory():
    model = tiny_llama()
    per_seq = bytes_per_sequence(model.config, prompt_len=100, cache_len=612)
    assert fit_batch_size(64, per_seq, free_bytes=None) == 64
    assert fit_batch_size(64, per_seq, free_bytes=per_seq * 10, fraction=1.0) == 10
    assert fit_batch_size(64, per_seq, free_bytes=1) == 1


def test_gqa_decode_attention_equals_sdpa_with_repeated_heads():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from nbutils.decoding.gqa import applies, gqa_decode_attention

    g = torch.Generator().manual_seed(0)
    B, H, Hkv, L, D = 3, 8, 2, 20, 16
    q = torch.randn(B, H, 1, D, generator=g)
    k, v = torch.randn(B, Hkv, L, D, generator=g), torch.randn(B, Hkv, L, D, generator=g)
    mask = torch.rand(B, 1, 1, L, generator=g) > 0.3
    mask[:, :, :, 0] = True

    class Module:
        num_key_value_groups, is_causal, training = H // Hkv, True, False

    ours, _ = gqa_decode_attention(Module(), q, k, v, mask, scaling=D ** -0.5)
    ref, _ = sdpa_attention_forward(Module(), q, k, v, mask, scaling=D ** -0.5)
    assert ours.shape == ref.shape == (B, 1, H, D)
    assert torch.allclose(ours, ref, atol=1e-5)
    model = tiny_llama()
    assert applies(model.config) == (model.config._attn_implementation == "sdpa")


def test_static_decoder_is_reused_across_calls_of_smaller_shape():
    model = tiny_llama()
    tok = IdTokenizer()
    engine = GenerationEngine(model, tok, EngineSettings(path="static", compile=False))
    from nbutils.decoding import generate_in_order

    long_rows, _ = generate_in_order(engine, prompts(6), GREEDY, batch_size=4)
    short = [p[:3] for p in prompts(2)]
    short_rows, info = generate_in_order(engine, short, GREEDY, batch_size=4)
    assert engine.compilations == 1 and info["batch_size"] == 4
    alone = generate_plain(model, short, PAD, [PAD, EOS], GREEDY)
    assert [r["ids"] for r in short_rows] == [r["ids"] for r in alone]
    generate_in_order(engine, prompts(2), GenParams(max_new_tokens=300, stop_markers=()), batch_size=4)
    assert engine.compilations == 2          # a longer pass needs a larger cache: built once more
