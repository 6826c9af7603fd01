"""nbutils.kernels.fused_lora: same outputs and gradients as PEFT's LoRA forward, PEFT's path where it cannot fuse."""
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from nbutils.kernels.fused_lora import fuse_lora_layers, fused_layer_count, unfuse_lora_layers  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(32, 48, bias=True)
        self.down_proj = torch.nn.Linear(48, 32, bias=False)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.q_proj(x)))


def lora_model(dropout=0.1, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q_proj", "down_proj"], **kw)
    model = peft.get_peft_model(Block(), cfg)
    for name, p in model.named_parameters():  # lora_B starts at zero: make the adapter matter
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return model


def run(model, x, seed=123, autocast=False):
    """Output and the gradients of the input and every trainable weight, with a fixed dropout draw."""
    model.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    out.float().pow(2).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.detach().float(), x.grad.detach().float(), grads


def test_fused_matches_peft_with_dropout_in_training():
    model = lora_model(dropout=0.1)
    model.train()
    x = torch.randn(2, 5, 32)
    ref_out, ref_dx, ref_grads = run(model, x)
    assert fuse_lora_layers(model, triton_dropout=False) == 2   # PyTorch's dropout: PEFT's very masks
    out, dx, grads = run(model, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) == 4
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5)


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def test_fused_under_bf16_autocast_is_as_accurate_as_peft():
    model = lora_model(dropout=0.0)
    x = torch.randn(3, 7, 32)
    exact = run(model, x)                                   # fp32
    peft_bf16 = run(model, x, autocast=True)
    fuse_lora_layers(model)
    fused_bf16 = run(model, x, autocast=True)
    assert fused_bf16[0].dtype == peft_bf16[0].dtype
    for ours, theirs, ref in [(fused_bf16[0], peft_bf16[0], exact[0]), (fused_bf16[1], peft_bf16[1], exact[1]),
                              *[(fused_bf16[2][n], peft_bf16[2][n], exact[2][n]) for n in exact[2]]]:
        assert rel_err(ours, ref) < 0.02                      # bf16 rounding, nothing more
        assert rel_err(ours, ref) <= 1.5 * rel_err(theirs, ref) + 1e-3


def fused_eval_model():
    """A fused LoRA model in eval mode, an input, and its output."""
    model = lora_model(dropout=0.0)
    model.eval()
    x = torch.randn(4, 32)
    fuse_lora_layers(model)
    with torch.no_grad():
        return model, x, model(x)


def test_adapter_changes_the_output_and_disabling_it_gives_the_base():
    model, x, fused = fused_eval_model()
    with torch.no_grad(), model.disable_adapter():
        base = model(x)
    assert (fused - base).abs().max() > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(base, model.get_base_model().down_proj.base_layer(
            torch.nn.functional.silu(model.get_base_model().q_proj.base_layer(x))))


def test_merge_and_unload_after_fusing_gives_the_same_model():
    model, x, fused = fused_eval_model()
    with torch.no_grad():
        merged = model.merge_and_unload()(x)
    torch.testing.assert_close(merged, fused, rtol=1e-5, atol=1e-5)


def test_variants_fall_back_to_peft(monkeypatch):
    model = lora_model(dropout=0.0, use_dora=True)
    x = torch.randn(2, 32)
    with torch.no_grad():
        ref = model(x)
    fuse_lora_layers(model)
    calls = []
    import nbutils.kernels.fused_lora as fl

    original = fl._plain_adapter
    monkeypatch.setattr(fl, "_plain_adapter", lambda *a: calls.append(original(*a)) or calls[-1])
    with torch.no_grad():
        out = model(x)
    assert calls and all(c is None for c in calls)   # DoRA is PEFT's business
    torch.testing.assert_close(out, ref)


def test_fuse_is_idempotent_and_reversible():
    model = lora_model()
    assert fuse_lora_layers(model) == 2 and fuse_lora_layers(model) == 2
    assert fused_layer_count(model) == 2
    assert unfuse_lora_layers(model) == 2 and fused_layer_count(model) == 0
    x = torch.randn(2, 32)
    model.eval()
    with torch.no_grad():
        model(x)  # PEFT's forward works again


def node_names(out) -> set:
    """The autograd node types of a graph (what the forward ran)."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return {type(f).__name__ for f in seen}


@pytest.mark.parametrize("keep", [False, True])
def test_no_dropout_takes_the_one_node_path_and_equals_peft(keep):
    """LoRA dropout 0 (Unsloth's recommendation): the fused node, not PEFT's chain, with PEFT's outputs and
    gradients."""
    model = lora_model(dropout=0.0)
    model.train()
    x = torch.randn(2, 5, 32)
    ref_out, ref_dx, ref_grads = run(model, x)
    fuse_lora_layers(model, keep_base_weight=keep)
    out, dx, grads = run(model, x)
    torch.manual_seed(0)
    assert "FusedLoRABackward" in node_names(model(x.requires_grad_(True)))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) == 4
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5)


def test_no_dropout_under_gradient_checkpointing_equals_peft():
    from torch.utils.checkpoint import checkpoint

    model = lora_model(dropout=0.0)
    x = torch.randn(3, 32)
    ref = run(model, x)
    fuse_lora_layers(model, keep_base_weight=True)
    model.zero_grad()
    xg = x.clone().requires_grad_(True)
    out = checkpoint(model, xg, use_reentrant=False)
    out.float().pow(2).sum().backward()
    torch.testing.assert_close(out.detach(), ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xg.grad, ref[1], rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref[2][name], rtol=1e-5, atol=1e-5)


def test_no_dropout_without_gradients_stays_off_the_node(monkeypatch):
    """Inference (no_grad: generation, evaluation) keeps the plain addmm path: no autograd node to build."""
    import nbutils.kernels.fused_lora as fl

    model, x, ref = fused_eval_model()
    model.train()
    calls, real = [], fl.FusedLoRA.apply
    monkeypatch.setattr(fl.FusedLoRA, "apply", lambda *a: calls.append(a) or real(*a))
    with torch.no_grad():
        out = model(x)
    assert calls == []
    torch.testing.assert_close(out, ref)
    model(x)
    assert len(calls) == 2                                   # with gradients: both layers take it


class Block4bit(torch.nn.Module):
    """Block with bitsandbytes nf4 base layers (quantised on CPU)."""

    def __init__(self):
        super().__init__()
        bnb = pytest.importorskip("bitsandbytes")
        dense = Block()
        for name in ("q_proj", "down_proj"):
            src = getattr(dense, name)
            layer = bnb.nn.Linear4bit(src.in_features, src.out_features, bias=src.bias is not None,
                                      compute_dtype=torch.float32, quant_type="nf4")
            layer.load_state_dict(src.state_dict())
            layer = layer.to("cpu")
            if layer.weight.quant_state is None:
                layer.weight = layer.weight._quantize("cpu")
            setattr(self, name, layer)

    forward = Block.forward


@pytest.mark.parametrize("keep", [False, True])
def test_no_dropout_on_a_4bit_base_equals_peft(keep):
    torch.manual_seed(0)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "down_proj"])
    model = peft.get_peft_model(Block4bit(), cfg)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(6, 32)
    ref_out, ref_dx, ref_grads = run(model, x)
    assert fuse_lora_layers(model, keep_base_weight=keep) == 2
    out, dx, grads = run(model, x)
    assert "FusedLoRABackward" in node_names(model(x.requires_grad_(True)))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-5, atol=1e-5)
    assert len(grads) == 4
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5)
