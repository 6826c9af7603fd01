"""Stage 04's data: the frozen split as TRL prompt/completion rows (loss on the answer only), a pad token other
than EOS, and how many rows max_length truncates."""
from __future__ import annotations

from ..templates import ALPACA, CHAT, build_prompt, chat_messages
from .config import FinetuneConfig

# Tokens tried as a pad token distinct from EOS, in order (Llama 3.1 ships a dedicated one; Llama 3 has 250 unused
# reserved tokens; most other families have <pad>/[PAD]/<|endoftext|>). None of them resizes the embeddings.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<|pad|>", "<pad>", "[PAD]",
                  "<|endoftext|>", "<unk>")


def choose_pad_token(tokenizer) -> str:
    """Set a pad token distinct from EOS when the vocabulary has one (no embedding resize); returns what it did.
    Labels never depend on it (TRL pads labels with -100), but a distinct pad keeps EOS meaningful everywhere."""
    eos_id = tokenizer.eos_token_id
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != eos_id:
        return f"pad token {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}) already distinct from EOS"
    vocab = tokenizer.get_vocab()
    for tok in PAD_CANDIDATES:
        if tok in vocab and vocab[tok] != eos_id and vocab[tok] != tokenizer.bos_token_id:
            tokenizer.pad_token = tok
            return f"pad token set to {tok!r} (id {tokenizer.pad_token_id}), distinct from EOS {tokenizer.eos_token!r}"
    tokenizer.pad_token = tokenizer.eos_token
    return (f"no spare token for padding: pad = EOS {tokenizer.eos_token!r}; EOS still trained (labels of padding "
            "are -100 by position, not by token id)")


def to_prompt_completion(ds, template: str, tokenizer=None):
    """Rows (instruction, input, output) -> TRL prompt/completion rows (loss on the completion only).
    Alpaca: plain strings, TRL appends EOS to the completion. Chat: conversational messages, the chat template
    closes the assistant turn with its end-of-turn token."""
    if template == CHAT:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("template='chat' needs a tokenizer with a chat template; use template='alpaca'")

        def convert(r):
            return {"prompt": chat_messages(r["instruction"], r["input"]),
                    "completion": [{"role": "assistant", "content": r["output"].strip()}]}
    else:
        def convert(r):
            return {"prompt": build_prompt(r["instruction"], r["input"], ALPACA), "completion": r["output"].strip()}
    return ds.map(convert, remove_columns=ds.column_names, desc="formatting")


def drop_empty_rows(ds, name: str):
    """Rows without an instruction or an output cannot teach anything: drop them, say which and why."""
    bad = [i for i, r in enumerate(ds) if not str(r["instruction"]).strip() or not str(r["output"]).strip()]
    for i in bad[:5]:
        print(f"  skipped {name} row {i}: empty instruction or output")
    if len(bad) > 5:
        print(f"  ... and {len(bad) - 5} more empty {name} rows")
    skip = set(bad)
    return ds.select([i for i in range(len(ds)) if i not in skip]), len(bad)


def load_training_data(cfg: FinetuneConfig, tokenizer, verbose: bool = True):
    """Train and eval prompt/completion datasets from the frozen split, plus counts for the log."""
    from ..splits import load_split

    dd = load_split(cfg.data_dir, dataset_dir=cfg.dataset_dir, seed=cfg.seed, verbose=verbose)
    train, n_bad_train = drop_empty_rows(dd["train"], "train")
    test, n_bad_test = drop_empty_rows(dd["test"], "test")
    if len(train) == 0:
        raise ValueError(f"the train split in {cfg.dataset_dir} has no usable rows")
    if cfg.max_train_samples:
        train = train.select(range(min(cfg.max_train_samples, len(train))))
    if cfg.max_eval_samples:
        test = test.select(range(min(cfg.max_eval_samples, len(test))))
    info = {"n_train": len(train), "n_eval": len(test), "skipped_empty": n_bad_train + n_bad_test}
    return (to_prompt_completion(train, cfg.template, tokenizer),
            to_prompt_completion(test, cfg.template, tokenizer) if len(test) else None, info)


# ------------------------------------------------------------------------------------------------ truncation
def token_lengths(ds, tokenizer) -> list[tuple[int, int]]:
    """(prompt tokens, prompt+completion+EOS tokens) per row, tokenised as TRL will."""
    out = []
    for r in ds:
        if isinstance(r["prompt"], list):
            p = tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False)
            full = tokenizer.apply_chat_template(r["prompt"] + r["completion"], tokenize=False)
            n_p = len(tokenizer(p, add_special_tokens=False)["input_ids"])
            n_f = len(tokenizer(full, add_special_tokens=False)["input_ids"])
        else:
            n_p = len(tokenizer(r["prompt"])["input_ids"])
            n_f = len(tokenizer(r["prompt"] + r["completion"] + tokenizer.eos_token)["input_ids"])
        out.append((n_p, n_f))
    return out


def truncation_report(ds, tokenizer, max_length: int | None, name: str = "train") -> dict:
    """How many rows exceed max_length (their answer loses its end, and EOS), and how many lose the whole answer
    (TRL drops those). Printed, and stored in train_log.json."""
    lengths = token_lengths(ds, tokenizer)
    full = [f for _, f in lengths]
    limit = max_length or max(full, default=0)
    return {"split": name, "rows": len(full), "max_length": max_length,
            "truncated": sum(f > limit for f in full),
            "answer_lost": sum(p >= limit for p, _ in lengths),
            "tokens_total": sum(min(f, limit) for f in full),
            "tokens_cut": sum(max(0, f - limit) for f in full),
            "longest": max(full, default=0), "mean": round(sum(full) / max(1, len(full)), 1)}


def describe_truncation(rep: dict) -> str:
    s = (f"{rep['split']}: {rep['rows']} rows, mean {rep['mean']} / longest {rep['longest']} tokens; "
         f"{rep['truncated']} truncated at max_length={rep['max_length']} ({rep['tokens_cut']} tokens cut)")
    if rep["answer_lost"]:
        s += f", {rep['answer_lost']} dropped (the prompt alone fills max_length)"
    return s


def check_trainable(rep: dict) -> None:
    """Before the model loads: a split where every row's prompt alone fills max_length leaves TRL nothing to train
    on (it fails later with num_samples=0); say so with the numbers and the knob."""
    if rep["rows"] and rep["answer_lost"] >= rep["rows"]:
        raise ValueError(f"every one of the {rep['rows']} {rep['split']} rows is longer than max_length="
                         f"{rep['max_length']} tokens before its answer starts (longest {rep['longest']}): nothing "
                         f"would be trained on. Raise max_length (or shorten the inputs)")
