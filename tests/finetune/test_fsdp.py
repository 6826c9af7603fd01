"""Stage 04's FSDP mode (nbutils/finetune/fsdp.py): the DDP-or-FSDP arithmetic on fake hosts, the accelerate launch
it builds and the environment accelerate makes of it, the runtime under FSDP, and (slow) real FSDP2 training on 2 CPU
processes over gloo with a tiny random Llama: the same losses as DDP, the adapter written once and loadable by
PeftModel in one process, and resume from the sharded checkpoint. 4-bit is not tried on the CPU (bitsandbytes' CPU
path can train without gradients): the CPU runs are 32-bit LoRA under FSDP; 4-bit FSDP runs in
benchmarks/finetune_fsdp.py on GPUs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from nbutils.finetune import FinetuneConfig, fsdp, runtime, stage
from nbutils.finetune.fsdp import DDP, FSDP, LLAMA3_8B, LLAMA3_70B, NONE, Workload, plan_parallelism
from tests.support.cpu_fsdp import fsdp_env, run_stage

FULL = Workload()  # the full recipe: r=64 on 7 projections, 4 x 2048 tokens per micro-batch, 4-bit


# ------------------------------------------------------------------------------------------------ the arithmetic
def test_8b_on_two_80gb_cards_is_ddp_without_checkpointing():
    plan = plan_parallelism(LLAMA3_8B, 2, 80, FULL)
    assert plan.mode == DDP and plan.chosen.checkpointing is False
    assert plan.chosen.total_gib < 72 and "a replica fits one GPU" in plan.describe()


def test_8b_on_two_24gb_cards_is_ddp_with_checkpointing():
    plan = plan_parallelism(LLAMA3_8B, 2, 24, FULL)
    assert (plan.mode, plan.checkpointing) == (DDP, True)
    assert 10 < plan.chosen.total_gib < 24 * 0.9


def test_8b_on_two_16gb_cards_is_fsdp_and_on_two_12gb_cards_fsdp_with_offload():
    plan = plan_parallelism(LLAMA3_8B, 2, 16, FULL)
    assert plan.mode == FSDP and not plan.offload
    replica = next(c for c in plan.considered if c.mode == DDP and c.checkpointing)
    assert replica.total_gib > 16 * 0.9 >= plan.chosen.total_gib
    small = plan_parallelism(LLAMA3_8B, 2, 12, FULL)
    assert small.mode == FSDP and small.offload and small.chosen.terms["weight shards"] == 0


def test_70b_on_two_80gb_cards_shards_when_a_replica_does_not_fit():
    """70B 4-bit is ~37 GiB: a replica with checkpointing at 4 x 2048 tokens fits one 80 GB card by the estimate
    (DDP); at 8 x 2048 tokens it does not and FSDP is chosen; 2 x 40 GB cannot even load the 4-bit model once."""
    assert plan_parallelism(LLAMA3_70B, 2, 80, FULL).mode == DDP
    bigger = Workload(tokens_per_micro_batch=8 * 2048)
    plan = plan_parallelism(LLAMA3_70B, 2, 80, bigger)
    assert plan.mode == FSDP and plan.chosen.load_gib == pytest.approx(36.8, abs=0.5)
    weights = fsdp.weights_gib(LLAMA3_70B, bigger)
    assert plan.chosen.terms["weight shards"] < weights / 2
    refused = plan_parallelism(LLAMA3_70B, 2, 40, FULL)
    assert refused.chosen is None and "loading needs" in refused.reason


def test_forcing_a_mode_keeps_it_and_one_gpu_never_shards():
    assert plan_parallelism(LLAMA3_8B, 2, 80, FULL, force=FSDP).mode == FSDP
    forced = plan_parallelism(LLAMA3_70B, 2, 24, FULL, force=DDP)
    assert forced.mode == DDP and "exceeds" in forced.reason
    single = plan_parallelism(LLAMA3_8B, 1, 80, FULL)
    assert single.mode == NONE and all(c.mode == DDP for c in single.considered)


def test_the_arithmetic_counts_what_it_says():
    """The terms by hand for Llama-3-8B: 7.0B linear weights at 4.127 bits + 2 x 0.53B bf16 embeddings; LoRA r=64:
    167.8M parameters; one 4-bit decoder layer ~0.1 GiB."""
    assert LLAMA3_8B.layers * LLAMA3_8B.linear_params_per_layer() == pytest.approx(6.98e9, rel=0.01)
    assert LLAMA3_8B.lora_params(64, FULL.lora_targets) == 167_772_160
    w = fsdp.weights_gib(LLAMA3_8B, FULL)
    assert w == pytest.approx((6.98e9 * 4.127 / 8 + 2 * 128256 * 4096 * 2) / 2**30, rel=0.01)
    assert fsdp.lora_state_gib(LLAMA3_8B, FULL, 16) == pytest.approx(167_772_160 * 16 / 2**30)
    assert fsdp.activations_gib(LLAMA3_8B, FULL, True) < fsdp.activations_gib(LLAMA3_8B, FULL, False) / 5


def test_the_shape_comes_from_a_transformers_config():
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8)
    assert fsdp.shape_from_config(cfg) == LLAMA3_8B
    assert fsdp.decoder_layer_classes(cfg) == ["LlamaDecoderLayer"]


# ------------------------------------------------------------------------------------------------ the launch
def accelerate_flags(cmd: list[str]) -> list[str]:
    """The flags of `accelerate launch` in a stage-04 command, less --num_processes and its value."""
    flags = cmd[cmd.index("accelerate.commands.launch") + 1:cmd.index("nbutils.finetune") - 1]
    i = flags.index("--num_processes")
    return flags[:i] + flags[i + 2:]


def test_the_fsdp_launch_command_and_the_environment_accelerate_makes_of_it(tmp_path):
    model = save_tiny_llama(tmp_path / "tiny")
    cfg = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), base_model=str(model), multi_gpu="fsdp")
    plan, shape = stage.plan_launch(cfg, world=2, gpu_gib=24)
    assert plan.mode == FSDP and shape.layers == 2
    cmd = stage.launch_command(cfg, plan, ["LlamaDecoderLayer"])
    text = " ".join(cmd)
    assert "accelerate.commands.launch --num_processes 2 --use_fsdp --fsdp_version 2" in text
    assert "--multi_gpu" not in text and text.endswith("--memory_mode lean")
    env = fsdp_env(accelerate_flags(cmd), 2)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "LlamaDecoderLayer"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"
    assert (env["FSDP_CPU_RAM_EFFICIENT_LOADING"], env["FSDP_SYNC_MODULE_STATES"]) == ("true", "true")
    assert (env["FSDP_USE_ORIG_PARAMS"], env["FSDP_OFFLOAD_PARAMS"]) == ("true", "false")
    assert env["FSDP_ACTIVATION_CHECKPOINTING"] == "false"  # transformers' checkpointing keeps the RNG state


def test_ddp_stays_the_launch_when_a_replica_fits_and_without_a_readable_config(tmp_path):
    model = save_tiny_llama(tmp_path / "tiny")
    cfg = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), base_model=str(model))
    plan, _ = stage.plan_launch(cfg, world=2, gpu_gib=80)
    assert plan.mode == DDP and "--multi_gpu" in stage.launch_command(cfg, plan)
    hub = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), base_model="nobody/not-here")
    plan, shape = stage.plan_launch(hub, world=2, gpu_gib=80)
    assert shape is None and plan.mode == DDP and "no memory estimate" in plan.reason
    for value in (True, "auto", "ddp", "fsdp", False):  # the old values still parse, the new ones too
        assert FinetuneConfig.from_params(profile="full", multi_gpu=value).multi_gpu == value


def test_the_launching_process_reads_gpu_memory_from_nvidia_smi_not_cuda(tmp_path, monkeypatch):
    """The plan's GPU size comes from nvidia-smi (the launcher keeps no CUDA context on GPU 0): the smallest of the
    visible cards."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf '0, 81559\\n1, 24576\\n2, 81559\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert fsdp.host_gpu_memory_gib() == pytest.approx(24.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert fsdp.host_gpu_memory_gib() == pytest.approx(81559 / 1024)


def test_under_fsdp_the_runtime_turns_off_what_is_not_tried_and_refuses_merge(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), optim="paged_adamw_8bit",
                                     upcast_non_quantized=True)
    rt = runtime.resolve_runtime(cfg, device="cpu")
    assert rt.fsdp and rt.optim == "adamw_torch" and not rt.fuse_lora and "FSDP" in rt.describe()
    with pytest.raises(ValueError, match="merge=True under FSDP"):
        runtime.resolve_runtime(FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), merge=True),
                                device="cpu")


# ------------------------------------------------------------------------------------------------ real FSDP on CPU
TOPICS = ["graph neural networks", "diffusion models", "protein folding", "quantum error correction",
          "sparse attention", "federated learning", "speech recognition", "causal inference"]


def save_tiny_llama(folder: Path, tokenizer_from: Path | None = None) -> Path:
    """A 2-layer random Llama (hidden 32) with the embedded model's tokenizer, saved like a downloaded model."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    vocab = 49152
    if tokenizer_from is not None:
        tok = AutoTokenizer.from_pretrained(tokenizer_from)
        tok.save_pretrained(folder)
        vocab = len(tok)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))
    model.save_pretrained(folder)
    return folder


def write_rows(data_dir: Path) -> None:
    """16 rows in the original format, and the frozen split made from them once (as stage 04's launcher does
    before it starts the processes)."""
    from nbutils.splits import load_split

    rows = []
    for t in TOPICS:
        rows.append({"Instruction": f"What problem does the paper on {t} address?", "Input": "",
                     "Output": f"The paper on {t} addresses the cost of training {t} models at scale."})
        rows.append({"Instruction": f"Summarise the main result about {t}.", "Input": "",
                     "Output": f"The main result is that {t} becomes twice as efficient with our method."})
    (data_dir / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))
    load_split(str(data_dir), seed=42, verbose=False)


def stage_args(data_dir: Path, model: Path, **kw) -> list[str]:
    params = dict(base_model=str(model), lora_r=4, lora_alpha=8, lora_dropout=0.0, max_length=64,
                  per_device_train_batch_size=2, per_device_eval_batch_size=2, max_eval_samples=2, logging_steps=1,
                  eval_steps=100, save_steps=3, max_steps=6, warmup_steps=0, learning_rate=5e-3, fuse_lora=False,
                  packing=False, gradient_checkpointing=True)
    params.update(kw)
    cfg = FinetuneConfig.from_params(profile="demo", data_dir=str(data_dir), **params)
    return stage.cli_args(cfg)


def losses(data_dir: Path) -> list[float]:
    log = json.loads((data_dir / "models" / "adapter" / "train_log.json").read_text())
    return [e["loss"] for e in log["log"] if "loss" in e]


def check(proc) -> None:
    """The run succeeded; else its rank-0 traceback (or the end of its output)."""
    rank0 = [line for line in proc.stderr.splitlines() if line.startswith("[rank0]")]
    assert proc.returncode == 0, "\n".join(rank0[-40:]) or proc.stdout[-3000:] + proc.stderr[-6000:]


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_like_ddp_saves_once_and_resumes(tmp_path, embedded_model_path):
    """The stage under accelerate's FSDP2 (2 processes, gloo): per-step losses equal DDP's on the same data; the
    adapter is written once, as PEFT's ordinary adapter that PeftModel loads in one process and that reproduces the
    trained model's loss; the sharded checkpoint (each rank's shard) resumes to the same final loss."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = save_tiny_llama(tmp_path / "tiny", tokenizer_from=embedded_model_path)
    plan, _ = stage.plan_launch(FinetuneConfig.from_params(profile="demo", base_model=str(model), multi_gpu="fsdp"),
                                world=2, gpu_gib=1)
    flags = accelerate_flags(stage.launch_command(FinetuneConfig.from_params(profile="demo"), plan,
                                                  ["LlamaDecoderLayer"]))
    runs = {}
    for name, sharded in (("fsdp", True), ("ddp", False)):
        d = tmp_path / name
        d.mkdir()
        write_rows(d)
        check(run_stage(flags, stage_args(d, model), fsdp=sharded))
        runs[name] = losses(d)
    assert len(runs["fsdp"]) == 6 and runs["fsdp"][-1] < runs["fsdp"][0]
    assert runs["fsdp"] == pytest.approx(runs["ddp"], rel=1e-4)

    d = tmp_path / "fsdp"
    ckpts = sorted((d / "models" / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-3", "checkpoint-6"]
    assert any(p.is_dir() and p.name.startswith("pytorch_model_fsdp") for p in ckpts[0].iterdir())
    adapter = d / "models" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    log = json.loads((adapter / "train_log.json").read_text())
    assert log["runtime"]["fsdp"] is True and log["global_step"] == 6

    # loadable on one process: the adapter changes the base's loss the way training did
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    base_loss = base(input_ids=ids, labels=ids).loss.item()
    tuned = PeftModel.from_pretrained(base, str(adapter))
    assert any("lora_A" in n for n, _ in tuned.named_parameters())
    b = tuned.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert b.abs().sum() > 0 and math.isfinite(tuned(input_ids=ids, labels=ids).loss.item())
    assert tuned(input_ids=ids, labels=ids).loss.item() != pytest.approx(base_loss, rel=1e-6)

    # resume from the sharded checkpoint-3 (checkpoint-6 and the adapter removed): the same last 3 losses
    import shutil

    shutil.rmtree(ckpts[1])
    shutil.rmtree(adapter)
    proc = run_stage(flags, stage_args(d, model), fsdp=True)
    check(proc)
    assert "resuming from" in proc.stdout + proc.stderr
    resumed = losses(d)
    assert resumed[-3:] == pytest.approx(runs["fsdp"][-3:], rel=1e-4)
