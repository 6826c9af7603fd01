"""Stage 04 on CPU with the embedded SmolLM2: masking/EOS/pad, truncation, packing isolation, NaN/OOM errors,
the original-format JSON, the command line, loss falling, and resume after a kill at the right step with the same
data order (the runtime's choices: test_finetune_runtime.py; typos and changed configs: test_finetune_resume.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from nbutils.config import config_from_argv
from nbutils.finetune import FinetuneConfig, callbacks, data, resume, runtime, stage
from nbutils.finetune import train as tr
from nbutils.finetune.__main__ import main
from nbutils.io import PROJECT_ROOT

TOPICS = ["graph neural networks", "diffusion models", "protein folding", "quantum error correction",
          "sparse attention", "federated learning", "speech recognition", "reinforcement learning",
          "causal inference", "image segmentation", "knowledge distillation", "contrastive learning",
          "neural radiance fields", "time series forecasting", "code generation"]


def write_original_json(data_dir: Path) -> Path:
    """30 short rows in the original project's {"Instruction","Input","Output"} format."""
    rows = []
    for t in TOPICS:
        rows.append({"Instruction": f"What problem does the paper on {t} address?", "Input": "",
                     "Output": f"The paper on {t} addresses the cost of training {t} models at scale."})
        rows.append({"Instruction": f"Summarise the main result about {t}.", "Input": f"Abstract: we study {t}.",
                     "Output": f"The main result is that {t} becomes twice as efficient with our method."})
    path = data_dir / "arxiv_instruction_dataset.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def data_dir(data_dir_with_model) -> Path:
    write_original_json(data_dir_with_model)
    return data_dir_with_model


def tiny_cfg(data_dir: Path, **kw) -> FinetuneConfig:
    """The demo profile shrunk so that one step takes well under a second on 2 cores."""
    params = dict(lora_r=4, lora_alpha=8, lora_dropout=0.0, max_length=128, per_device_train_batch_size=2,
                  per_device_eval_batch_size=4, max_eval_samples=4, logging_steps=1, eval_steps=100,
                  save_steps=100, warmup_steps=0)
    params.update(kw)
    return FinetuneConfig.from_params(profile="demo", data_dir=str(data_dir), **params)


def full_cfg(tmp_path, **kw) -> FinetuneConfig:
    return FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), **kw)


# The original project's recipe: the `original` profile's overrides (one source: FinetuneConfig.PROFILE_OVERRIDES).
ORIGINAL_RECIPE = FinetuneConfig.overrides("original")


@pytest.fixture(scope="module")
def tokenizer(embedded_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model_path)


# ------------------------------------------------------------------------------------------------ fast
def test_original_format_json_is_accepted(data_dir, tokenizer):
    cfg = tiny_cfg(data_dir, max_eval_samples=None)
    train, test, info = data.load_training_data(cfg, tokenizer, verbose=False)
    assert info["n_train"] + info["n_eval"] == 30 and info["n_eval"] == 6
    row = train[0]
    assert row["prompt"].endswith("### Response:\n") and "### Instruction:" in row["prompt"]
    assert not row["completion"].startswith("###")
    assert json.loads((data_dir / "dataset" / "split_info.json").read_text())["method"] == "by_row"


def test_rows_without_answer_are_skipped_with_a_message(data_dir_with_model, tokenizer, capsys):
    rows = [{"Instruction": f"q{i}", "Input": "", "Output": "" if i == 3 else f"a{i}"} for i in range(10)]
    (data_dir_with_model / "arxiv_instruction_dataset.json").write_text(json.dumps(rows))
    train, test, info = data.load_training_data(tiny_cfg(data_dir_with_model), tokenizer, verbose=False)
    assert info["skipped_empty"] == 1 and len(train) + len(test) == 9
    assert "empty instruction or output" in capsys.readouterr().out


def test_pad_token_is_distinct_from_eos(tokenizer):
    tok = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2 ships pad = eos, like the original project
    note = data.choose_pad_token(tok)
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id, note
    assert len(tok) == len(tokenizer)  # no new token, no embedding resize


def test_truncation_is_counted(data_dir, tokenizer):
    train, _, _ = data.load_training_data(tiny_cfg(data_dir), tokenizer, verbose=False)
    lengths = data.token_lengths(train, tokenizer)
    cut = sorted(f for _, f in lengths)[len(lengths) // 2]
    rep = data.truncation_report(train, tokenizer, cut, "train")
    assert rep["truncated"] == sum(f > cut for _, f in lengths) > 0
    assert rep["answer_lost"] == 0 and "truncated at max_length" in data.describe_truncation(rep)
    shortest_prompt = min(p for p, _ in lengths)
    rep = data.truncation_report(train, tokenizer, shortest_prompt, "train")
    assert rep["answer_lost"] >= 1 and "dropped" in data.describe_truncation(rep)


def test_nonfinite_loss_stops_with_a_clear_error():
    cb = callbacks.StopOnNonFiniteLoss()
    state = type("S", (), {"global_step": 7})()
    cb.on_log(None, state, None, logs={"loss": 1.5, "learning_rate": 2e-4})  # fine
    with pytest.raises(callbacks.NonFiniteLossError, match="step 7.*learning_rate"):
        cb.on_log(None, state, None, logs={"loss": float("nan"), "learning_rate": 2e-4})
    with pytest.raises(callbacks.NonFiniteLossError):
        cb.on_log(None, state, None, logs={"eval_loss": float("inf")})


def test_out_of_memory_names_the_knobs(tmp_path):
    cfg = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), load_in_4bit=False,
                                     gradient_checkpointing=False)
    rt = runtime.Runtime(device="cuda", dtype="bfloat16", attn_implementation="sdpa", load_in_4bit=False,
                    optim="paged_adamw_8bit", bf16=True, fp16=False, packing=True, padding_free=True, world_size=1)

    class OOMTrainer:
        def train(self, resume_from_checkpoint=None):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    with pytest.raises(tr.FinetuneOOMError) as e:
        tr.run_training(OOMTrainer(), cfg, rt, None)
    msg = str(e.value)
    for knob in ("per_device_train_batch_size=4 -> 2", "max_length=2048 -> 1024", "gradient_checkpointing=True",
                 "load_in_4bit=True"):
        assert knob in msg


def test_sft_config_carries_the_resolved_knobs(tmp_path):
    cfg = full_cfg(tmp_path)
    rt = runtime.resolve_runtime(cfg, device="cpu")
    args = tr.build_sft_config(cfg, rt, has_eval=False)
    assert (args.gradient_checkpointing, args.use_liger_kernel, args.optim) == (True, False, "adamw_torch")


def tiny_llama(dtype=torch.bfloat16):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).to(dtype)


def test_4bit_path_keeps_non_quantised_weights_in_bf16_unless_asked(tmp_path):
    """The loader's preparation of a 4-bit base, run on a bf16 CPU model: frozen, checkpointing with input grads,
    no fp32 copy; upcast_non_quantized=True is peft's prepare_model_for_kbit_training (fp32)."""
    import dataclasses

    cfg = full_cfg(tmp_path)
    base = runtime.resolve_runtime(cfg, device="cpu")
    lean = dataclasses.replace(base, load_in_4bit=True, gradient_checkpointing=True, upcast_non_quantized=False)
    model = tr.prepare_model_for_training(tiny_llama(), cfg, lean)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in model.parameters())
    assert model.is_gradient_checkpointing and model.config.use_cache is False
    emb = model.get_input_embeddings()(torch.tensor([[1, 2, 3]]))
    assert emb.requires_grad  # the first layers' LoRA weights get gradients through checkpointed blocks
    # the same model prepared again without checkpointing (the benchmark's shared base): hooks and checkpointing off
    fast = dataclasses.replace(lean, gradient_checkpointing=False)
    model = tr.prepare_model_for_training(model, cfg, fast)
    assert not model.is_gradient_checkpointing
    assert not model.get_input_embeddings()(torch.tensor([[1, 2, 3]])).requires_grad
    upcast = dataclasses.replace(lean, upcast_non_quantized=True)
    model = tr.prepare_model_for_training(tiny_llama(), cfg, upcast)
    assert {p.dtype for p in model.parameters()} == {torch.float32} and model.is_gradient_checkpointing


def test_cli_flags_round_trip(tmp_path):
    cfg = FinetuneConfig.from_params(profile="full", data_dir=str(tmp_path), max_steps=10, lora_r=8,
                                     lora_target_modules=["q_proj", "v_proj"], learning_rate=1e-4,
                                     **ORIGINAL_RECIPE)
    again, print_only = config_from_argv(FinetuneConfig, stage.cli_args(cfg), "test")
    assert again.to_dict() == cfg.to_dict() and not print_only
    cmd = " ".join(stage.launch_command(cfg))
    assert "accelerate.commands.launch --multi_gpu" in cmd and "-m nbutils.finetune" in cmd


def test_command_line_types_its_values_and_prints_the_config(tmp_path, capsys):
    assert main(["--profile", "full", "--data_dir", str(tmp_path), "--packing", "True", "--lora-r", "8",
                 "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["packing"], printed["lora_r"], printed["profile"]) == (True, 8, "full")
    assert printed["learning_rate"] == 2e-4
    assert printed["checkpoint_dir"] == str(tmp_path / "models" / "checkpoints") and not (tmp_path / "models").exists()
    out = subprocess.run([sys.executable, "-m", "nbutils.finetune", "--print-config", "--profile", "full"],
                         capture_output=True, text=True, check=True, cwd=PROJECT_ROOT,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}).stdout
    assert json.loads(out) == FinetuneConfig.from_params(profile="full").to_dict()


# ------------------------------------------------------------------------------------------------ with the model
@pytest.fixture(scope="module")
def prepared(embedded_model_path, tmp_path_factory):
    """An SFTTrainer built the way train() builds it (unpacked and packed), without training."""
    d = tmp_path_factory.mktemp("prep")
    (d / "models" / "base").mkdir(parents=True)
    (d / "models" / "base" / embedded_model_path.name).symlink_to(embedded_model_path, target_is_directory=True)
    write_original_json(d)
    cfg = tiny_cfg(d)
    rt = runtime.resolve_runtime(cfg, device="cpu")
    from nbutils.models import load_tokenizer

    tok = load_tokenizer(cfg.base_model, cfg.data_dir)
    data.choose_pad_token(tok)
    train, test, _ = data.load_training_data(cfg, tok, verbose=False)
    model = tr.load_model_for_training(cfg, rt)
    trainer = tr.build_trainer(cfg, rt, model, tok, train, test)
    return cfg, rt, tok, trainer


def test_prompt_is_masked_and_eos_is_learned(prepared):
    cfg, rt, tok, trainer = prepared
    ex = trainer.train_dataset[0]
    ids, labels = ex["input_ids"], ex["labels"]
    text = tok.decode(ids)
    n_prompt = len(tok(text.split("### Response:\n")[0] + "### Response:\n")["input_ids"])
    assert all(l == -100 for l in labels[:n_prompt - 1])  # every prompt token is masked
    assert ids[-1] == tok.eos_token_id and labels[-1] == tok.eos_token_id  # EOS ends the answer and is trained
    trained = tok.decode([i for i, l in zip(ids, labels) if l != -100])
    assert "### Instruction" not in trained and trained.endswith(tok.eos_token)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    pad = batch["input_ids"] == tok.pad_token_id
    assert tok.pad_token_id != tok.eos_token_id and pad.any()
    assert (batch["labels"][pad] == -100).all()
    assert (batch["labels"] == tok.eos_token_id).sum() == 4  # one trained EOS per sample, padding or not


def test_packing_never_mixes_samples(prepared):
    """Padding-free packing: position_ids restart at every sample, and each sample's logits inside the packed
    row equal its logits alone (no attention across the boundary)."""
    cfg, rt, tok, trainer = prepared
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = [trainer.train_dataset[i] for i in range(3)]
    collate = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)
    batch = collate([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
    lengths = [len(e["input_ids"]) for e in examples]
    assert "attention_mask" not in batch
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [0, lengths[0], lengths[0] + lengths[1]]
    assert (batch["labels"][0, starts] == -100).all()  # no sample learns from the one before it
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        for s, e in zip(starts, examples):
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            torch.testing.assert_close(packed[s:s + len(e["input_ids"])], alone, atol=2e-4, rtol=1e-3)
    model.train()


class KillAt(TrainerCallback):
    """Simulates the process dying right after `step` (before any later checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated kill after step {self.step}")


class RecordBatches(TrainerCallback):
    """Records (global_step, first tokens of each row) for every training forward pass."""

    def __init__(self):
        self.batches, self._step = [], 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def hook(module, args_, kwargs_):
            if module.training and kwargs_.get("input_ids") is not None:
                self.batches.append((self._step, [tuple(r[:24].tolist()) for r in kwargs_["input_ids"]]))
        model.register_forward_pre_hook(hook, with_kwargs=True)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = state.global_step + 1


@pytest.mark.slow
def test_loss_falls_and_adapter_loads_anywhere(data_dir, tmp_path):
    cfg = tiny_cfg(data_dir, max_steps=8, learning_rate=2e-3, eval_steps=8, merge=True)
    result = tr.train(cfg, verbose=False)
    s = result.stats
    assert s["eval_loss_end"] < 0.8 * s["eval_loss_start"], s
    assert s["last_loss"] < s["first_loss"]
    out = Path(cfg.output_dir)
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "train_log.json",
                 "loss.png"):
        assert (out / name).exists(), name
    saved = json.loads((out / "train_log.json").read_text())
    entry = next(e for e in saved["log"] if "loss" in e and e["step"] > 1)
    assert {"loss", "learning_rate", "tokens_per_s", "peak_rss_gib"} <= set(entry)
    assert saved["truncation"][0]["rows"] == 24 and saved["summary"]["truncated_rows"] >= 0
    assert result.loss_plot == str(out / "loss.png") and result.rows() == saved["log"]
    assert "Fine-tuned SmolLM2-135M-Instruct for 8 steps" in result.summary()
    assert "train: 24 rows" in result.truncation_text() and list(result.table().columns)[:2] == ["step", "epoch"]
    # the base moved: the adapter still loads onto it and changes its output
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    moved = tmp_path / "elsewhere"
    moved.symlink_to(data_dir / "models" / "base" / "SmolLM2-135M-Instruct", target_is_directory=True)
    base = AutoModelForCausalLM.from_pretrained(moved)
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        before = base(x).logits
        tuned = PeftModel.from_pretrained(base, str(out))
        after = tuned(x).logits
    assert not torch.allclose(before, after)
    assert (Path(cfg.merged_dir) / "config.json").exists()


@pytest.mark.slow
def test_resume_after_kill_continues_at_the_right_step_with_the_same_data(data_dir, tmp_path, capsys):
    reference = RecordBatches()
    ref_cfg = tiny_cfg(data_dir, max_steps=4, save_steps=2, checkpoint_dir=str(tmp_path / "ref_ckpt"),
                       output_dir=str(tmp_path / "ref_adapter"), max_eval_samples=2)
    tr.train(ref_cfg, extra_callbacks=[reference], verbose=False)

    cfg = tiny_cfg(data_dir, max_steps=4, save_steps=2, max_eval_samples=2)
    killed = RecordBatches()
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, extra_callbacks=[killed, KillAt(3)], verbose=False)
    assert resume.last_checkpoint(cfg.checkpoint_dir).endswith("checkpoint-2")
    assert not (Path(cfg.output_dir) / "adapter_config.json").exists()

    resumed = RecordBatches()
    log = tr.train(cfg, extra_callbacks=[resumed], verbose=False).log
    assert log["resumed_from"].endswith("checkpoint-2") and log["global_step"] == 4
    assert [s for s, _ in resumed.batches] == [3, 4]
    assert [e["step"] for e in log["log"] if "loss" in e] == [1, 2, 3, 4]  # the log of steps 1-2 survived the kill
    assert [b for s, b in killed.batches if s <= 2] == [b for s, b in reference.batches if s <= 2]
    assert [b for _, b in resumed.batches] == [b for s, b in reference.batches if s >= 3]
    assert (Path(cfg.output_dir) / "adapter_config.json").exists()

    # a different configuration never resumes someone else's checkpoints, and never deletes them
    capsys.readouterr()
    other = tiny_cfg(data_dir, max_steps=2, save_steps=2, lora_r=8, max_eval_samples=2)
    log = tr.train(other, verbose=False).log
    aside = Path(log["checkpoints_set_aside"])
    assert log["resumed_from"] is None and log["global_step"] == 2
    assert aside.name.startswith("checkpoints.old-") and (aside / "checkpoint-4").is_dir()
    out = capsys.readouterr().out
    assert f"moved to {aside}" in out and "lora_r 4 -> 8" in out
    assert resume.last_checkpoint(cfg.checkpoint_dir).endswith("checkpoint-2")  # the new run's own

