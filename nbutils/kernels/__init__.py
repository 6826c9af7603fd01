"""GPU speed-ups for stage 04, each with a plain PyTorch path where it cannot run (imported by name, nothing here):

- `attention`: "sdpa_varlen", PyTorch's flash varlen kernel for padding-free packed rows without flash-attn;
- `fused_lora`: LoRA's scale and sum folded into one GEMM (same math, fewer passes over activations);
- `fused_lora_triton`: the LoRA dropout inside Triton kernels (no dropped copy of each layer input kept);
- `offload_checkpoint`: gradient checkpointing with the saved layer inputs in pinned host memory (copies overlapped).
"""
