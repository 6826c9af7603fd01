"""nbutils.finetune.train: out of memory names the knobs, the SFT config carries the resolved knobs, the
4-bit path keeps non-quantised weights in bf16 unless asked."""
from __future__ import annotations

import pytest
import torch

from nbutils.finetune import FinetuneConfig, data, runtime
from nbutils.finetune import train as tr
from nbutils.finetune.config import FUSE_LORA_MIN_HIDDEN
from nbutils.kernels.fused_lora import fused_layer_count
from nbutils.models import load_tokenizer
from tests.support.finetune import full_cfg


# ------------------------------------------------------------------------------------------------ fast
def test_out_of_memory_names_the_knobs(tmp_path):
    cfg = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), load_in_4bit=False,
                                     gradient_checkpointing=False)
    rt = runtime.Runtime(device="cuda", dtype="bfloat16", attn_implementation="sdpa", load_in_4bit=False,
                    optim="paged_adamw_8bit", bf16=True, fp16=False, packing=True, padding_free=True, world_size=1)

    class OOMTrainer:
        def train(self, resume_from_checkpoint=None):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(tr.FinetuneOOMError) as e:
        tr.run_training(OOMTrainer(), cfg, rt, None)
    msg = str(e.value)
    for knob in ("per_device_train_batch_size=4 -> 2", "max_length=2048 -> 1024", "gradient_checkpointing=True",
                 "load_in_4bit=True"):
        assert knob in msg


def test_sft_config_carries_the_resolved_knobs(tmp_path):
    cfg = full_cfg(tmp_path)
    rt = runtime.resolve_runtime(cfg, device="cpu")
    args = tr.build_sft_config(cfg, rt, has_eval=False)
    assert (args.gradient_checkpointing, args.use_liger_kernel, args.optim) == (True, False, "adamw_torch")


def tiny_llama(dtype=torch.bfloat16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).to(dtype)


def test_4bit_path_keeps_non_quantised_weights_in_bf16_unless_asked(tmp_path):
    """The loader's preparation of a 4-bit base, run on a bf16 CPU model: frozen, checkpointing with input grads,
    no fp32 copy; upcast_non_quantized=True is peft's prepare_model_for_kbit_training (fp32)."""
    import dataclasses

    cfg = full_cfg(tmp_path)
    base = runtime.resolve_runtime(cfg, device="cpu")
    lean = dataclasses.replace(base, load_in_4bit=True, gradient_checkpointing=True, upcast_non_quantized=False)
    model = tr.prepare_model_for_training(tiny_llama(), cfg, lean)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())
    assert model.is_gradient_checkpointing and model.config.use_cache is False
    emb = model.get_input_embeddings()(torch.tensor([[1, 2, 3]]))
    assert emb.requires_grad  # the first layers' LoRA weights get gradients through checkpointed blocks
    # the same model prepared again without checkpointing (the benchmark's shared base): hooks and checkpointing off
    fast = dataclasses.replace(lean, gradient_checkpointing=False)
    model = tr.prepare_model_for_training(model, cfg, fast)
    assert not model.is_gradient_checkpointing
    assert not model.get_input_embeddings()(torch.tensor([[1, 2, 3]])).requires_grad
    upcast = dataclasses.replace(lean, upcast_non_quantized=True)
    model = tr.prepare_model_for_training(tiny_llama(), cfg, upcast)
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model.is_gradient_checkpointing


@pytest.mark.parametrize("threshold, fused", [(FUSE_LORA_MIN_HIDDEN, False), (64, True)])
def test_build_trainer_fuses_by_the_loaded_models_width(data_dir, monkeypatch, threshold, fused):
    """The embedded SmolLM2-135M (hidden 576) keeps PEFT's layers under the default threshold; a threshold under its
    width gives every adapted projection the fused forward. The decision and its reason land in the runtime."""
    monkeypatch.setattr(runtime, "FUSE_LORA_MIN_HIDDEN", threshold)
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(data_dir), lora_r=4, lora_alpha=8, max_length=64,
                                     max_steps=1, lora_dropout=0.0)
    rt = runtime.resolve_runtime(cfg, device="cpu")
    tok = load_tokenizer(cfg.base_model, cfg.data_dir)
    data.choose_pad_token(tok)
    train, _, _ = data.load_training_data(cfg, tok, verbose=False)
    trainer = tr.build_trainer(cfg, rt, tr.load_model_for_training(cfg, rt), tok, train, None)
    n_layers = trainer.model.config.num_hidden_layers * len(cfg.lora_target_modules)
    assert fused_layer_count(trainer.model) == (n_layers if fused else 0)
    assert rt.fuse_lora is fused and f"hidden_size 576 {'>=' if fused else '<'} {threshold}" in rt.fuse_reason
