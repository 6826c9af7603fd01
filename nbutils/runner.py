"""Run the notebook series 01 -> 05 with papermill: one run folder, a line per stage, stop at the first failure."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .config import check_profile
from .io import PROJECT_ROOT, DataPaths, resolve_data_dir, write_json
from .lock import data_dir_lock
from .redact import redact_notebook, redact_values

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
RUNNER_OWNED = ("data_dir", "profile")  # set by --data-dir / --profile, never by -p
STAGE_CONFIGS = {  # notebook -> the config class whose field types check its -p values before anything runs
    "01_scrape": ("nbutils.scrape", "ScrapeConfig"),
    "02_parse": ("nbutils.parse", "ParseConfig"),
    "03_generate": ("nbutils.generate", "GenerateConfig"),
    "04_finetune": ("nbutils.finetune", "FinetuneConfig"),
    "05_evaluate": ("nbutils.evaluate", "EvaluateConfig"),
}


class StageFailed(RuntimeError):
    """A stage's notebook raised: names the stage, the cell and the error."""


@dataclass
class StageRun:
    stage: str
    status: str              # "ok" | "failed" | "skipped"
    seconds: float = 0.0
    output: str = ""
    error: str = ""


@dataclass
class RunResult:
    run_dir: Path
    stages: list[StageRun] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.stages)


def discover_notebooks(notebooks_dir: str | Path = NOTEBOOKS_DIR) -> list[Path]:
    """The numbered stage notebooks (`01_scrape.ipynb` ...), in order."""
    return sorted(p for p in Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))


def stage_name(path: Path) -> str:
    return path.stem


def match_stage(token: str, names: Iterable[str]) -> str:
    """'03', '3', '03_generate' or 'generate' -> '03_generate'."""
    names = list(names)
    t = token.strip()
    for n in names:
        num, _, label = n.partition("_")
        if t in (n, num, label) or (t.isdigit() and int(t) == int(num)):
            return n
    raise ValueError(f"no stage {token!r}; stages: {', '.join(names)}")


def select_stages(notebooks: list[Path], start: str | None = None, only: Iterable[str] | None = None) -> list[Path]:
    names = [stage_name(p) for p in notebooks]
    if only:
        wanted = {match_stage(t, names) for t in only}
        return [p for p in notebooks if stage_name(p) in wanted]
    if start:
        first = names.index(match_stage(start, names))
        return notebooks[first:]
    return notebooks


def stage_config_class(stage: str):
    """The config class behind a stage notebook, or None for a notebook without one."""
    import importlib

    spec = STAGE_CONFIGS.get(stage)
    return getattr(importlib.import_module(spec[0]), spec[1]) if spec else None


# Sections of a notebook that run a step with a config of its own (05's last section: the export step). Their
# parameters sit in the notebook's parameters cell too, and `-p` values are typed against their fields.
SECTION_CONFIGS = {"05_evaluate": (("nbutils.export", "ExportConfig"),)}


def notebook_config_classes(stage: str) -> list:
    """The stage's config class, then those of its sections (empty for a notebook without one)."""
    import importlib

    main = stage_config_class(stage)
    extra = [getattr(importlib.import_module(m), n) for m, n in SECTION_CONFIGS.get(stage, ())]
    return [main, *extra] if main is not None else []


def typed_parameters(stage: str, values: dict[str, Any], raw: dict[str, str] | None = None) -> dict[str, Any]:
    """Each value checked (a string from the command line parsed) against the stage config's field type:
    `-p learning_rate 2e-3x` fails here, naming the stage and the parameter, before any stage runs."""
    out = dict(values)
    seen: set[str] = set()
    for cls in notebook_config_classes(stage):   # a name shared by a section's config is typed by the stage's
        known = set(cls.field_names()) - seen
        seen |= known
        given = {k: (raw or {}).get(k, v) for k, v in values.items() if k in known and v is not None}
        try:
            out.update(cls.check_params(given))
        except ValueError as e:
            raise ValueError(f"{stage}: {e}") from None
    return out


def check_stage_config(stage: str, profile: str, data_dir: Path, values: dict[str, Any]) -> None:
    """The stage's whole configuration built once from its parameters, so ranges, paths and credentials are
    refused (naming the stage) before the first stage runs."""
    cls = stage_config_class(stage)
    if cls is None:
        return
    names = set(cls.field_names()) - set(RUNNER_OWNED)
    try:
        cls.from_params(profile=profile, data_dir=str(data_dir), **{k: v for k, v in values.items() if k in names})
    except ValueError as e:
        raise ValueError(f"{stage}: {e}") from None


def notebook_parameter_names(path: Path) -> set[str]:
    import papermill as pm

    return set(pm.inspect_notebook(str(path)).keys())


def parameters_for(stage: str, declared: set[str], params: dict[str, Any]) -> dict[str, Any]:
    """Plain keys go to every notebook that declares them; `NN.key` (or `stage.key`) to that stage only."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if "." in key:
            target, _, name = key.partition(".")
            try:
                match_stage(target, [stage])
            except ValueError:
                continue
        else:
            name = key
        if name in declared:
            out[name] = value
    return out


def check_parameters(notebooks: list[Path], params: dict[str, Any]) -> dict[str, set[str]]:
    """Every notebook's declared parameters; a parameter no selected notebook declares is an error (typo)."""
    declared = {stage_name(p): notebook_parameter_names(p) for p in notebooks}
    names = list(declared)
    for key in params:
        if key.rpartition(".")[2] in RUNNER_OWNED:
            name = key.rpartition(".")[2]
            raise ValueError(f"-p {key}: {name} is the runner's own; use --{name.replace('_', '-')} instead")
        if "." in key:
            target, _, name = key.partition(".")
            stage = match_stage(target, names)
            if name not in declared[stage]:
                raise ValueError(f"{stage} has no parameter {name!r}; it has: {', '.join(sorted(declared[stage]))}")
        elif not any(key in d for d in declared.values()):
            raise ValueError(f"no selected notebook has a parameter {key!r}")
    return declared


def describe_failure(stage: str, err: Exception) -> str:
    """'stage 03_generate failed in cell 5: ValueError: ...' from a PapermillExecutionError."""
    cell, count = getattr(err, "cell_index", None), getattr(err, "exec_count", None)
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    where = f" in cell In [{count}] (cell #{cell + 1})" if cell is not None else ""
    source = (getattr(err, "source", "") or "").strip().splitlines()
    snippet = f"\n  cell source: {source[0][:120]}" + (" ..." if len(source) > 1 else "") if source else ""
    return f"stage {stage} failed{where}: {ename}: {evalue}{snippet}"


def new_run_dir(data_dir: str | Path, profile: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = DataPaths(data_dir).runs / f"{stamp}-{profile}"
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = run_dir.with_name(f"{stamp}-{profile}-{n}")
    return run_dir


def run_pipeline(profile: str = "demo", data_dir: str | Path = "data", params: dict[str, Any] | None = None,
                 raw: dict[str, str] | None = None,
                 start: str | None = None, only: Iterable[str] | None = None, run_dir: str | Path | None = None,
                 notebooks_dir: str | Path = NOTEBOOKS_DIR, log_output: bool = False,
                 progress_bar: bool = False, kernel_name: str = "python3") -> RunResult:
    """Execute the selected notebooks in order; stops at the first failing stage (raises StageFailed). The run
    holds the data_dir's lock (nbutils.lock); its notebooks pass through it."""
    check_profile(profile)
    data_dir = resolve_data_dir(data_dir)
    params = dict(params or {})
    notebooks = select_stages(discover_notebooks(notebooks_dir), start, only)
    if not notebooks:
        raise ValueError(f"no stage notebooks selected in {notebooks_dir}")
    declared = check_parameters(notebooks, params)
    injected_by_stage = {}
    for nb in notebooks:  # every value type-checked before the first stage runs
        stage = stage_name(nb)
        chosen = parameters_for(stage, declared[stage], params)
        chosen_raw = {k.rpartition(".")[2]: v for k, v in (raw or {}).items() if k.rpartition(".")[2] in chosen}
        injected_by_stage[stage] = typed_parameters(stage, chosen, chosen_raw)
        check_stage_config(stage, profile, data_dir, injected_by_stage[stage])
    with data_dir_lock(data_dir, f"runner: {', '.join(stage_name(nb) for nb in notebooks)}"):
        return _run_stages(notebooks, injected_by_stage, profile, data_dir, params, run_dir, log_output,
                           progress_bar, kernel_name)


def _run_stages(notebooks: list[Path], injected_by_stage: dict, profile: str, data_dir: Path, params: dict,
                run_dir: str | Path | None, log_output: bool, progress_bar: bool, kernel_name: str) -> RunResult:
    """The stages in order, holding the data_dir's lock (run_pipeline takes it)."""
    import papermill as pm

    run_dir = Path(run_dir) if run_dir else new_run_dir(data_dir, profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(run_dir)
    os.environ["NBUTILS_RUN_DIR"] = str(run_dir.resolve())  # the kernels inherit it: 04 names its tracker run so
    print(f"run folder: {run_dir}  (profile={profile}, data_dir={data_dir})")

    def save_summary() -> None:
        write_json(run_dir / "run.json", {
            "profile": profile, "data_dir": str(data_dir), "parameters": redact_values(params),
            "stages": [vars(s) for s in result.stages]})

    for i, nb in enumerate(notebooks, 1):
        stage = stage_name(nb)
        injected = {"data_dir": str(data_dir), "profile": profile, **injected_by_stage[stage]}
        output = run_dir / nb.name
        print(f"[{i}/{len(notebooks)}] {stage} ...", flush=True)
        t0 = time.time()
        try:
            try:
                pm.execute_notebook(str(nb), str(output), parameters=injected, cwd=str(PROJECT_ROOT),
                                    kernel_name=kernel_name, log_output=log_output, progress_bar=progress_bar)
            finally:
                redact_notebook(output)   # a URL's user:password@ or a key never stays in the executed notebook
        except Exception as err:  # papermill raises PapermillExecutionError with the cell
            secs = time.time() - t0
            msg = describe_failure(stage, err)
            result.stages.append(StageRun(stage, "failed", secs, str(output), msg))
            save_summary()
            print(f"[{i}/{len(notebooks)}] {stage} FAILED after {secs:.1f} s\n  {msg}\n"
                  f"  executed notebook: {output}", flush=True)
            raise StageFailed(msg) from err
        secs = time.time() - t0
        result.stages.append(StageRun(stage, "ok", secs, str(output)))
        save_summary()
        print(f"[{i}/{len(notebooks)}] {stage} ok in {secs:.1f} s", flush=True)
    total = sum(s.seconds for s in result.stages)
    print(f"all {len(result.stages)} stage(s) ok in {total:.1f} s; executed notebooks in {run_dir}")
    return result
