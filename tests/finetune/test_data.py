"""nbutils.finetune.data: the original JSON format is accepted, rows without an answer are skipped with a
message, truncation is counted, the prompt is masked and EOS learned, packing never mixes samples."""
from __future__ import annotations

import json

import pytest
import torch

from nbutils.finetune import data, runtime
from nbutils.finetune import train as tr
from tests.support.finetune import tiny_cfg, write_original_json


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
