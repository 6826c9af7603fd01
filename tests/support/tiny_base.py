"""A two-layer random Llama saved as a model folder with the embedded model's tokenizer (chat template included):
a base that 04 and 05 load by path like any other and that runs in seconds on the 2-core test machine."""
from __future__ import annotations

from pathlib import Path


def tiny_base(folder: Path, tokenizer_dir: Path, max_positions: int = 1024) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
