"""Issue 22: does the exported GGUF answer like the merged model? (CPU; `python -m benchmarks.export_roundtrip`)

The embedded SmolLM2-135M-Instruct gets a LoRA adapter on its seven projections (r=16, B drawn at a trained
adapter's scale: the update moves ~5 % of each weight's norm; a random adapter, so no training data is needed),
saved as 04 saves it. `nbutils.export.run` merges it (bf16) and writes the f16 and q8_0 GGUF files; then 32 Alpaca
prompts are answered greedily (32 new tokens) by

    merged/ through transformers (float32 compute)
    the f16 GGUF and the q8_0 GGUF through transformers' GGUF loader (dequantised to float32)

Reported: prompts whose greedy tokens equal the merged model's (f16 must be 32/32), the share of generated
positions holding the same token (free running: after a first difference the continuations part), and the top-1
agreement under teacher forcing (the GGUF model's argmax against the merged model's, both fed the merged model's
greedy continuation, over every position): the token agreement of q8_0. Also the files' sizes and the export's wall time on this machine."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

QUESTIONS = [
    "What problem does the paper address?", "Summarise the proposed method in two sentences.",
    "Which datasets are used in the experiments?", "What is the main contribution of this work?",
    "How does the model handle long sequences?", "What are the limitations the authors mention?",
    "Explain the loss function used for training.", "How is the method evaluated?",
    "What baseline methods are compared?", "What does Table 2 show?", "Why does attention help here?",
    "What is low-rank adaptation?", "Describe the architecture of the encoder.", "What hardware was used?",
    "How many parameters does the model have?", "What is the effect of the learning rate?",
    "What future work is proposed?", "How is the data collected and cleaned?",
    "What metric improves the most?", "Explain the ablation study.", "What is quantisation?",
    "How does the approach scale with data?", "What are the failure cases?", "Define perplexity.",
    "What is the role of the tokenizer?", "How is overfitting prevented?", "What is instruction tuning?",
    "Compare the method with fine-tuning all weights.", "What does the first figure illustrate?",
    "How long does training take?", "What assumptions does the analysis make?",
    "Which results are statistically significant?",
]


def make_adapter(base: Path, out: Path, r: int = 16, rel: float = 0.05, seed: int = 0) -> None:
    """A LoRA adapter whose update B·A has ~`rel` of each weight's norm, saved like 04's (tokenizer, train_log)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base))
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=targets, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in pm.modules():
            if hasattr(mod, "lora_B") and "default" in getattr(mod, "lora_B", {}):
                a, b, w = mod.lora_A["default"].weight, mod.lora_B["default"].weight, mod.base_layer.weight
                b.copy_(torch.randn(b.shape, generator=g))
                delta = (b @ a) * mod.scaling["default"]
                b.mul_(rel * w.norm() / delta.norm())
    pm.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    (out / "train_log.json").write_text(json.dumps({
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "base_model_path": str(base),
        "config": {"template": "alpaca", "lora_r": r, "lora_alpha": 2 * r}}))


def greedy(model, tok, prompts: list[str], new: int):
    """Greedy continuations (new token ids, exactly `new` of them) of left-padded prompts, one batch."""
    import torch

    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    return enc, out[:, enc["input_ids"].shape[1]:]


def forced_argmax(model, enc, ref_new):
    """`model`'s argmax at each position of the reference continuation, fed the reference's tokens (teacher
    forcing). Compared between two models, not with the continuation itself: generate(min_new_tokens=...) masks EOS,
    so where EOS is a model's top token the continuation holds its second choice."""
    import torch

    ids = torch.cat([enc["input_ids"], ref_new], dim=1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(ref_new)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)   # as generate() numbers left-padded rows
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    n = ref_new.shape[1]
    return logits[:, -n - 1:-1].argmax(-1)


def main(argv=None) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nbutils.export import ExportConfig, run
    from nbutils.models import provision_embedded_model
    from nbutils.templates import alpaca_prompt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--new_tokens", type=int, default=32)
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    work = Path(args.work or tempfile.mkdtemp(prefix="export-roundtrip-"))
    base = provision_embedded_model("data")               # the project's data/ (converted once)
    (work / "data" / "models" / "base").mkdir(parents=True, exist_ok=True)
    link = work / "data" / "models" / "base" / base.name
    if not link.exists():
        link.symlink_to(base, target_is_directory=True)
    make_adapter(base, work / "data" / "models" / "adapter")
    t0 = time.time()
    result = run(ExportConfig.from_params(profile="demo", data_dir=str(work / "data"), gguf_types=["f16", "q8_0"]),
                 verbose=False)
    export_s = time.time() - t0
    merged = Path(result.path("merged"))
    tok = AutoTokenizer.from_pretrained(str(merged))
    prompts = [alpaca_prompt(q) for q in (QUESTIONS * 4)[:args.prompts]]
    ref_model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32).eval()
    enc, ref = greedy(ref_model, tok, prompts, args.new_tokens)
    ref_forced = forced_argmax(ref_model, enc, ref)
    del ref_model
    figures = {"prompts": len(prompts), "new_tokens": args.new_tokens, "export_s": round(export_s, 1),
               "files_mb": {a["name"]: round(a["bytes"] / 1e6, 1) for a in result.artifacts}}
    for qtype in ("f16", "q8_0"):
        path = Path(result.path(f"gguf {qtype}"))
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32).eval()
        _, new = greedy(model, tok, prompts, args.new_tokens)
        same = [bool(torch.equal(a, b)) for a, b in zip(new, ref)]
        figures[qtype] = {"identical_prompts": sum(same), "token_agreement_free_running":
                          round(float((new == ref).float().mean()), 4),
                          "token_agreement_teacher_forced":
                              round(float((forced_argmax(model, enc, ref) == ref_forced).float().mean()), 4)}
        del model
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


if __name__ == "__main__":
    main()
