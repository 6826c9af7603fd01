"""Stage 05: base vs tuned on the held-out split, deterministic, with paired-bootstrap error bars.

One copy of the base model is loaded and the LoRA adapter attached to it; the base is scored with the adapter
disabled (`with model.disable_adapter():`), the tuned model with it enabled. Generation is greedy by default,
batched with left padding over length-sorted prompts, and cached per example so a killed run resumes.
Metrics: ROUGE-1/2/L (through `evaluate`, with the metric module shipped in nbutils/metrics/rouge), corpus
BLEU (sacrebleu), the reference answer's mean token NLL / perplexity under each model, answer lengths; every
one with a paired bootstrap 95% CI of tuned - base.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import numpy as np

from nbutils.config import StageConfig
from nbutils.io import append_jsonl, read_json, read_jsonl, sha256_file, sha256_text, write_json, write_jsonl
from nbutils.templates import ALPACA, build_prompt

ROUGE_METRIC_DIR = Path(__file__).resolve().parent / "metrics" / "rouge"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# Text after which an Alpaca-style answer is over: a model that goes on writing a next "### Instruction:" (or any
# other "### " section, e.g. the "### Output:" small models invent) has finished its answer. Generation also stops at these (per sequence), which saves most of the base
# model's rambling on a GPU.
STOP_MARKERS = ("\n### ", "### Instruction:", "### Input:", "### Response:")
TRAIN_LOG_FILES = ("train_log.json", "train_config.json", "training_config.json")


@dataclass
class EvalConfig(StageConfig):
    """Parameters of 05_evaluate (notebook parameters with the same names)."""

    PROFILE_DEFAULTS: ClassVar[dict] = {
        "demo": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "max_examples": 12, "max_new_tokens": 40,
                 "batch_size": 12, "n_bootstrap": 1000},
        "full": {"base_model": "meta-llama/Meta-Llama-3-8B", "max_examples": 0, "max_new_tokens": 512,
                 "batch_size": 64, "n_bootstrap": 10000, "max_prompt_tokens": 2048},
    }
    PATH_FIELDS: ClassVar[dict] = {"dataset_dir": "dataset", "adapter_dir": "adapter", "reports_dir": "reports",
                                   "cache_dir": "cache"}

    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"  # hub id or local folder (same as 04's)
    adapter_dir: str | None = None        # None: data_dir/models/adapter
    dataset_dir: str | None = None        # None: data_dir/dataset (made from triples / original JSON if absent)
    reports_dir: str | None = None        # None: data_dir/reports
    cache_dir: str | None = None          # None: data_dir/cache (predictions cache under cache/eval/)
    split: str = "test"
    max_examples: int = 0                 # 0: the whole split; else its first N rows
    max_new_tokens: int = 256
    batch_size: int = 16                  # prompts per generate call (length-sorted)
    nll_batch_size: int = 0               # 0: same as batch_size
    max_prompt_tokens: int = 1024         # longer prompts keep their last tokens (counted in the report)
    max_reference_tokens: int = 512       # reference answers scored for NLL up to this many tokens
    template: str | None = None           # None: what 04 recorded in the adapter's train_log.json, else alpaca
    do_sample: bool = False               # greedy (deterministic) unless True
    temperature: float = 0.5              # used only when do_sample (the original's values)
    top_p: float = 0.5
    seed: int = 42                        # sampling and bootstrap seed
    load_in_4bit: bool | None = None      # None: 4-bit only on a CUDA GPU with < 40 GiB; bf16 otherwise
    static_cache: bool = False            # generate(cache_implementation="static") (GPU; measure first)
    n_bootstrap: int = 2000
    confidence: float = 0.95
    n_show: int = 3                       # best and worst examples shown in report.md
    resume: bool = True                   # reuse cached predictions of finished examples
    threads: int = 0                      # CPU threads for torch (0: torch's default)
    judge_backend: str = ""               # "" (off), "groq", "openai" or "local": pairwise LLM judge (nbutils.llm)
    judge_model: str | None = None        # None: the backend's default model
    judge_base_url: str | None = None     # OpenAI-compatible server URL (judge_backend="openai")
    judge_max_examples: int = 0           # 0: judge every evaluated example


# ---------------------------------------------------------------- data
def load_eval_examples(cfg: EvalConfig, verbose: bool = True) -> list[dict]:
    """The rows to evaluate: the frozen split's `cfg.split`, first `max_examples` (0: all); rows without an
    instruction or a reference answer are skipped with a message naming them."""
    from nbutils.splits import load_split

    dd = load_split(cfg.data_dir, dataset_dir=cfg.dataset_dir, verbose=verbose)
    if cfg.split not in dd:
        raise KeyError(f"split {cfg.split!r} not in {cfg.dataset_dir} (has {', '.join(dd)})")
    rows = []
    for i, r in enumerate(dd[cfg.split]):
        if not str(r.get("instruction") or "").strip() or not str(r.get("output") or "").strip():
            print(f"skipping {cfg.split} row {i} (paper {r.get('paper_id') or '?'}): empty "
                  f"{'instruction' if not str(r.get('instruction') or '').strip() else 'reference output'}")
            continue
        rows.append({"id": i, **{k: r.get(k, "") for k in ("instruction", "input", "output", "paper_id", "page")}})
        if cfg.max_examples and len(rows) >= cfg.max_examples:
            break
    if not rows:
        raise ValueError(f"nothing to evaluate: the {cfg.split!r} split of {cfg.dataset_dir} has no usable rows")
    if verbose:
        print(f"evaluating {len(rows)} {cfg.split} examples")
    return rows


def recorded_template(adapter_dir: str | Path) -> str | None:
    """The prompt template stage 04 trained with, if its log in the adapter folder says."""
    for name in TRAIN_LOG_FILES:
        p = Path(adapter_dir) / name
        if not p.exists():
            continue
        try:
            log = read_json(p)
        except (OSError, ValueError):
            continue
        for d in (log, log.get("config") or {}, log.get("params") or {}) if isinstance(log, dict) else ():
            if isinstance(d, dict) and isinstance(d.get("template"), str):
                return d["template"]
    return None


def resolve_template(cfg: EvalConfig) -> str:
    recorded = recorded_template(cfg.adapter_dir)
    if cfg.template and recorded and cfg.template != recorded:
        print(f"warning: the adapter was trained with template {recorded!r} but template={cfg.template!r} "
              f"was asked for; using {cfg.template!r}")
    return cfg.template or recorded or ALPACA


# ---------------------------------------------------------------- model
def check_adapter(adapter_dir: str | Path) -> Path:
    p = Path(adapter_dir)
    if not (p / "adapter_config.json").exists():
        raise FileNotFoundError(f"no PEFT adapter in {p} (adapter_config.json missing): run "
                                f"notebooks/04_finetune.ipynb first, or pass adapter_dir=")
    return p


def choose_4bit(cfg: EvalConfig, device: str) -> bool:
    """bf16 (adapter attached, no dequantisation in every matmul) unless the GPU is small."""
    if cfg.load_in_4bit is not None:
        return bool(cfg.load_in_4bit) and device == "cuda"
    if device != "cuda":
        return False
    import torch

    return torch.cuda.get_device_properties(0).total_memory < 40 * 2**30


def load_tokenizer_for_eval(cfg: EvalConfig):
    """The adapter's tokenizer when 04 saved one (same special tokens as training), else the base's;
    left padding, pad = eos when the tokenizer has none."""
    from transformers import AutoTokenizer

    from nbutils.models import load_tokenizer

    if (Path(cfg.adapter_dir) / "tokenizer_config.json").exists():
        tok = AutoTokenizer.from_pretrained(cfg.adapter_dir)
    else:
        tok = load_tokenizer(cfg.base_model, cfg.data_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model_with_adapter(cfg: EvalConfig, verbose: bool = True):
    """(PeftModel in eval mode, tokenizer): the base loaded once, the adapter attached (not merged)."""
    from peft import PeftModel

    from nbutils.models import describe_runtime, load_causal_lm, pick_device

    adapter = check_adapter(cfg.adapter_dir)
    device = pick_device()
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    four_bit = choose_4bit(cfg, device)
    if verbose:
        print(describe_runtime(device) + (", base in 4-bit" if four_bit else ""))
    tok = load_tokenizer_for_eval(cfg)
    base = load_causal_lm(cfg.base_model, cfg.data_dir, load_in_4bit=four_bit)
    model = PeftModel.from_pretrained(base, str(adapter))
    model.eval()
    return model, tok


def model_fingerprint(cfg: EvalConfig) -> dict:
    """What identifies the weights (for the prediction cache): base name + config hash, adapter weights hash."""
    from nbutils.models import resolve_model_path

    path = resolve_model_path(cfg.base_model, cfg.data_dir)
    cfg_file = Path(path) / "config.json"
    base_id = sha256_text(path, sha256_file(cfg_file) if cfg_file.exists() else "")
    adapter = Path(cfg.adapter_dir)
    weights = sorted(adapter.glob("adapter_model.*"))
    adapter_id = sha256_text(*(sha256_file(w) for w in weights), sha256_file(adapter / "adapter_config.json"))
    return {"base": base_id[:16], "adapter": adapter_id[:16]}


# ---------------------------------------------------------------- generation
@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 0.5
    top_p: float = 0.5
    seed: int = 42
    min_new_tokens: int = 0           # benchmarks only: force equal work when EOS never comes
    static_cache: bool = False
    stop_markers: tuple[str, ...] = STOP_MARKERS

    def key(self) -> str:
        d = asdict(self)
        if not self.do_sample:
            d.pop("temperature"), d.pop("top_p"), d.pop("seed")
        d.pop("static_cache")
        return json.dumps(d, sort_keys=True)


def eos_ids(tok, model=None) -> list[int]:
    """Every id that ends an answer: the tokenizer's eos and pad, plus the model's generation eos ids."""
    ids = {tok.eos_token_id, tok.pad_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None) if model is not None else None
    ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    return sorted(i for i in ids if i is not None)


def left_pad(batch: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) long tensors, shorter rows padded on the left."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        if len(x):
            ids[i, width - len(x):] = torch.tensor(list(x), dtype=torch.long)
            mask[i, width - len(x):] = 1
    return ids, mask


def cut_at_stop(ids: Sequence[int], stop: Sequence[int]) -> tuple[list[int], bool]:
    """New tokens up to the first stop id (excluded), and whether one was met."""
    stop = set(stop)
    for j, t in enumerate(ids):
        if t in stop:
            return list(ids[:j]), True
    return list(ids), False


def clean_answer(text: str, markers: Sequence[str] = STOP_MARKERS) -> str:
    """The answer text: cut where the model starts a next '### ...' section, stripped."""
    cut = len(text)
    for m in markers:
        k = text.find(m)
        if k != -1:
            cut = min(cut, k)
    return text[:cut].strip()


def generate_batch(model, batch: Sequence[Sequence[int]], pad_id: int, stop_ids: Sequence[int], gen: GenParams,
                   tokenizer=None) -> list[dict]:
    """One left-padded `generate` call; per row the new token ids up to the stop token, and whether it
    stopped (else it ran into max_new_tokens). `tokenizer` enables the per-sequence stop markers."""
    import torch

    device = next(model.parameters()).device
    ids, mask = left_pad(batch, pad_id)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=gen.max_new_tokens, min_new_tokens=gen.min_new_tokens or None, do_sample=gen.do_sample,
        pad_token_id=pad_id, eos_token_id=list(stop_ids), num_beams=1)
    if gen.do_sample:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if gen.static_cache:
        kwargs["cache_implementation"] = "static"
    if tokenizer is not None and gen.stop_markers and not gen.min_new_tokens:
        kwargs.update(stop_strings=list(gen.stop_markers), tokenizer=tokenizer)
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
    new = out[:, ids.shape[1]:].tolist()
    rows = []
    for row in new:
        kept, stopped = cut_at_stop(row, stop_ids)
        rows.append({"ids": kept, "n_new_tokens": len(kept) + int(stopped), "stopped": stopped})
    return rows


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: a memory problem shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


class PredictionCache:
    """Finished predictions of one (model, adapter on/off, template, generation params) run, one JSON line per
    example, fsync'd after every batch: a killed run loses at most the batch in flight."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.done: dict[str, dict] = {r["key"]: r for r in read_jsonl(self.path)} if self.path else {}

    def get(self, key: str) -> dict | None:
        return self.done.get(key)

    def add(self, records: list[dict]) -> None:
        for r in records:
            self.done[r["key"]] = r
        if self.path:
            append_jsonl(self.path, records)


def encode_prompts(tok, prompts: Sequence[str], max_prompt_tokens: int) -> tuple[list[list[int]], int]:
    """Token ids of each prompt (keeping the last `max_prompt_tokens`) and how many were cut."""
    enc = tok(list(prompts), add_special_tokens=True)["input_ids"]
    cut = sum(len(x) > max_prompt_tokens for x in enc)
    return [x[-max_prompt_tokens:] for x in enc], cut


def generate_answers(model, tok, prompts: Sequence[str], gen: GenParams, batch_size: int = 16,
                     max_prompt_tokens: int = 1024, cache: PredictionCache | None = None,
                     desc: str = "generate") -> list[dict]:
    """Answers for `prompts` (same order): {"text", "n_new_tokens", "stopped"}; cached ones are reused."""
    import torch
    from tqdm.auto import tqdm

    cache = cache or PredictionCache(None)
    keys = [sha256_text(p) for p in prompts]
    todo = [i for i, k in enumerate(keys) if cache.get(k) is None]
    enc, _ = encode_prompts(tok, [prompts[i] for i in todo], max_prompt_tokens) if todo else ([], 0)
    stop = eos_ids(tok, model)
    batches = length_sorted_batches([len(x) for x in enc], batch_size)
    with tqdm(total=len(prompts), desc=desc, initial=len(prompts) - len(todo), unit="ex") as bar:
        for b, batch in enumerate(batches):
            if gen.do_sample:
                torch.manual_seed(gen.seed + b)
            rows = generate_batch(model, [enc[j] for j in batch], tok.pad_token_id, stop, gen, tokenizer=tok)
            records = []
            for j, row in zip(batch, rows):
                raw = tok.decode(row["ids"], skip_special_tokens=True)
                text = clean_answer(raw, gen.stop_markers)
                stopped = row["stopped"] or text != raw.strip()  # EOS, or a stop marker ended the answer
                records.append({"key": keys[todo[j]], "text": text, "raw": raw,
                                "n_new_tokens": row["n_new_tokens"], "stopped": stopped})
            cache.add(records)
            bar.update(len(batch))
    return [cache.get(k) for k in keys]


# ---------------------------------------------------------------- reference NLL (teacher forcing)
def reference_nll(model, tok, prompts: Sequence[str], references: Sequence[str], batch_size: int = 8,
                  max_prompt_tokens: int = 1024, max_reference_tokens: int = 512,
                  desc: str = "reference NLL") -> tuple[np.ndarray, np.ndarray]:
    """Per example: the summed negative log-likelihood (nats) of the reference answer's tokens given the
    prompt, and the number of tokens. Left-padded batches so every answer ends the row: only the last
    `max answer length` positions' logits are computed (`logits_to_keep`), which keeps a 128k vocabulary cheap."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    prompt_ids, _ = encode_prompts(tok, prompts, max_prompt_tokens)
    answer_ids = [tok(r, add_special_tokens=False)["input_ids"][:max_reference_tokens] for r in references]
    seqs = [p + a for p, a in zip(prompt_ids, answer_ids)]
    nll, ntok = np.zeros(len(seqs)), np.array([len(a) for a in answer_ids], dtype=float)
    device = next(model.parameters()).device
    for batch in tqdm(length_sorted_batches([len(s) for s in seqs], batch_size), desc=desc, unit="batch"):
        ids, mask = left_pad([seqs[i] for i in batch], tok.pad_token_id)
        k = max(len(answer_ids[i]) for i in batch)
        if k == 0:
            continue
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           logits_to_keep=k + 1).logits[:, -k - 1:-1].float()
        targets = ids[:, -k:].to(device)
        tok_nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                  reduction="none").view(len(batch), k)
        for r, i in enumerate(batch):
            n = len(answer_ids[i])
            nll[i] = tok_nll[r, k - n:].sum().item() if n else 0.0
    return nll, ntok


# ---------------------------------------------------------------- metrics
def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1/2/L F1 via `evaluate` and the metric module shipped in nbutils/metrics/rouge."""
    import evaluate as hf_evaluate

    rouge = hf_evaluate.load(str(ROUGE_METRIC_DIR))
    out = rouge.compute(predictions=list(predictions), references=list(references), rouge_types=list(ROUGE_TYPES),
                        use_aggregator=False, use_stemmer=True)
    return {t: [float(x) for x in out[t]] for t in ROUGE_TYPES}


def bleu_stats(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-example BLEU sufficient statistics (n, 10): 4 n-gram matches, 4 totals, hyp length, ref length.
    Summed over any subset they give that subset's corpus BLEU exactly (what the bootstrap needs)."""
    from sacrebleu.metrics.bleu import BLEU

    bleu = BLEU()
    rows = []
    for h, r in zip(predictions, references):
        s = bleu.corpus_score([h], [[r]])
        rows.append(list(s.counts) + list(s.totals) + [s.sys_len, s.ref_len])
    return np.asarray(rows, dtype=float).reshape(-1, 10)


def corpus_bleu_from_stats(sums: np.ndarray) -> np.ndarray:
    """Corpus BLEU (sacrebleu's defaults: exp smoothing, 4-grams) for each row of summed statistics (B, 10)."""
    from sacrebleu.metrics.bleu import BLEU

    sums = np.atleast_2d(sums)
    return np.array([BLEU.compute_bleu([int(x) for x in s[:4]], [int(x) for x in s[4:8]], int(s[8]), int(s[9]),
                                       smooth_method="exp").score for s in sums])


def sentence_bleu(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    import sacrebleu

    return [float(sacrebleu.sentence_bleu(h, [r]).score) for h, r in zip(predictions, references)]


def word_count(text: str) -> int:
    return len(text.split())


# ---------------------------------------------------------------- paired bootstrap
@dataclass
class MetricSpec:
    """A metric as a function of per-example statistics summed over a (re)sample: value = fn(sums)."""

    name: str
    base: np.ndarray       # (n, k)
    tuned: np.ndarray      # (n, k)
    fn: Callable[[np.ndarray], np.ndarray]   # (B, k) sums -> (B,) values
    higher_is_better: bool | None = True     # None: descriptive (e.g. length), no better/worse verdict


def mean_spec(name: str, base: Sequence[float], tuned: Sequence[float],
              higher_is_better: bool | None = True) -> MetricSpec:
    b, t = np.asarray(base, float), np.asarray(tuned, float)
    ones = np.ones_like(b)
    return MetricSpec(name, np.stack([b, ones], 1), np.stack([t, ones], 1), lambda s: s[:, 0] / s[:, 1],
                      higher_is_better)


def ratio_spec(name: str, base_num, base_den, tuned_num, tuned_den, transform=None,
               higher_is_better: bool = False) -> MetricSpec:
    """sum(num)/sum(den) (e.g. token-weighted NLL), optionally transformed (exp -> perplexity)."""
    f = transform or (lambda x: x)
    return MetricSpec(name, np.stack([np.asarray(base_num, float), np.asarray(base_den, float)], 1),
                      np.stack([np.asarray(tuned_num, float), np.asarray(tuned_den, float)], 1),
                      lambda s: f(s[:, 0] / np.maximum(s[:, 1], 1e-12)), higher_is_better)


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) multiplicities of each example in each resample (multinomial = sampling with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def paired_bootstrap(specs: Sequence[MetricSpec], n_boot: int = 2000, seed: int = 42,
                     confidence: float = 0.95) -> dict[str, dict]:
    """Per metric: base, tuned, delta (tuned - base) on the full sample, percentile CIs of each and of the
    delta from the SAME resamples for both models (paired), and the share of resamples where tuned is not
    better (a one-sided bootstrap p-value)."""
    n = len(specs[0].base)
    w = bootstrap_weights(n, n_boot, seed)
    lo_q, hi_q = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2
    out = {}
    for s in specs:
        full_b = float(s.fn(s.base.sum(0, keepdims=True))[0])
        full_t = float(s.fn(s.tuned.sum(0, keepdims=True))[0])
        bb, bt = s.fn(w @ s.base), s.fn(w @ s.tuned)
        d = bt - bb
        worse = None if s.higher_is_better is None else (d <= 0) if s.higher_is_better else (d >= 0)
        out[s.name] = {
            "base": full_b, "tuned": full_t, "delta": full_t - full_b,
            "base_ci": [float(x) for x in np.percentile(bb, [lo_q, hi_q])],
            "tuned_ci": [float(x) for x in np.percentile(bt, [lo_q, hi_q])],
            "delta_ci": [float(x) for x in np.percentile(d, [lo_q, hi_q])],
            "p_not_better": None if worse is None else float(worse.mean()), "higher_is_better": s.higher_is_better,
        }
    return out


# ---------------------------------------------------------------- LLM-as-judge (optional)
JUDGE_SYSTEM = ("You are a strict, impartial grader of answers to questions about research papers. Judge which "
                "answer is more correct, complete and faithful to the reference answer. Ignore answer order and "
                "length. Reply with exactly one word: A, B or TIE.")


def judge_messages(row: dict, reference: str, answer_a: str, answer_b: str) -> list[dict]:
    ctx = f"Context:\n{row['input']}\n\n" if str(row.get("input") or "").strip() else ""
    user = (f"Question:\n{row['instruction']}\n\n{ctx}Reference answer:\n{reference}\n\n"
            f"Answer A:\n{answer_a or '(empty)'}\n\nAnswer B:\n{answer_b or '(empty)'}\n\n"
            "Which answer is better? Reply A, B or TIE.")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_verdict(text: str) -> str | None:
    """'A', 'B' or 'TIE' from the judge's reply (first such word), None when it says none of them."""
    import re

    m = re.search(r"\b(TIE|A|B)\b", (text or "").upper())
    return m.group(1) if m else None


def judge_pairwise(rows, refs, base: Sequence[str], tuned: Sequence[str], backend, cache_path: str | Path | None,
                   workers: int = 4) -> list[dict]:
    """Per example, the judge sees (A=base, B=tuned) and (A=tuned, B=base). tuned_pref = mean over the orders
    answered of 1 (tuned preferred), 0.5 (tie), 0 (base preferred); None when neither order got a verdict.
    Verdicts are cached (fsync'd as they arrive), so a rerun pays only for the missing ones."""
    from tqdm.auto import tqdm

    from nbutils.llm import LLMError, iter_completions

    cache = PredictionCache(cache_path)
    who = f"{getattr(backend, 'name', '?')}/{getattr(backend, 'model', '?')}"
    jobs, keys = [], {}
    for i, r in enumerate(rows):
        for order, (a, b) in (("base_first", (base[i], tuned[i])), ("tuned_first", (tuned[i], base[i]))):
            msgs = judge_messages(r, refs[i], a, b)
            key = sha256_text(who, json.dumps(msgs))
            keys[(i, order)] = key
            if cache.get(key) is None:
                jobs.append(((i, order, key), msgs))
    failed = 0
    for (i, order, key), res in tqdm(iter_completions(backend, jobs, workers=workers, max_tokens=8, temperature=0.0),
                                     total=len(jobs), desc="judge", unit="call"):
        if isinstance(res, LLMError):
            failed += 1
            print(f"judge: example {rows[i]['id']} ({order}) failed: {res.describe()}")
            continue
        cache.add([{"key": key, "reply": res.text, "verdict": parse_verdict(res.text)}])
    if failed:
        print(f"judge: {failed} call(s) failed; rerun to retry only those")
    out = []
    for i in range(len(rows)):
        prefs, verdicts = [], {}
        for order in ("base_first", "tuned_first"):
            rec = cache.get(keys[(i, order)])
            v = rec["verdict"] if rec else None
            verdicts[order] = v
            if v is not None:
                tuned_letter = "B" if order == "base_first" else "A"
                prefs.append(0.5 if v == "TIE" else float(v == tuned_letter))
        consistent = len(prefs) == 2 and prefs[0] == prefs[1]
        out.append({"tuned_pref": float(np.mean(prefs)) if prefs else None, "verdicts": verdicts,
                    "consistent": consistent})
    return out


def judge_metrics(judged: list[dict], n_boot: int, seed: int, confidence: float) -> dict:
    """The judge's preference share of each model with a bootstrap CI (examples with a verdict), and how often
    its verdict survived swapping the answer order."""
    s = np.array([j["tuned_pref"] for j in judged if j["tuned_pref"] is not None], float)
    if not len(s):
        return {}
    m = paired_bootstrap([mean_spec("judge_preference", 1 - s, s)], n_boot, seed, confidence)
    m["judge_preference"]["n_judged"] = int(len(s))
    m["judge_preference"]["order_consistency"] = float(np.mean([j["consistent"] for j in judged
                                                                if j["tuned_pref"] is not None]))
    return m


# ---------------------------------------------------------------- the stage
def run_key(cfg: EvalConfig, fingerprint: dict, variant: str, template: str, gen: GenParams, four_bit: bool) -> str:
    return sha256_text(json.dumps(fingerprint, sort_keys=True), variant, template, gen.key(),
                       f"4bit={four_bit}", f"max_prompt_tokens={cfg.max_prompt_tokens}")[:20]


def evaluate_models(cfg: EvalConfig, model=None, tok=None, verbose: bool = True) -> dict:
    """Generate and score base and tuned answers; write reports/ (metrics.json, predictions.jsonl, plots,
    report.md). `model`/`tok` may be passed in (a PeftModel) to skip loading. Returns metrics.json's dict."""
    from nbutils.models import pick_device

    t0 = time.time()
    if model is None:
        check_adapter(cfg.adapter_dir)
    rows = load_eval_examples(cfg, verbose)
    template = resolve_template(cfg)
    if model is None or tok is None:
        model, tok = load_model_with_adapter(cfg, verbose)
    prompts = [build_prompt(r["instruction"], r["input"], template, tok) for r in rows]
    refs = [r["output"].strip() for r in rows]
    gen = GenParams(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample, temperature=cfg.temperature,
                    top_p=cfg.top_p, seed=cfg.seed, static_cache=cfg.static_cache)
    fp = model_fingerprint(cfg)
    four_bit = bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model.base_model, "is_loaded_in_4bit", False))
    _, n_cut = encode_prompts(tok, prompts, cfg.max_prompt_tokens)
    if n_cut:
        print(f"note: {n_cut} prompt(s) longer than max_prompt_tokens={cfg.max_prompt_tokens} keep their last tokens")
    nll_bs = cfg.nll_batch_size or cfg.batch_size
    answers, nll = {}, {}
    t_gen = 0.0
    for variant in ("base", "tuned"):
        cache_path = Path(cfg.cache_dir) / "eval" / f"{variant}-{run_key(cfg, fp, variant, template, gen, four_bit)}.jsonl"
        cache = PredictionCache(cache_path if cfg.resume else None)
        if not cfg.resume:
            cache_path.unlink(missing_ok=True)
            cache.path = cache_path
        t1 = time.time()
        if variant == "base":
            with model.disable_adapter():
                answers[variant] = generate_answers(model, tok, prompts, gen, cfg.batch_size, cfg.max_prompt_tokens,
                                                    cache, desc="base answers")
                nll[variant] = reference_nll(model, tok, prompts, refs, nll_bs, cfg.max_prompt_tokens,
                                             cfg.max_reference_tokens, desc="base reference NLL")
        else:
            answers[variant] = generate_answers(model, tok, prompts, gen, cfg.batch_size, cfg.max_prompt_tokens,
                                                cache, desc="tuned answers")
            nll[variant] = reference_nll(model, tok, prompts, refs, nll_bs, cfg.max_prompt_tokens,
                                         cfg.max_reference_tokens, desc="tuned reference NLL")
        t_gen += time.time() - t1
    judged = None
    if cfg.judge_backend:
        from nbutils.llm import make_backend

        backend = make_backend(cfg.judge_backend, cfg.judge_model, cfg.judge_base_url, data_dir=cfg.data_dir)
        k = cfg.judge_max_examples or len(rows)
        judged = judge_pairwise(rows[:k], refs[:k], [a["text"] for a in answers["base"][:k]],
                                [a["text"] for a in answers["tuned"][:k]], backend,
                                Path(cfg.cache_dir) / "eval" / "judge.jsonl")
    result = score_and_report(cfg, rows, prompts, refs, answers, nll, template=template, judged=judged)
    result["runtime"] = {"device": pick_device(), "base_4bit": four_bit, "seconds_total": round(time.time() - t0, 1),
                         "seconds_generate_and_nll": round(t_gen, 1),
                         "generated_tokens": int(sum(a["n_new_tokens"] for v in answers.values() for a in v)),
                         "prompts_truncated": n_cut, "fingerprint": fp}
    write_json(Path(cfg.reports_dir) / "metrics.json", result)
    return result


def build_specs(refs, answers, nll, rouge: dict, bleu: dict, n_new: dict) -> list[MetricSpec]:
    specs = [mean_spec(t, rouge["base"][t], rouge["tuned"][t]) for t in ROUGE_TYPES]
    specs.append(MetricSpec("bleu", bleu["base"], bleu["tuned"], corpus_bleu_from_stats))
    (bn, bt), (tn, tt) = nll["base"], nll["tuned"]
    specs.append(ratio_spec("ref_nll", bn, bt, tn, tt))
    specs.append(ratio_spec("ref_perplexity", bn, bt, tn, tt, transform=np.exp))
    specs.append(mean_spec("answer_words", [word_count(a["text"]) for a in answers["base"]],
                           [word_count(a["text"]) for a in answers["tuned"]], higher_is_better=None))
    specs.append(mean_spec("hit_max_new_tokens", [not a["stopped"] for a in answers["base"]],
                           [not a["stopped"] for a in answers["tuned"]], higher_is_better=False))
    return specs


METRIC_LABELS = {"rouge1": "ROUGE-1 F1", "rouge2": "ROUGE-2 F1", "rougeL": "ROUGE-L F1", "bleu": "BLEU (corpus)",
                 "ref_nll": "reference NLL (nats/token)", "ref_perplexity": "reference perplexity",
                 "answer_words": "answer length (words)", "hit_max_new_tokens": "share cut at max_new_tokens",
                 "judge_preference": "LLM judge: share preferred (both orders)"}


def score_and_report(cfg: EvalConfig, rows, prompts, refs, answers: dict, nll: dict, template: str = ALPACA,
                     judged: list[dict] | None = None) -> dict:
    """Metrics, bootstrap CIs and every file under reports/ from finished answers and NLLs."""
    reports = Path(cfg.reports_dir)
    texts = {v: [a["text"] for a in answers[v]] for v in ("base", "tuned")}
    rouge = {v: rouge_scores(texts[v], refs) for v in texts}
    bleu = {v: bleu_stats(texts[v], refs) for v in texts}
    sbleu = {v: sentence_bleu(texts[v], refs) for v in texts}
    n_new = {v: [a["n_new_tokens"] for a in answers[v]] for v in texts}
    specs = build_specs(refs, answers, nll, rouge, bleu, n_new)
    metrics = paired_bootstrap(specs, cfg.n_bootstrap, cfg.seed, cfg.confidence)
    if judged:
        metrics.update(judge_metrics(judged, cfg.n_bootstrap, cfg.seed, cfg.confidence))
    per_example = []
    for i, r in enumerate(rows):
        scores = {}
        for v in ("base", "tuned"):
            n_tok = nll[v][1][i]
            scores[v] = {**{t: rouge[v][t][i] for t in ROUGE_TYPES}, "bleu": sbleu[v][i],
                         "ref_nll": float(nll[v][0][i] / n_tok) if n_tok else None,
                         "answer_words": word_count(texts[v][i]), "new_tokens": n_new[v][i],
                         "stopped": answers[v][i]["stopped"]}
        if judged and i < len(judged):
            scores["judge"] = judged[i]
        per_example.append({"id": r["id"], "paper_id": r.get("paper_id", ""), "instruction": r["instruction"],
                             "input": r["input"], "prompt": prompts[i], "reference": refs[i], "base": texts["base"][i],
                             "tuned": texts["tuned"][i], "scores": scores,
                             "delta_rougeL": scores["tuned"]["rougeL"] - scores["base"]["rougeL"]})
    result = {
        "n_examples": len(rows), "template": template, "split": cfg.split,
        "reference_words_mean": float(np.mean([word_count(x) for x in refs])),
        "generation": {"do_sample": cfg.do_sample, "max_new_tokens": cfg.max_new_tokens,
                       **({"temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed} if cfg.do_sample else {})},
        "bootstrap": {"n": cfg.n_bootstrap, "seed": cfg.seed, "confidence": cfg.confidence, "paired": True},
        "metrics": metrics, "labels": METRIC_LABELS,
        "config": {k: v for k, v in cfg.to_dict().items()},
    }
    write_jsonl(reports / "predictions.jsonl", per_example)
    plot_metrics(metrics, reports / "metrics_ci.png")
    plot_deltas(per_example, reports / "deltas_hist.png")
    (reports / "report.md").parent.mkdir(parents=True, exist_ok=True)
    from nbutils.io import atomic_write_text

    atomic_write_text(reports / "report.md", render_report(result, per_example, cfg.n_show))
    write_json(reports / "metrics.json", result)
    return result


# ---------------------------------------------------------------- report
def metrics_table(metrics: dict) -> str:
    lines = ["| metric | base | tuned | tuned − base | 95% CI of the difference | tuned better? |",
             "|---|---:|---:|---:|---|---|"]
    for name, m in metrics.items():
        lo, hi = m["delta_ci"]
        sure = (lo > 0 or hi < 0)
        if m["higher_is_better"] is None:
            verdict = "(descriptive)" if sure else "(descriptive; CI includes 0)"
        else:
            better = m["delta"] > 0 if m["higher_is_better"] else m["delta"] < 0
            verdict = ("yes" if better else "no") if sure else \
                f"not shown (CI includes 0; point estimate {'better' if better else 'worse'})"
        lines.append(f"| {METRIC_LABELS.get(name, name)} | {m['base']:.4g} | {m['tuned']:.4g} | {m['delta']:+.4g} | "
                     f"[{lo:+.4g}, {hi:+.4g}] | {verdict} |")
    return "\n".join(lines)


def _example_md(e: dict) -> str:
    def q(s: str, limit: int = 600) -> str:
        s = s if len(s) <= limit else s[:limit] + " …"
        return "\n".join("> " + line for line in (s or "(empty)").splitlines() or ["(empty)"])

    sb, st = e["scores"]["base"], e["scores"]["tuned"]
    return (f"**Instruction** (row {e['id']}{', paper ' + e['paper_id'] if e['paper_id'] else ''}): {e['instruction']}\n\n"
            + (f"**Input:**\n{q(e['input'], 400)}\n\n" if e["input"] else "")
            + f"**Reference:**\n{q(e['reference'])}\n\n"
            f"**Base** (ROUGE-L {sb['rougeL']:.3f}):\n{q(e['base'])}\n\n"
            f"**Tuned** (ROUGE-L {st['rougeL']:.3f}):\n{q(e['tuned'])}\n")


def examples_markdown(per_example: list[dict], n_show: int = 3) -> str:
    """The n largest ROUGE-L gains and losses of the tuned model, as Markdown."""
    ranked = sorted(per_example, key=lambda e: (e["delta_rougeL"], e["id"]))
    return "\n\n".join(["## Largest gains of the tuned model (ROUGE-L)\n",
                         *[_example_md(e) for e in reversed(ranked[-n_show:])],
                         "## Largest losses of the tuned model (ROUGE-L)\n",
                         *[_example_md(e) for e in ranked[:n_show]]])


def show_examples(reports_dir: str | Path, n_show: int = 3) -> str:
    """examples_markdown of the predictions.jsonl in `reports_dir` (for the notebook)."""
    return examples_markdown(list(read_jsonl(Path(reports_dir) / "predictions.jsonl")), n_show)


def render_report(result: dict, per_example: list[dict], n_show: int = 3) -> str:
    g = result["generation"]
    how = "greedy" if not g["do_sample"] else f"sampled (T={g['temperature']}, top_p={g['top_p']}, seed={g['seed']})"
    b = result["bootstrap"]
    parts = [
        "# 05 evaluate: base vs tuned",
        f"{result['n_examples']} held-out examples ({result['split']} split), prompt template `{result['template']}`, "
        f"{how} decoding, max_new_tokens={g['max_new_tokens']}. Paired bootstrap ({b['n']} resamples, seed {b['seed']}) "
        f"{int(b['confidence'] * 100)}% percentile intervals. BLEU is corpus BLEU (sacrebleu); reference NLL is the "
        "mean negative log-likelihood per token of the reference answer given the prompt (lower is better).",
        metrics_table(result["metrics"]),
        *(["*Only %d examples: percentile bootstrap intervals are too narrow for samples this small; read them as "
           "indicative. Evaluate more examples (max_examples=0: the whole split) before drawing conclusions.*"
           % result["n_examples"]] if result["n_examples"] < 30 else []),
        "![base vs tuned](metrics_ci.png)\n\n![per-example differences](deltas_hist.png)",
        examples_markdown(per_example, n_show),
    ]
    return "\n\n".join(parts) + "\n"


def plot_metrics(metrics: dict, path: str | Path):
    """Base vs tuned bars with bootstrap CI whiskers: overlap scores (0..1, BLEU/100) and reference NLL."""
    import matplotlib.pyplot as plt

    from nbutils.plots import save

    left = [("rouge1", 1.0), ("rouge2", 1.0), ("rougeL", 1.0), ("bleu", 0.01)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [4, 1.3]})
    for ax, items in ((ax1, left), (ax2, [("ref_nll", 1.0)])):
        x = np.arange(len(items))
        for off, v, color in ((-0.2, "base", "#8C8C8C"), (0.2, "tuned", "#4C72B0")):
            vals = np.array([metrics[k][v] * s for k, s in items])
            ci = np.array([[metrics[k][v + "_ci"][0] * s, metrics[k][v + "_ci"][1] * s] for k, s in items])
            err = np.abs(np.stack([vals - ci[:, 0], ci[:, 1] - vals]))
            ax.bar(x + off, vals, 0.4, yerr=err, capsize=4, color=color, label=v)
        ax.set_xticks(x, ["BLEU/100" if k == "bleu" else METRIC_LABELS[k].split(" (")[0].replace(" F1", "")
                          for k, _ in items])
    ax1.set_ylabel("score (higher is better)")
    ax2.set_ylabel("nats/token (lower is better)")
    ax1.legend()
    fig.suptitle("base vs tuned, 95% bootstrap CIs")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return path


def plot_deltas(per_example: list[dict], path: str | Path):
    """Histograms of per-example tuned − base for ROUGE-1/2/L and sentence BLEU."""
    import matplotlib.pyplot as plt

    from nbutils.plots import save

    keys = list(ROUGE_TYPES) + ["bleu"]
    fig, axes = plt.subplots(1, len(keys), figsize=(12, 3), sharey=True)
    for ax, k in zip(axes, keys):
        d = [e["scores"]["tuned"][k] - e["scores"]["base"][k] for e in per_example]
        ax.hist(d, bins=min(30, max(5, len(d) // 3)), color="#4C72B0", edgecolor="white")
        ax.axvline(0, color="black", lw=0.8)
        ax.axvline(float(np.mean(d)), color="#C44E52", lw=1.2, ls="--")
        ax.set_title(("sentence BLEU" if k == "bleu" else METRIC_LABELS[k]) + ": tuned − base", fontsize=9)
    axes[0].set_ylabel("examples")
    fig.tight_layout()
    save(fig, path)
    plt.close(fig)
    return path


def run(data_dir: str = "data", profile: str = "demo", verbose: bool = True, **params) -> dict:
    """The notebook's one call: build the config, evaluate, write reports/."""
    cfg = EvalConfig.from_params(profile=profile, data_dir=data_dir, **params)
    if verbose:
        cfg.show()
    return evaluate_models(cfg, verbose=verbose)


__all__ = ["EvalConfig", "GenParams", "PredictionCache", "evaluate_models", "generate_answers", "reference_nll",
           "rouge_scores", "bleu_stats", "corpus_bleu_from_stats", "paired_bootstrap", "mean_spec", "ratio_spec",
           "MetricSpec", "load_model_with_adapter", "load_eval_examples", "run", "length_sorted_batches",
           "left_pad", "clean_answer", "metrics_table", "render_report", "examples_markdown", "show_examples",
           "judge_pairwise", "judge_metrics", "parse_verdict"]
