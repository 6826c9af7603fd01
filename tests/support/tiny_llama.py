"""A tiny random Llama (2 layers, GQA), an id tokenizer, a LoRA on it and random prompts: models for the
decoding engine's tests that need no download."""
from __future__ import annotations

import torch

from nbutils.decoding import GenParams
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
