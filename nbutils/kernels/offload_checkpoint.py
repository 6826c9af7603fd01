"""Gradient checkpointing whose saved layer inputs wait in pinned CPU memory (what Unsloth's default does).

Checkpointing keeps one tensor per decoder layer from the forward to the backward: the layer's input (T x hidden,
bf16: 64 MiB for Llama-3-8B at 8192 tokens, 2 GiB for its 32 layers). Here that input is copied to pinned host
memory on a side CUDA stream as soon as the layer has run (the GPU copy is then free), and brought back one layer
ahead during the backward, so the copies overlap the compute. The recompute is torch's: the layer runs again with
gradients on, the CPU and CUDA random states of its first run restored (dropout masks, the fused LoRA kernels'
seeds) and the same autocast state; the first run also has gradients on (with its saved tensors dropped), so it takes
exactly the code path of the recompute.

    from nbutils.kernels.offload_checkpoint import use_offloaded_checkpointing
    use_offloaded_checkpointing(model)   # after checkpointing is enabled (transformers' GradientCheckpointingLayer)

On CPU tensors nothing is copied (the input is kept as is): same results, no saving.
"""
from __future__ import annotations

import weakref

import torch

_FLAG = "_nbutils_offloaded_checkpointing"


class _Saved:
    """One layer input between its forward and its backward: on the host (CUDA) or as is (CPU)."""

    def __init__(self, tensor: torch.Tensor, requires_grad: bool, offloader: _Offloader):
        self.device, self.requires_grad = tensor.device, requires_grad
        self.on_gpu = None        # the copy back, once started
        self.back_done = None     # its event
        if tensor.device.type != "cuda":
            self.host, self.kept = None, tensor
            return
        self.kept = None
        stream = offloader.stream(tensor.device)
        self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        stream.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(stream):
            self.host.copy_(tensor, non_blocking=True)
        tensor.record_stream(stream)   # its memory is not handed out again before the copy has read it

    def start_copy_back(self, offloader: _Offloader) -> None:
        if self.kept is not None or self.on_gpu is not None:
            return
        stream = offloader.stream(self.device)
        # allocated on the compute stream (where it is used and freed); the side stream first waits for the work
        # queued there so far, which may still use this block's previous owner
        self.on_gpu = torch.empty(self.host.shape, dtype=self.host.dtype, device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self.on_gpu.copy_(self.host, non_blocking=True)
            self.back_done = torch.cuda.Event()
            self.back_done.record(stream)

    def take(self, offloader: _Offloader) -> torch.Tensor:
        if self.kept is not None:
            return self.kept
        self.start_copy_back(offloader)
        torch.cuda.current_stream(self.device).wait_event(self.back_done)
        out, self.on_gpu, self.host = self.on_gpu, None, None
        return out


class _Offloader:
    """The side streams, and the layer inputs waiting for their backward (newest last), as weak references: an
    input whose graph is dropped without a backward is not kept alive here."""

    def __init__(self):
        self._streams: dict = {}
        self.waiting: list = []

    def stream(self, device) -> torch.cuda.Stream:
        key = torch.device(device).index or 0
        if key not in self._streams:
            self._streams[key] = torch.cuda.Stream(device=device)
        return self._streams[key]

    def push(self, saved: _Saved) -> None:
        self.waiting = [w for w in self.waiting if w() is not None]
        self.waiting.append(weakref.ref(saved))

    def prefetch_after(self, saved: _Saved) -> None:
        """Drop `saved` from the waiting list and start bringing back the next one the backward will need."""
        alive = [w for w in self.waiting if w() is not None and w() is not saved]
        self.waiting = alive
        if alive:
            alive[-1]().start_copy_back(self)


_OFFLOADER = _Offloader()


def _autocast_state() -> list:
    return [(dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)) for dev in ("cuda", "cpu")]


class _OffloadedCheckpoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, hidden, *args):
        ctx.run, ctx.args = run, args
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(hidden.device) if hidden.is_cuda else None
        ctx.autocast = _autocast_state()
        # gradients on, saved tensors dropped: the same code path as the recompute, nothing kept
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: None, lambda _: None):
            out = run(hidden.detach(), *args)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"offloaded checkpointing needs a layer that returns one tensor, got {type(out).__name__}")
        ctx.saved = _Saved(hidden.detach(), hidden.requires_grad, _OFFLOADER)
        _OFFLOADER.push(ctx.saved)
        return out.detach()

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved
        hidden = saved.take(_OFFLOADER).detach().requires_grad_(saved.requires_grad)
        _OFFLOADER.prefetch_after(saved)
        ctx.saved = None
        devices = [hidden.device] if hidden.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(ctx.cpu_rng)
            if ctx.cuda_rng is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, hidden.device)
            with torch.enable_grad(), _restored_autocast(ctx.autocast):
                out = ctx.run(hidden, *ctx.args)
        torch.autograd.backward(out, grad)
        return (None, hidden.grad if saved.requires_grad else None) + (None,) * len(ctx.args)


class _restored_autocast:
    def __init__(self, state: list):
        self.managers = [torch.autocast(dev, dtype=dtype, enabled=on) for dev, on, dtype in state]

    def __enter__(self):
        for m in self.managers:
            m.__enter__()

    def __exit__(self, *exc):
        for m in reversed(self.managers):
            m.__exit__(*exc)


def offloaded_checkpoint(function, hidden: torch.Tensor, *args):
    """`torch.utils.checkpoint.checkpoint(function, hidden, *args)` with `hidden` kept in pinned host memory until
    the backward (the signature transformers' `_gradient_checkpointing_func` is called with). Extra positional
    arguments are passed through and get no gradient."""
    if torch.is_grad_enabled() and not hidden.requires_grad:
        # the layer's own weights are no inputs of the node: its output needs a gradient-carrying input to get
        # a backward at all (torch's reentrant checkpoint has the same need; transformers' input-grad hook meets it)
        hidden = hidden.detach().requires_grad_(True)
    return _OffloadedCheckpoint.apply(function, hidden, *args)


def use_offloaded_checkpointing(model) -> int:
    """Give every decoder layer that transformers checkpoints the offloaded checkpoint function; returns how many.
    Call it after checkpointing is enabled, and again if something enables it anew (the Trainer does at train
    start: `offloaded_checkpointing_callback`)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    n = 0
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing is True:
            module._gradient_checkpointing_func = offloaded_checkpoint
            setattr(module, _FLAG, True)
            n += 1
    return n


def offloaded_layer_count(model) -> int:
    return sum(1 for m in model.modules() if getattr(m, "_gradient_checkpointing_func", None) is offloaded_checkpoint)


def offloaded_checkpointing_callback():
    """A TrainerCallback that installs the offloaded checkpoint function at train start (after the Trainer has
    enabled checkpointing with torch's)."""
    from transformers import TrainerCallback

    class OffloadedCheckpointingCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            if model is not None and args.gradient_checkpointing:
                use_offloaded_checkpointing(model)

    return OffloadedCheckpointingCallback()
