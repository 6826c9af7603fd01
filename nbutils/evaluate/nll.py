"""The reference answer's negative log-likelihood under a model (teacher forcing): how likely each model finds
the answer the data says is right, independent of what it would generate."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .answers import encode_prompts, left_pad, length_sorted_batches


def reference_nll(model, tok, prompts: Sequence[str], references: Sequence[str], batch_size: int = 8,
                  max_prompt_tokens: int = 1024, max_reference_tokens: int = 512,
                  desc: str = "reference NLL") -> tuple[np.ndarray, np.ndarray]:
    """Per example: the summed negative log-likelihood (nats) of the reference answer's tokens given the
    prompt, and the number of tokens. Left-padded batches so every answer ends the row: only the last
    `max answer length` positions' logits are computed (`logits_to_keep`), which keeps a 128k vocabulary cheap."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    prompt_ids, _ = encode_prompts(tok, prompts, max_prompt_tokens)
    answer_ids = [tok(r, add_special_tokens=False)["input_ids"][:max_reference_tokens] for r in references]
    seqs = [p + a for p, a in zip(prompt_ids, answer_ids)]
    nll, ntok = np.zeros(len(seqs)), np.array([len(a) for a in answer_ids], dtype=float)
    device = next(model.parameters()).device
    for batch in tqdm(length_sorted_batches([len(s) for s in seqs], batch_size), desc=desc, unit="batch"):
        ids, mask = left_pad([seqs[i] for i in batch], tok.pad_token_id)
        k = max(len(answer_ids[i]) for i in batch)
        if k == 0:
            continue
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           logits_to_keep=k + 1).logits[:, -k - 1:-1].float()
        targets = ids[:, -k:].to(device)
        tok_nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                  reduction="none").view(len(batch), k)
        for r, i in enumerate(batch):
            n = len(answer_ids[i])
            nll[i] = tok_nll[r, k - n:].sum().item() if n else 0.0
    return nll, ntok

