"""Speed and correctness benchmarks (not tests): each measures the original project's method and the stage's in one
run. One script per benchmark, run from the repository root as `python -m benchmarks.<name> --help`:

  finetune_speed    04: QLoRA training tokens/s, MFU and memory per case (original recipe, stage modes, Unsloth)
  finetune_check    04: varlen attention vs SDPA, packed-sample isolation (and the kernels on a GPU)
  finetune_kernels  04: LoRA dropout Triton kernels, errors and time vs PyTorch
  unsloth_case      04: one Unsloth training case in its own process (run by finetune_speed)
  generation_speed  05 (and the shared decoding engine): the original loop vs batching, the engine vs HF generate
  generate_speed    03: the original's sequential API loop vs the stage, against a local rate-limited fake server
  generate_local    03's local backend: HF generate vs the decoding engine on demo-corpus pages (GPU)
  parse_speed       02: the original PyPDFLoader loop vs nbutils.parse on a synthetic corpus, speed and text quality
  make_corpus       the synthetic arXiv-like PDF corpus parse_speed reads (with its ground truth)
  export_roundtrip  the export step: GGUF read back by transformers vs the merged model, greedy tokens (CPU)
  export_gpu        the export step: merge + GGUF q8_0 of Llama-3-8B shapes, wall time and peak memory (GPU)

Shared helpers (GPU sync and timers, model shapes, the random-weight model builder, environment, JSON) live once in
benchmarks.common. run_gpu_bench.sh runs the GPU phases; figures and the commands that made them: RESULTS.md."""
