"""Test harness for issue 8 (f): on a bf16-capable GPU, make every Python process (papermill and its kernel)
believe the GPU has no bf16, so the fp16 path a T4 takes (fp16 AMP, fp32 LoRA weights, fp16 4-bit compute)
runs for real. Active only with NBUTILS_FORCE_FP16=1 and this folder on PYTHONPATH."""
import os

if os.environ.get("NBUTILS_FORCE_FP16") == "1":
    import torch

    torch.cuda.is_bf16_supported = lambda *args, **kwargs: False
