"""Issue 23: what 05's general-ability check (lm-evaluation-harness) adds to 05's time (target <= 20 %).

    python -m benchmarks.harness_cost                                 # CPU, tiny random model, ~2 minutes
    python -m benchmarks.harness_cost --shape llama3-8b --profile full --examples 128 \\
        --max-new-tokens 512 --typical-new-tokens 160 --tokenizer .devcarry/tok --out $OUT/harness.json   # GPU

One process, one model in memory (random weights of the named shape, built on the device: no hub needed; a LoRA
adapter r=16 on the 7 projections with non-zero B), as 05 holds it. 05 runs on `--examples` held-out rows and,
in the same run, the harness on local tasks in lm-eval's YAML format shaped like the default set (the standard
tasks' data needs the hub): arc_easy-like (200 docs, short question, 4 short choices), hellaswag-like (200 docs,
~60-word context, 4 ~25-word endings) and two MMLU-subject-like tasks (100 and 112 docs, ~70-word question, 4
choices), `--limit` per task like harness_limit. Random weights never emit EOS, so every answer runs to
max_new_tokens: 05's time is measured at the cap (`--max-new-tokens`, the full profile's 512, its worst case)
and again, without the harness, at `--typical-new-tokens` (about a real answer's length). Prints and writes
seconds for 05 without the harness, the harness, the added share for both answer lengths, 05's seconds per
example and the split size at which the harness adds 20 % (its cost is fixed; 05's grows with the split).
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from benchmarks.common import SHAPES, build_random_model
from nbutils.finetune.config import LORA_TARGETS

# (task, docs, context words, words per choice): the default set's shapes
TASKS = [("arc_like", 200, 25, 4), ("hellaswag_like", 200, 60, 25), ("mmlu_ml_like", 112, 70, 8),
         ("mmlu_ccs_like", 100, 70, 8)]
VOCAB = [w for w in ("model training data paper method results attention layer token learning network loss "
                     "gradient optimizer batch sequence memory speed benchmark evaluation accuracy dataset "
                     "architecture transformer language vision graph reward policy sample noise signal").split()]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def write_tasks(folder: Path, scale: float, seed: int = 0) -> list[str]:
    """The four local multiple-choice tasks (JSON + lm-eval YAML); returns their names."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, ctx, cw in TASKS:
        docs = [{"question": words(rng, ctx), "choices": [words(rng, cw) for _ in range(4)], "label": rng.randrange(4)}
                for _ in range(max(2, int(n * scale)))]
        (folder / f"{name}.json").write_text(json.dumps(docs))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / (name + '.json')}\n"
            "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"Question: {{question}}\\nAnswer:\"\n"
            "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n"
            "    aggregation: mean\n    higher_is_better: true\n  - metric: acc_norm\n    aggregation: mean\n"
            "    higher_is_better: true\n")
    return [t[0] for t in TASKS]


def write_rows(data_dir: Path, n_test: int, seed: int = 0) -> None:
    """Original-format rows (instruction ~15 words, input ~80, answer ~100); enough that the test split has n_test."""
    rng = random.Random(seed)
    rows = [{"Instruction": words(rng, 15) + "?", "Input": words(rng, 80), "Output": words(rng, 100)}
            for _ in range(n_test * 6)]
    (data_dir / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))


def build_model(shape: str, tokenizer_dir: str, base_dir: Path, device: str):
    """(PeftModel with a non-zero r=16 LoRA on the 7 projections, tokenizer); the base's config saved in base_dir
    (05 fingerprints it), the weights random on the device."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    shape_cfg = {**SHAPES[shape], "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                 "pad_token_id": tok.pad_token_id}
    base = build_random_model(shape_cfg, device)   # in its dtype, on the device (no fp32 copy of an 8B model)
    base.config.save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, target_modules=list(LORA_TARGETS),
                                            task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    return model.eval(), tok


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    ap.add_argument("--tokenizer", default="data/models/base/SmolLM2-135M-Instruct",
                    help="a tokenizer folder (the embedded model's by default)")
    ap.add_argument("--profile", default="demo", choices=("demo", "full"))
    ap.add_argument("--examples", type=int, default=16, help="05's held-out examples")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="05's answer cap (random weights reach it)")
    ap.add_argument("--typical-new-tokens", type=int, default=0, help="also time 05 at this answer length")
    ap.add_argument("--batch-size", type=int, default=0, help="0: the profile's")
    ap.add_argument("--limit", type=int, default=200, help="harness_limit: docs per task")
    ap.add_argument("--task-scale", type=float, default=0.1, help="docs per task x this (1.0: the default set's)")
    ap.add_argument("--out", default="", help="write the figures here (JSON)")
    args = ap.parse_args(argv)

    import torch

    from nbutils import evaluate as ev
    from nbutils.evaluate import harness as hz
    from nbutils.models import pick_device

    device = pick_device()
    tmp = Path(tempfile.mkdtemp(prefix="harness_cost_"))
    data_dir, base_dir, adapter = tmp / "data", tmp / "data" / "models" / "base" / args.shape, tmp / "adapter"
    data_dir.mkdir(parents=True)
    write_rows(data_dir, args.examples)
    adapter.mkdir()
    (adapter / "train_log.json").write_text(json.dumps({"config": {"template": "alpaca"}}))
    tasks = write_tasks(tmp / "tasks", args.task_scale)
    t = time.time()
    model, tok = build_model(args.shape, args.tokenizer, base_dir, device)
    model.save_pretrained(adapter)   # 05 fingerprints the adapter's files (the model itself is passed in)
    build_s = time.time() - t
    common = dict(profile=args.profile, data_dir=str(data_dir), base_model=str(base_dir), adapter_dir=str(adapter),
                  max_examples=args.examples, n_bootstrap=1000, log_to_tracker=False, resume=False,
                  **({"batch_size": args.batch_size} if args.batch_size else {}))
    out = {"shape": args.shape, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
           "profile": args.profile, "build_model_s": round(build_s, 1), "harness_limit": args.limit}

    def save() -> None:
        print(json.dumps(out, indent=1), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(out, indent=1))

    def time_05(new_tokens: int) -> dict:
        """05 as the stage runs it (answers, NLL, bootstrap, reports), without the harness."""
        cfg = ev.EvaluateConfig.from_params(max_new_tokens=new_tokens, harness_tasks=[], **common)
        r = ev.run(cfg, model=model, tok=tok, verbose=False).report
        out.update(examples=r["n_examples"], batch_size=cfg.batch_size, engine=r["generation"]["engine"])
        return {"max_new_tokens": new_tokens, "seconds_05_without_harness": r["runtime"]["seconds_total"]}

    out["at_cap"] = time_05(args.max_new_tokens)
    save()   # a run cut short still leaves 05's figure
    cfg = ev.EvaluateConfig.from_params(max_new_tokens=args.max_new_tokens, harness_tasks=tasks, harness_limit=args.limit,
                                    harness_include_path=str(tmp / "tasks"), **common)
    t = time.time()
    h = hz.run_harness(cfg, model, tok, "alpaca", "bench", hz.prepare_harness(cfg), verbose=False)
    out["seconds_harness"] = round(time.time() - t, 1)
    out["harness_tasks"] = {k: v["n"] for k, v in h["tasks"].items()}
    if args.typical_new_tokens:
        out["typical"] = time_05(args.typical_new_tokens)
    n = out["examples"]
    for key in ("at_cap", "typical"):
        if key in out:
            t05 = out[key]["seconds_05_without_harness"]
            out[key].update(added_pct=round(100 * out["seconds_harness"] / t05, 1),
                            seconds_05_per_example=round(t05 / n, 3),
                            examples_for_20pct=int(out["seconds_harness"] / 0.2 / (t05 / n)) + 1)
    save()
    return out


if __name__ == "__main__":
    main()
