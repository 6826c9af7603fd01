"""nbutils.kernels.fused_lora_triton (in Triton's interpreter on CPU tensors, see conftest) and the LoRA layer that
uses it."""
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
peft = pytest.importorskip("peft")

import nbutils.kernels.fused_lora as fl  # noqa: E402
from nbutils.kernels import fused_lora_triton as kernels  # noqa: E402

pytestmark = pytest.mark.skipif(not kernels.INTERPRET, reason="needs TRITON_INTERPRET=1 (set in conftest)")


def test_mask_keeps_1_minus_p_and_depends_on_the_seed_only():
    keep = kernels.dropout_mask(11, 64, 96, 0.3, "cpu")
    assert keep.dtype == torch.bool and keep.shape == (64, 96)
    assert abs(1 - keep.float().mean().item() - 0.3) < 0.03
    assert torch.equal(keep, kernels.dropout_mask(11, 64, 96, 0.3, "cpu"))
    assert (keep != kernels.dropout_mask(12, 64, 96, 0.3, "cpu")).float().mean() > 0.3
    assert kernels.dropout_mask(11, 64, 96, 0.0, "cpu").all()
    wide = kernels.dropout_mask(3, 8, 512, 0.5, "cpu").float()
    assert abs(wide.mean().item() - 0.5) < 0.06                                # every quarter of every group drawn
    assert all(abs(wide[:, q * 32:(q + 1) * 32].mean().item() - 0.5) < 0.2 for q in range(16))


@pytest.mark.parametrize("dtype,tol,m,k", [(torch.float32, 1e-5, 50, 40), (torch.float16, 2e-3, 50, 40),
                                           (torch.float32, 1e-5, 37, 300), (torch.float32, 1e-5, 70, 600)])
def test_kernels_match_pytorch_with_the_same_mask(dtype, tol, m, k):
    torch.manual_seed(0)
    r, p, seed = 16, 0.2, 1234          # ragged: no dimension a multiple of the blocks; 300 = 3 column groups
    x, a_w, ga = torch.randn(m, k).to(dtype), torch.randn(r, k).to(dtype), torch.randn(m, r).to(dtype)
    scale = kernels.threshold(p)[1]                     # 1/(1-p') for the 16-bit p' (within 2**-17 of p)
    assert abs(scale - 1 / (1 - p)) < 1e-4
    xd = x.float() * kernels.dropout_mask(seed, m, k, p, "cpu") * scale

    def rel(a, b):
        return float((a.float() - b).norm() / b.norm())

    assert rel(kernels.dropout_matmul(x, a_w, seed, p), xd @ a_w.float().t()) < tol
    assert rel(kernels.dropout_matmul_grad_a(ga, x, seed, p), ga.float().t() @ xd) < tol
    gx = torch.randn(m, k).to(dtype)
    want = gx.float() + (ga.float() @ a_w.float()) * kernels.dropout_mask(seed, m, k, p, "cpu") * scale
    assert rel(kernels.dropout_matmul_grad_x_(gx, ga, a_w, seed, p), want) < tol


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = torch.nn.Linear(32, 48)
        self.down_proj = torch.nn.Linear(48, 32, bias=False)

    def forward(self, x):
        return self.down_proj(torch.nn.functional.silu(self.q_proj(x)))


@pytest.fixture
def lora_block(monkeypatch):
    monkeypatch.setattr(fl, "ALLOW_CPU_INTERPRETER", True)
    torch.manual_seed(0)
    cfg = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.25, target_modules=["q_proj", "down_proj"])
    model = peft.get_peft_model(Block(), cfg)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    model.train()
    fl.fuse_lora_layers(model)
    return model


def record_seeds(monkeypatch):
    seeds = []
    real = kernels.dropout_matmul
    monkeypatch.setattr(kernels, "dropout_matmul", lambda x, a, seed, p: seeds.append(seed) or real(x, a, seed, p))
    return seeds


def reference(model, x, seeds, p=0.25):
    """The same block in plain PyTorch autograd, dropout = the kernels' masks for the recorded seeds."""
    base = model.get_base_model()

    def lora(layer, inp, seed):
        keep = kernels.dropout_mask(seed, inp.shape[0], inp.shape[1], p, "cpu")
        return (layer.base_layer(inp) + (inp * keep * kernels.threshold(p)[1]) @ layer.lora_A["default"].weight.t()
                @ layer.lora_B["default"].weight.t() * layer.scaling["default"])

    return lora(base.down_proj, torch.nn.functional.silu(lora(base.q_proj, x, seeds[0])), seeds[1])


def grads_of(model, x, fn):
    model.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.pow(2).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_lora_layer_with_kernel_dropout_equals_pytorch_autograd(lora_block, monkeypatch):
    seeds = record_seeds(monkeypatch)
    x = torch.randn(24, 32)
    out, dx, grads = grads_of(lora_block, x, lora_block)
    assert len(seeds) == 2 and seeds[0] != seeds[1]             # a fresh mask per layer and call
    ref_out, ref_dx, ref_grads = grads_of(lora_block, x, lambda t: reference(lora_block, t, seeds))
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, ref_dx, rtol=1e-4, atol=1e-4)
    assert len(grads) == 4
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=2e-4, atol=5e-4)  # fp32 sum order


def torch_checkpoint(fn, x):
    from torch.utils.checkpoint import checkpoint

    return checkpoint(fn, x, use_reentrant=False)


def offloaded(fn, x):
    from nbutils.kernels.offload_checkpoint import offloaded_checkpoint

    return offloaded_checkpoint(fn, x)


@pytest.mark.parametrize("checkpoint", [torch_checkpoint, offloaded])
def test_gradient_checkpointing_replays_the_same_masks(lora_block, checkpoint):
    x = torch.randn(24, 32)
    torch.manual_seed(5)
    plain = grads_of(lora_block, x, lora_block)
    torch.manual_seed(5)
    ckpt = grads_of(lora_block, x, lambda t: checkpoint(lora_block, t))
    torch.testing.assert_close(ckpt[0], plain[0])
    torch.testing.assert_close(ckpt[1], plain[1])
    for name in plain[2]:
        torch.testing.assert_close(ckpt[2][name], plain[2][name])


def test_kernels_stay_out_of_eval_and_no_grad(lora_block, monkeypatch):
    seeds = record_seeds(monkeypatch)
    x = torch.randn(8, 32)
    with torch.no_grad():
        lora_block(x)
    lora_block.eval()
    lora_block(x)
    assert seeds == []


def test_a_trainable_base_weight_keeps_pytorch_dropout(lora_block, monkeypatch):
    """The kernels' backward assumes a frozen base (no weight gradient): anything else stays on PyTorch ops."""
    seeds = record_seeds(monkeypatch)
    base = lora_block.get_base_model().q_proj.base_layer
    base.weight.requires_grad_(True)
    x = torch.randn(8, 32)
    lora_block(x).sum().backward()
    assert len(seeds) == 1 and base.weight.grad is not None   # only down_proj took the kernels


def test_keeping_the_base_weight_for_the_backward_changes_nothing(lora_block):
    """keep_base_weight (the 4-bit weight dequantised once, not again in the backward): same outputs and
    gradients, with and without gradient checkpointing."""
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(24, 32)
    for wrap in (lambda f: f, lambda f: (lambda t: checkpoint(f, t, use_reentrant=False))):
        torch.manual_seed(5)
        plain = grads_of(lora_block, x, wrap(lora_block))
        fl.fuse_lora_layers(lora_block, keep_base_weight=True)
        torch.manual_seed(5)
        kept = grads_of(lora_block, x, wrap(lora_block))
        fl.fuse_lora_layers(lora_block, keep_base_weight=False)
        torch.testing.assert_close(kept[0], plain[0])
        torch.testing.assert_close(kept[1], plain[1])
        assert kept[2].keys() == plain[2].keys()
        for name in plain[2]:
            torch.testing.assert_close(kept[2][name], plain[2][name])
