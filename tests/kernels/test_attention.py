"""nbutils.attention ("sdpa_varlen") on CPU: where the flash varlen kernel cannot run it must still keep packed
samples apart (block-diagonal SDPA), leave padded batches and generation as SDPA does, and be chosen only on a CUDA
GPU without flash-attn."""
from __future__ import annotations

import pytest
import torch

from nbutils import models
from nbutils.kernels import attention
from nbutils.kernels.attention import VARLEN


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def pair():
    """The same random weights under SDPA and under sdpa_varlen."""
    ref = tiny_llama()
    var = tiny_llama()
    assert attention.set_attention(ref, "sdpa") == "sdpa"
    assert attention.set_attention(var, VARLEN) == VARLEN
    return ref, var


def test_block_causal_mask_keeps_each_sample_to_itself():
    m = attention.block_causal_mask(torch.tensor([0, 2, 5]), 5, "cpu")[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [0, 0, 1, 0, 0],
                             [0, 0, 1, 1, 0],
                             [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


def test_cu_seqlens_from_restarting_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert attention.cu_seqlens_from_position_ids(pos).tolist() == [0, 3, 5, 9]


def test_packed_samples_cannot_see_each_other_on_cpu(pair):
    ref, var = pair
    a, b = torch.randint(3, 128, (1, 11)), torch.randint(3, 128, (1, 17))
    packed = torch.cat([a, b], 1)
    pos = torch.cat([torch.arange(11), torch.arange(17)]).unsqueeze(0)
    cu = torch.tensor([0, 11, 28], dtype=torch.int32)
    with torch.no_grad():
        alone = ref(input_ids=b, use_cache=False).logits[0]
        from_pos = var(input_ids=packed, position_ids=pos, use_cache=False).logits[0, 11:]
        from_cu = var(input_ids=packed, position_ids=pos, use_cache=False, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                      max_length_q=17, max_length_k=17).logits[0, 11:]
        joined = var(input_ids=packed, use_cache=False).logits[0, 11:]  # one long sample: b sees a
    torch.testing.assert_close(from_pos, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(from_cu, alone, atol=1e-5, rtol=1e-4)
    assert (joined - alone).abs().max() > 1e-3


def test_padded_batches_and_generation_match_sdpa(pair):
    ref, var = pair
    ids = torch.randint(3, 128, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding in the second row
    with torch.no_grad():
        torch.testing.assert_close(var(input_ids=ids, attention_mask=mask).logits,
                                   ref(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-4)
        kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(var.generate(ids[:1], **kw), ref.generate(ids[:1], **kw))
        assert torch.equal(var.generate(ids, attention_mask=mask, **kw), ref.generate(ids, attention_mask=mask, **kw))


def test_loader_accepts_sdpa_varlen(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "m")
    lm = models.load_causal_lm(str(tmp_path / "m"), device="cpu", attn_implementation=VARLEN)
    assert lm.config._attn_implementation == VARLEN


def fake_gpu(monkeypatch, major: int = 9, flash: bool = False, varlen: bool = True):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (major, 0))
    monkeypatch.setattr(models, "flash_attn_available", lambda: flash)
    monkeypatch.setattr(attention, "kernel_usable", lambda *a: varlen)


def test_varlen_is_chosen_only_on_a_cuda_gpu_without_flash_attn(monkeypatch):
    fake_gpu(monkeypatch)
    assert models.pick_attn_implementation("cuda", allow_varlen=True) == VARLEN
    assert models.pick_attn_implementation("cuda") == "sdpa"  # generation (stage 05) keeps SDPA
    assert models.pick_attn_implementation("cpu", allow_varlen=True) == "sdpa"
    fake_gpu(monkeypatch, flash=True)
    assert models.pick_attn_implementation("cuda", allow_varlen=True) == "flash_attention_2"
    fake_gpu(monkeypatch, varlen=False)  # older torch, or a GPU older than Ampere
    assert models.pick_attn_implementation("cuda", allow_varlen=True) == "sdpa"


def test_kernel_is_not_usable_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert attention.kernel_usable() is False
