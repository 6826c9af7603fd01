#!/usr/bin/env bash
# Issue 8 GPU runs, phase by phase: bash benchmarks/run_gpu_bench.sh setup train [ddp gen notebooks]
# Needs: .whl/ (wheels of trl, bitsandbytes, datasets, liger-kernel, papermill + kernel deps: see RESULTS.md) and
# .gpu_assets/smollm2/ (the embedded model's tokenizer + config files). Logs and JSON go to $OUT (default ./gpu_out).
# Issue 15 (stage vs Unsloth): bash benchmarks/run_gpu_bench.sh sites model train with SITES=<folder holding
# site.tgz (the stage's stack) and unsloth_site.tgz (Unsloth and its pins)>, unpacked into /tmp/site and
# /tmp/unsloth_site (the latter first on PYTHONPATH for the unsloth_* cases only); RESULTS.md says how they are made.
# Run from the repository root: each benchmark runs as `python -m benchmarks.<name>`.
set -o pipefail
FINAL=${OUT:-$PWD/gpu_out}; OUT=/tmp/gpu_work; mkdir -p "$OUT" "$FINAL"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 NCCL_NVLS_ENABLE=0 \
  TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONWARNINGS=ignore
PY=${PY:-python3}
B="-m benchmarks.finetune_speed"
L3=/tmp/llama3-8b-random
SMOL=/tmp/smollm2-135m-random

for phase in "$@"; do
  echo "=== phase $phase $(date -u +%T)"
  case $phase in
  setup)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    $PY -c "import torch,transformers,peft,accelerate,trl,bitsandbytes;print('torch',torch.__version__,'cuda',torch.version.cuda,'transformers',transformers.__version__,'peft',peft.__version__,'accelerate',accelerate.__version__,'trl',trl.__version__,'bnb',bitsandbytes.__version__)" | tee -a "$OUT/gpu.txt"
    ;;
  sites)
    for t in site unsloth_site; do
      [ -f /tmp/$t/.unpacked ] || { mkdir -p /tmp/$t && tar -xzf "${SITES:-.whl/issue15}/$t.tgz" -C /tmp/$t && touch /tmp/$t/.unpacked; } || exit 1
    done
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"   # versions: in the JSON
    ;;
  model)
    [ -f $L3/config.json ] || CUDA_VISIBLE_DEVICES=0 $PY $B make-model --arch llama3-8b --out $L3 --tokenizer .gpu_assets/smollm2 2>&1 | tail -3
    ;;
  kernels)
    CUDA_VISIBLE_DEVICES=0 $PY -m benchmarks.finetune_kernels ${SWEEP:+--sweep} ${RNG:+--rng $RNG} --json "$OUT/kernels${RNG:+_$RNG}.json" 2>&1 | grep -v Warning | tail -${KERNELS_TAIL:-60}
    ;;
  check)
    CUDA_VISIBLE_DEVICES=0 $PY -m benchmarks.finetune_check --json "$OUT/check.json" 2>&1 | grep -v Warning | tail -20
    ;;
  train)
    CUDA_VISIBLE_DEVICES=0 PYTORCH_CUDA_ALLOC_CONF=${ALLOC_CONF:-} timeout ${TRAIN_TIMEOUT:-430} $PY $B train --model $L3 --json "$OUT/train.json" --profile "${PROFILE:-}" --trace-dir "$FINAL" \
      --sync-debug "${SYNC_DEBUG:-}" --steps ${STEPS:-3} --warmup ${WARMUP:-1} --unsloth-site /tmp/unsloth_site \
      --cases ${CASES:-original,original_padded,nolig_varlen_nogc,default,default_upcast,default_sdpa_mask,lean,ours_padded,lean_mb16,default_mb8,default_fused_adamw,default_compile} \
      2>&1 | tee "$OUT/train_full.log" | grep -E "^\[|^\||^N =|^loaded|FAILED|Error|error|^  |nsloth"
    ;;
  bf16)  # plain LoRA on a bf16 base (no bitsandbytes), for comparison with the 4-bit cases of `train`
    CUDA_VISIBLE_DEVICES=0 timeout ${BF16_TIMEOUT:-200} $PY $B train --model $L3 --json "$OUT/train_bf16.json" --bf16-base \
      --cases ${BF16_CASES:-fast} --steps ${STEPS:-3} 2>&1 | tee "$OUT/train_bf16_full.log" | grep -E "^\[|^\||^loaded|FAILED|Error"
    ;;
  ddp)
    for n in 1 2; do
      CUDA_VISIBLE_DEVICES=$([ $n = 1 ] && echo 0 || echo 0,1) timeout ${DDP_TIMEOUT:-150} $PY -m accelerate.commands.launch \
        --num_processes $n $([ $n = 2 ] && echo --multi_gpu) --num_machines 1 --mixed_precision no --dynamo_backend no \
        -m benchmarks.finetune_speed train --model $L3 --cases ${DDP_CASE:-fast} --steps 4 --json "$OUT/ddp$n.json" \
        2>&1 | tee -a "$OUT/ddp_full.log" | grep -E "^\[|^\||FAILED|Error"
    done
    ;;
  gen)
    CUDA_VISIBLE_DEVICES=0 timeout ${GEN_TIMEOUT:-150} $PY -m benchmarks.generation_speed evaluate --model $L3 --json "$OUT/gen.json" --batch-sizes ${GEN_BS:-64,128,256} \
      2>&1 | tee "$OUT/gen_full.log" | grep -E "^\||^\{|Error"
    ;;
  notebooks)
    [ -f $SMOL/config.json ] || CUDA_VISIBLE_DEVICES=0 $PY $B make-model --arch .gpu_assets/smollm2 --out $SMOL --tokenizer .gpu_assets/smollm2 2>&1 | tail -1
    for mode in bf16 fp16; do
      D=/tmp/nb_$mode; $PY $B make-data --out $D --rows 64
      extra=""; [ $mode = fp16 ] && extra="NBUTILS_FORCE_FP16=1 PYTHONPATH=$PWD/benchmarks/force_fp16:$PYTHONPATH"
      for nb in ${NBS:-04_finetune 05_evaluate}; do
        [ -f notebooks/$nb.ipynb ] || { echo "notebooks/$nb.ipynb missing"; continue; }
        p="-p data_dir $D -p base_model $SMOL -p load_in_4bit True"
        [ $nb = 04_finetune ] && p="$p -p max_steps 12"
        s=$(date +%s)
        env $extra CUDA_VISIBLE_DEVICES=0 timeout ${NB_TIMEOUT:-200} $PY -m papermill notebooks/$nb.ipynb "$OUT/${nb}_$mode.ipynb" $p \
          --cwd "$PWD" > "$OUT/${nb}_$mode.log" 2>&1
        echo "$nb $mode rc=$? $(( $(date +%s) - s )) s"; tail -3 "$OUT/${nb}_$mode.log"
      done
    done
    ;;
  esac
  tar czf "$FINAL/results.tgz" -C "$OUT" .   # after every phase: a later timeout loses nothing done
done
echo "=== done $(date -u +%T)"
