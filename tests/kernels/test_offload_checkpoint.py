"""nbutils.kernels.offload_checkpoint: the same outputs and gradients as no checkpointing and as torch's checkpointing,
dropout masks replayed, on a transformers model through its own checkpointing hook."""
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from nbutils.kernels.fused_lora import fuse_lora_layers  # noqa: E402
from nbutils.kernels.offload_checkpoint import (  # noqa: E402
    offloaded_checkpoint,
    offloaded_checkpointing_callback,
    offloaded_layer_count,
    use_offloaded_checkpointing,
)


def tiny_lora_llama(dropout: float, layers: int = 3):
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, task_type="CAUSAL_LM",
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(model, lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.2)
    model.train()
    return model


def loss_and_grads(model, ids, seed=7):
    model.zero_grad()
    torch.manual_seed(seed)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def checkpointed(model, offload: bool):
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    if offload:
        assert use_offloaded_checkpointing(model) == model.config.num_hidden_layers
        assert offloaded_layer_count(model) == model.config.num_hidden_layers
    return model


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_offloaded_checkpointing_equals_plain_training(dropout, fused):
    """Dropout masks (PyTorch's, CPU generator) replayed in the recompute: every LoRA gradient as without
    checkpointing, with PEFT's layers and with the fused ones."""
    ids = torch.randint(0, 97, (2, 12))
    model = tiny_lora_llama(dropout)
    if fused:
        fuse_lora_layers(model, triton_dropout=False)
    ref_loss, ref = loss_and_grads(model, ids)
    loss, grads = loss_and_grads(checkpointed(model, offload=True), ids)
    torch.testing.assert_close(loss, ref_loss)
    assert grads.keys() == ref.keys() and len(grads) == 3 * 7 * 2
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-5, atol=1e-6)


def test_same_as_torch_checkpointing_and_leaves_the_random_stream_alone():
    ids = torch.randint(0, 97, (2, 12))
    model = checkpointed(tiny_lora_llama(0.2), offload=False)
    ref_loss, ref = loss_and_grads(model, ids)
    after_torch = torch.rand(3)
    use_offloaded_checkpointing(model)
    loss, grads = loss_and_grads(model, ids)
    torch.testing.assert_close(torch.rand(3), after_torch)   # the backward's replay does not move the generator
    torch.testing.assert_close(loss, ref_loss)
    for name in ref:
        torch.testing.assert_close(grads[name], ref[name], rtol=1e-5, atol=1e-6)


def test_a_layer_input_without_grad_still_trains_the_layer():
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8)                                     # no requires_grad: the layer's weights still learn
    offloaded_checkpoint(layer, x).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    torch.testing.assert_close(layer.weight.grad, torch.ones(8, 4) @ x)


def test_the_callback_reinstalls_it_after_the_trainer_enables_checkpointing():
    model = checkpointed(tiny_lora_llama(0.0, layers=2), offload=False)
    assert offloaded_layer_count(model) == 0

    class Args:
        gradient_checkpointing = True

    offloaded_checkpointing_callback().on_train_begin(Args(), None, None, model=model)
    assert offloaded_layer_count(model) == 2
