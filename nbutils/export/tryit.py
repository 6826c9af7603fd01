"""05's "try it" cell: the user's prompts to the base and the tuned model side by side, through the decoding engine
(one model in memory: the tuned answers with the adapter on, the base ones with it off), in the training template."""
from __future__ import annotations

from ..templates import build_prompt


def side_by_side(model, tok, prompts: list[str] | str, template: str = "alpaca", max_new_tokens: int = 128,
                 batch_size: int = 8) -> list[dict]:
    """[{prompt, base, tuned}] for each prompt: greedy answers of the PeftModel `model` with the adapter off, on."""
    from ..decoding import (
        EngineSettings,
        GenerationEngine,
        GenParams,
        clean_answer,
        generate_in_order,
    )

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    texts = [build_prompt(p, "", template, tok) for p in prompts]
    ids = [tok(t, add_special_tokens=True)["input_ids"] for t in texts]
    gen = GenParams(max_new_tokens=max_new_tokens)
    engine = GenerationEngine(model, tok, EngineSettings())
    out = [{"prompt": p} for p in prompts]
    for variant, on in (("base", False), ("tuned", True)):
        rows, _ = generate_in_order(engine, ids, gen, batch_size, adapter=on)
        for o, r in zip(out, rows):
            o[variant] = clean_answer(tok.decode(r["ids"], skip_special_tokens=True), gen.stop_markers)
    return out


def side_by_side_markdown(rows: list[dict]) -> str:
    """The answers as Markdown: the prompt, then base and tuned quoted one after the other."""
    def q(s: str) -> str:
        return "\n".join("> " + line for line in (s or "(empty)").splitlines() or ["(empty)"])

    return "\n\n".join(f"**Prompt:** {r['prompt']}\n\n**Base:**\n{q(r['base'])}\n\n**Tuned:**\n{q(r['tuned'])}"
                       for r in rows)
