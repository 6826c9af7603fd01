"""nbutils.decoding.static: the static-cache decode loop gives generate()'s tokens (greedy, repetition
penalty, forced length, stop markers), is deterministic and is reused across smaller shapes."""
from __future__ import annotations

import pytest

from nbutils.decoding import EngineSettings, GenerationEngine, GenParams
from nbutils.decoding.plain import generate_plain
from nbutils.decoding.static import StaticDecoder, StaticShape
from tests.support.tiny_llama import EOS, GREEDY, PAD, IdTokenizer, prompts, static_tokens, tiny_llama


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
