"""Parameters of 05_evaluate (the notebook's parameters, same names). A field holds the `full` value."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nbutils.config import StageConfig, option
from nbutils.decoding.params import GenParams
from nbutils.finetune.config import EVAL_BF16_MIN_GPU_GIB

JUDGE_BACKENDS = ("", "groq", "openai", "local")
# lm-eval's standard tasks (data from the Hugging Face hub): a quick general-ability set; two MMLU subjects near the
# papers' field stand for MMLU (the whole group is 57 subjects)
HARNESS_TASKS = ["arc_easy", "hellaswag", "mmlu_machine_learning", "mmlu_college_computer_science"]


@dataclass
class EvaluateConfig(StageConfig):
    """Base vs tuned on the held-out split: generation, scoring, bootstrap and the optional judge."""

    PROFILE_OVERRIDES: ClassVar[dict] = {
        "demo": {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "max_examples": 12, "max_new_tokens": 40,
                 "batch_size": 12, "n_bootstrap": 1000, "max_prompt_tokens": 1024, "harness_tasks": []},
        # the original's loop: one example per HF generate, sampled (temperature/top_p 0.5), 4-bit base
        "original": {"do_sample": True, "batch_size": 1, "engine": "plain", "load_in_4bit": True, "harness_tasks": []},
    }
    PATH_FIELDS: ClassVar[dict] = {"dataset_dir": "dataset", "adapter_dir": "adapter", "reports_dir": "reports",
                                   "cache_dir": "cache"}
    INPUT_FIELDS: ClassVar[tuple] = ('adapter_dir', 'base_model', 'harness_include_path')
    OUTPUT_FIELDS: ClassVar[tuple] = ('dataset_dir', 'reports_dir', 'cache_dir')

    base_model: str = option("meta-llama/Meta-Llama-3-8B", "hub id or local folder (the one 04 trained on)")
    adapter_dir: str | None = option(None, "None: data_dir/models/adapter")
    dataset_dir: str | None = option(None, "None: data_dir/dataset (made from triples / original JSON if absent)")
    reports_dir: str | None = option(None, "None: data_dir/reports")
    cache_dir: str | None = option(None, "None: data_dir/cache (predictions cache under cache/eval/)")
    split: str = option("test", "which split of the frozen dataset to evaluate", choices=("test", "train"))
    max_examples: int = option(0, "0: the whole split; else its first N rows", ge=0)
    max_new_tokens: int = option(512, "answer length cap (new tokens)", ge=1)
    batch_size: int = option(64, "prompts per generate call (length-sorted, left-padded)", ge=1)
    nll_batch_size: int = option(0, "sequences per reference-NLL forward; 0: same as batch_size", ge=0)
    max_prompt_tokens: int = option(2048, "longer prompts keep their last tokens (counted in the report)", ge=1)
    max_reference_tokens: int = option(512, "reference answers scored for NLL up to this many tokens", ge=1)
    template: str | None = option(None, "None: what 04 recorded in the adapter's train_log.json, else alpaca")
    do_sample: bool = option(False, "False: greedy (deterministic); True: temperature/top_p sampling with seed")
    temperature: float = option(0.5, "used only when do_sample (the original's value)", gt=0)
    top_p: float = option(0.5, "used only when do_sample (the original's value)", gt=0, le=1)
    seed: int = option(42, "sampling and bootstrap seed", ge=0)
    load_in_4bit: bool | None = option(None, f"None: 4-bit only on a CUDA GPU with < {EVAL_BF16_MIN_GPU_GIB:g} GiB; "
                                             "bf16 otherwise")
    static_cache: bool = option(False, "plain path only: generate(cache_implementation='static')")
    engine: str = option("auto", "generation engine: auto (static KV cache + CUDA graphs, adapter merged, on a GPU; "
                         "plain HF generate on CPU), plain or static", choices=("auto", "plain", "static"))
    n_bootstrap: int = option(10000, "bootstrap resamples", ge=1)
    confidence: float = option(0.95, "confidence level of the bootstrap intervals", gt=0, lt=1)
    n_show: int = option(3, "best and worst examples shown in report.md", ge=0)
    resume: bool = option(True, "reuse cached predictions of finished examples")
    threads: int = option(0, "CPU threads for torch (0: torch's default)", ge=0)
    judge_backend: str = option("", "'' (off), 'groq', 'openai' or 'local': pairwise LLM judge, both answer orders",
                                choices=JUDGE_BACKENDS)
    judge_model: str | None = option(None, "None: the backend's default model")
    judge_base_url: str | None = option(None, "OpenAI-compatible server URL (judge_backend='openai')")
    judge_max_examples: int = option(0, "0: judge every evaluated example", ge=0)
    harness_tasks: list = option(HARNESS_TASKS, "lm-evaluation-harness tasks run on base and tuned (did it forget?); "
                                 "[]: off. Standard tasks need the hub; your own via harness_include_path")
    harness_limit: int = option(200, "examples per harness task (0: all; lm-eval's stderr shrinks as 1/sqrt(n))", ge=0)
    harness_num_fewshot: int | None = option(None, "None: each task's own default (0 for the default set)", ge=0)
    harness_include_path: str | None = option(None, "folder of extra lm-eval task YAMLs (e.g. over local JSON: "
                                              "offline tasks)")
    harness_batch_size: int = option(0, "requests per forward in lm-eval; 0: same as batch_size", ge=0)
    log_to_tracker: bool = option(True, "log 05's metrics to the tracker runs 04 recorded in train_log.json "
                                  "(TensorBoard, MLflow, W&B)")
    # the notebook's last two sections (not read by run())
    try_prompt: str = option("", "notebook: your own prompt, answered by base and tuned side by side after the "
                             "evaluation; '' skips")
    export: bool = option(False, "notebook: publish what was evaluated with nbutils.export (merged weights, GGUF, "
                          "Modelfile, model card; ExportConfig's parameters in the same cell)")

    def gen_params(self) -> GenParams:
        """The decoding settings of both passes (base and tuned)."""
        return GenParams(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, temperature=self.temperature,
                         top_p=self.top_p, seed=self.seed, static_cache=self.static_cache)
