"""Issue 14 on real weights (the embedded SmolLM2-135M-Instruct), run by bench_generation_engine.py --suites real:

  eval   05's generation, base and tuned (a seeded random r=64 LoRA adapter attached): the current path (HF
         generate, PEFT unmerged, stop strings) vs the engine (auto: static + compile + merged on a GPU), same
         Alpaca prompts from the demo corpus, greedy, max_new_tokens 512 - tokens/s and every answer (the share
         identical token for token and ROUGE-L are computed from the JSON on the CPU side)
  local  03's local backend: LocalBackend(engine="plain") (HF generate, its path before the engine) vs
         LocalBackend(engine="auto"), same pages (demo prompt, reply prefix, repetition penalty 1.15, greedy) -
         pages/s and the replies
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch

from nbutils.decoding import EngineSettings, GenerationEngine, GenParams, clean_answer, generate_plain

PAPERS = Path(__file__).resolve().parent.parent / "nbutils" / "demo_site" / "papers"
INSTRUCTIONS = ("Summarize the following passage in one or two sentences.",
                "What is the main point of this passage?",
                "Explain the following text to a student.",
                "Write one question a reader could ask about this passage, then answer it.")


def windows(chars: int = 500, step: int = 250) -> list[str]:
    """Overlapping windows of the demo papers' bodies (whitespace collapsed), in a fixed order."""
    out = []
    for f in sorted(PAPERS.glob("*.txt")):
        body = " ".join(f.read_text(encoding="utf-8").split("## ", 1)[-1].split())
        out += [body[k:k + chars] for k in range(0, max(1, len(body) - chars), step)]
    return out


def first_sentence(text: str) -> str:
    m = re.search(r"(.+?[.!?])(\s|$)", text)
    return (m.group(1) if m else text).strip()


def answers(tok, rows, markers) -> list[dict]:
    out = []
    for r in rows:
        raw = tok.decode(r["ids"], skip_special_tokens=True)
        text = clean_answer(raw, markers)
        out.append({"text": text, "ids_up_to_marker": ids_before_marker(tok, r["ids"], markers),
                    "n_new_tokens": r["n_new_tokens"]})
    return out


def ids_before_marker(tok, ids, markers) -> list[int]:
    """The answer's token ids up to the first stop marker (what both paths must agree on)."""
    for k in range(1, len(ids) + 1):
        if any(m in tok.decode(ids[:k], skip_special_tokens=True) for m in markers):
            return list(ids[:k])
    return list(ids)


def run_eval(model, tok, n: int, new: int, batch: int) -> dict:
    from nbutils.templates import ALPACA, build_prompt

    wins = windows()[:n]
    prompts = [build_prompt(INSTRUCTIONS[i % len(INSTRUCTIONS)], w, ALPACA, tok) for i, w in enumerate(wins)]
    ids = [tok(p)["input_ids"] for p in prompts]
    refs = [first_sentence(w) for w in wins]
    gen = GenParams(max_new_tokens=new)
    from nbutils.decoding import eos_ids

    pad, stop = tok.pad_token_id, eos_ids(tok, model)   # 05's stop ids (the generation config's eos included)
    res: dict = {"n": len(prompts), "max_new_tokens": new, "batch": batch, "references": refs}
    engine = GenerationEngine(model, tok, EngineSettings())
    from nbutils.decoding.params import length_sorted_batches

    order = length_sorted_batches([len(x) for x in ids], batch)
    for variant in ("base", "tuned"):
        # current path
        rows: list = [None] * len(ids)
        ctx = model.disable_adapter() if variant == "base" else torch.inference_mode()
        with ctx:
            generate_plain(model, [ids[0]], pad, stop, GenParams(max_new_tokens=4), tokenizer=tok)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for b in order:
                for i, r in zip(b, generate_plain(model, [ids[i] for i in b], pad, stop, gen, tokenizer=tok)):
                    rows[i] = r
            torch.cuda.synchronize()
        cur_s = time.perf_counter() - t0
        res[f"current_{variant}"] = {"seconds": cur_s, "tokens": sum(r["n_new_tokens"] for r in rows),
                                     "answers": answers(tok, rows, gen.stop_markers)}
        # engine: first pass compiles (timed separately), second pass is timed
        with engine.session(gen, [len(x) for x in ids], batch) as s:
            with s.adapter(variant == "tuned"):
                t0 = time.perf_counter()
                s.generate([ids[i] for i in s.batches[-1]])
                torch.cuda.synchronize()
                warm = time.perf_counter() - t0
                erows: list = [None] * len(ids)
                t0 = time.perf_counter()
                for b in s.batches:
                    for i, r in zip(b, s.generate([ids[i] for i in b])):
                        erows[i] = r
                torch.cuda.synchronize()
                eng_s = time.perf_counter() - t0
                res[f"engine_{variant}"] = {"seconds": eng_s, "warmup_s": round(warm, 1),
                                            "tokens": sum(r["n_new_tokens"] for r in erows),
                                            "answers": answers(tok, erows, gen.stop_markers),
                                            "engine": s.describe(), "key": s.key()}
        for k in (f"current_{variant}", f"engine_{variant}"):
            res[k]["tokens_per_s"] = res[k]["tokens"] / res[k]["seconds"]
        same = sum(a["ids_up_to_marker"] == b["ids_up_to_marker"]
                   for a, b in zip(res[f"current_{variant}"]["answers"], res[f"engine_{variant}"]["answers"]))
        res[f"identical_{variant}"] = same / len(ids)
        print(f"[real {variant}] current {res[f'current_{variant}']['tokens_per_s']:.0f} tok/s, engine "
              f"{res[f'engine_{variant}']['tokens_per_s']:.0f} tok/s, identical {same}/{len(ids)}", flush=True)
    return res


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_pages(backend, convs, batch: int, max_tokens: int) -> tuple[list, float]:
    """Replies of `backend` to every conversation, `batch` per call as 03 sends them, and the wall seconds."""
    sync()
    t0 = time.perf_counter()
    out = []
    for k in range(0, len(convs), batch):
        out += backend.complete_batch(convs[k:k + batch], max_tokens=max_tokens)
    sync()
    return out, time.perf_counter() - t0


def run_local(folder: str, n: int, batch: int, max_tokens: int = 256) -> dict:
    """03's local backend before (engine="plain": HF generate, what LocalBackend ran before the engine) and after
    (engine="auto": the static compiled path on a GPU), same pages, 03's batching. The engine's first pass
    (compiling its step) is timed apart; its second pass is the steady state."""
    from nbutils.generate import BUILTIN_PROMPTS
    from nbutils.llm import LocalBackend

    tpl = BUILTIN_PROMPTS["demo"]
    convs = [tpl.messages(w) for w in windows(600, 300)[:n]]
    opts = dict(batch_size=batch, reply_prefix=tpl.reply_prefix, repetition_penalty=1.15)
    plain = LocalBackend(folder, engine="plain", **opts)
    plain.complete_batch(convs[:2], max_tokens=4)     # warm-up
    before, before_s = timed_pages(plain, convs, batch, max_tokens)
    del plain
    auto = LocalBackend(folder, engine="auto", **opts)
    _, first_s = timed_pages(auto, convs, batch, max_tokens)
    after, after_s = timed_pages(auto, convs, batch, max_tokens)
    same = sum(a.text == b.text for a, b in zip(after, before))
    out = {"pages": len(convs), "batch": batch, "max_tokens": max_tokens, "before_s": before_s,
           "after_first_pass_s": first_s, "after_s": after_s, "before_pages_per_s": len(convs) / before_s,
           "after_pages_per_s": len(convs) / after_s, "engine_compilations": auto.engine.compilations,
           "identical_replies": same / len(convs),
           "before_tokens": sum(c.completion_tokens for c in before),
           "after_tokens": sum(c.completion_tokens for c in after),
           "before_texts": [c.text for c in before], "after_texts": [c.text for c in after]}
    print(f"[real local] before {out['before_pages_per_s']:.2f} pages/s, after {out['after_pages_per_s']:.2f} pages/s "
          f"(first pass {first_s:.1f} s), identical {same}/{len(convs)}", flush=True)
    return out


def run_real_suite(a, bw: float) -> dict:
    from bench_generation_engine import attach_lora
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = a.model
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map={"": 0},
                                                attn_implementation="sdpa").eval()
    model = attach_lora(base, 64, a.seed, scale=0.01)
    res = {"model": str(folder), "eval": run_eval(model, tok, a.real_n, a.real_new, a.batch)}
    del model, base
    torch.cuda.empty_cache()
    try:
        res["local"] = run_local(folder, a.real_n, a.batch)
    except Exception as e:  # noqa: BLE001 - keep the eval figures
        import traceback

        traceback.print_exc()
        res["local"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return res


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first token where two answers differ (None: identical)."""
    if a == b:
        return None
    return next((j for j, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))


def summarize(raw_json: str, out_json: str, stop_ids: tuple[int, ...] = (2,)) -> dict:
    """From the GPU call's JSON: per variant the share identical token for token, mean ROUGE-L (against the first
    sentence of each passage, the same scorer as 05: rouge_score with stemming) of both paths and its difference,
    ROUGE-L between the paired answers, where answers first diverge; written compact (texts, no token ids).
    Answers are compared up to 05's stop ids (`stop_ids`: SmolLM2's generation-config eos, <|im_end|> = 2): the run
    of 2026-12-01 gave the current path only the tokenizer's eos/pad, so it wrote on past <|im_end|> where 05 stops."""
    import json

    import numpy as np
    from rouge_score import rouge_scorer

    from nbutils.decoding import cut_at_stop

    full = json.loads(Path(raw_json).read_text())
    real = full["real"]
    e = real["eval"]
    sc = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out: dict = {"meta": full["meta"], "n": e["n"], "max_new_tokens": e["max_new_tokens"], "batch": e["batch"]}
    for v in ("base", "tuned"):
        cur, eng = e[f"current_{v}"], e[f"engine_{v}"]
        rc = [sc.score(r, a["text"])["rougeL"].fmeasure for r, a in zip(e["references"], cur["answers"])]
        rg = [sc.score(r, a["text"])["rougeL"].fmeasure for r, a in zip(e["references"], eng["answers"])]
        pair = [sc.score(a["text"], b["text"])["rougeL"].fmeasure for a, b in zip(cur["answers"], eng["answers"])]
        div = [first_divergence(cut_at_stop(a["ids_up_to_marker"], stop_ids)[0],
                                cut_at_stop(b["ids_up_to_marker"], stop_ids)[0])
               for a, b in zip(cur["answers"], eng["answers"])]
        diverged = [d for d in div if d is not None]
        out[v] = {"current_tokens_per_s": cur["tokens_per_s"], "engine_tokens_per_s": eng["tokens_per_s"],
                  "speedup": eng["tokens_per_s"] / cur["tokens_per_s"], "engine": eng["engine"],
                  "engine_key": eng["key"], "identical_token_for_token": float(np.mean([d is None for d in div])),
                  "identical_text": float(np.mean([a["text"] == b["text"] for a, b in zip(cur["answers"], eng["answers"])])),
                  "rougeL_current": float(np.mean(rc)), "rougeL_engine": float(np.mean(rg)),
                  "rougeL_difference": float(np.mean(rg) - np.mean(rc)),
                  "rougeL_between_paired_answers": float(np.mean(pair)),
                  "first_divergence_token_median": float(np.median(diverged)) if diverged else None,
                  "first_divergence_token_quartiles": [float(q) for q in np.percentile(diverged, [25, 75])]
                  if diverged else None,
                  "rows": [{"current": a["text"], "engine": b["text"], "first_divergence": d}
                           for a, b, d in zip(cur["answers"], eng["answers"], div)]}
    loc = real.get("local", {})
    out["local"] = {k: v for k, v in loc.items() if "texts" not in k}
    Path(out_json).write_text(json.dumps(out, indent=1))
    return out


def fp32_check(raw_json: str, folder: str, stop_ids: tuple[int, ...] = (2,)) -> dict:
    """Where the base answers of the two paths first differ (no adapter: kernels alone), the token an fp32 forward
    of the real model on the CPU prefers, and the fp32 logit margin between the two tokens (near 0: a tie that
    bf16 rounding decides)."""
    import json

    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nbutils.decoding import cut_at_stop
    from nbutils.templates import ALPACA, build_prompt

    e = json.loads(Path(raw_json).read_text())["real"]["eval"]
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompts = [build_prompt(INSTRUCTIONS[i % len(INSTRUCTIONS)], w, ALPACA, tok) for i, w in enumerate(windows()[:e["n"]])]
    rows = []
    for i, (a, b) in enumerate(zip(e["current_base"]["answers"], e["engine_base"]["answers"])):
        x, y = cut_at_stop(a["ids_up_to_marker"], stop_ids)[0], cut_at_stop(b["ids_up_to_marker"], stop_ids)[0]
        k = first_divergence(x, y)
        if k is None or k >= min(len(x), len(y)):
            continue
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([tok(prompts[i])["input_ids"] + x[:k]])).logits[0, -1]
        rows.append({"row": i, "token": k, "fp32_pick": "current" if int(logits.argmax()) == x[k] else
                     "engine" if int(logits.argmax()) == y[k] else "neither",
                     "margin": float(logits[x[k]] - logits[y[k]])})
    picks = [r["fp32_pick"] for r in rows]
    return {"diverging": len(rows), "fp32_picks_current": picks.count("current"),
            "fp32_picks_engine": picks.count("engine"), "fp32_picks_neither": picks.count("neither"),
            "abs_margin_median": float(np.median([abs(r["margin"]) for r in rows])) if rows else None,
            "abs_margin_max": float(max(abs(r["margin"]) for r in rows)) if rows else None, "rows": rows}


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 5 and sys.argv[1] == "fp32check":   # RAW.json MODEL_FOLDER OUT.json (adds to OUT.json)
        import json

        check = fp32_check(sys.argv[2], sys.argv[3])
        out = json.loads(Path(sys.argv[4]).read_text())
        out["fp32_check_base"] = check
        Path(sys.argv[4]).write_text(json.dumps(out, indent=1))
        print({k: v for k, v in check.items() if k != "rows"})
    elif len(sys.argv) == 4 and sys.argv[1] == "summarize":
        s = summarize(sys.argv[2], sys.argv[3])
        for v in ("base", "tuned"):
            print(v, {k: x for k, x in s[v].items() if k != "rows"})
        print("local", s["local"])
    else:
        print("usage: python benchmarks/bench_generation_real.py summarize RAW.json OUT.json | fp32check RAW.json "
              "MODEL_FOLDER OUT.json (RAW.json: the GPU run, bench_generation_engine.py --suites real)")
