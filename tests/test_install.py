"""How the project installs: the lock (make setup, CI) fits the ranges pyproject.toml declares, and on Colab's GPU
runtime the notebooks' first cell changes nothing in torch / CUDA / Jupyter / IPython."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from nbutils import hosted
from nbutils.io import PROJECT_ROOT

PYPROJECT = PROJECT_ROOT / "pyproject.toml"
LOCK = PROJECT_ROOT / "requirements.lock"
COLAB_FREEZE = Path(__file__).parent / "fixtures" / "colab-gpu-pip-freeze.txt"
NOT_LOCKED = {"gpu", "flash-attn"}      # CUDA-only extras: no wheel or no use on the CPU machines the lock is for
# no wheel on PyPI: built here once, as pip builds them on Colab (sqlitedict and word2number come with lm-eval)
SDIST_ONLY = ("rouge-score", "sqlitedict", "word2number")


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[hosted.normalize(name)] = version
    return pins


def declared_extras() -> list[str]:
    optional = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    return [name for name in optional if name not in NOT_LOCKED]


def test_lock_pins_every_declared_requirement_inside_its_range():
    pins = lock_pins()
    problems = []
    for spec in hosted.project_requirements(PYPROJECT, declared_extras()):
        req = Requirement(spec)
        have = pins.get(hosted.normalize(req.name))
        if have is None or not req.specifier.contains(have, prereleases=True):
            problems.append(f"{spec}: lock has {have}")
    assert not problems, "requirements.lock and pyproject.toml disagree:\n" + "\n".join(problems)


def test_requirements_txt_installs_the_lock():
    lines = [ln.strip() for ln in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()]
    assert [ln for ln in lines if ln and not ln.startswith("#")] == ["-r requirements.lock"]


def test_torch_range_admits_colabs_cuda_build_and_the_locked_wheel():
    torch = next(Requirement(s) for s in hosted.project_requirements(PYPROJECT) if s.startswith("torch"))
    assert torch.specifier.contains("2.11.0+cu128") and torch.specifier.contains(lock_pins()["torch"])


def test_the_library_asks_for_no_part_of_the_kernel_stack_but_torch():
    names = hosted.requirement_names(hosted.project_requirements(PYPROJECT, hosted.HOSTED_EXTRAS + hosted.GPU_EXTRAS))
    assert [n for n in names if hosted.is_protected(n)] == ["torch"]


# --- Colab's GPU runtime (needs PyPI) -------------------------------------------------------------------------------

def read_colab_freeze() -> tuple[dict[str, str], set[str]]:
    """Colab's pinned packages by normalized name, and the names it installed from URLs (no version to pin)."""
    pinned, from_urls = {}, set()
    for line in COLAB_FREEZE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if " @ " in line:
            from_urls.add(hosted.normalize(line.split(" @ ")[0]))
            continue
        name, version = line.split("==")
        pinned[hosted.normalize(name)] = version
    return pinned, from_urls


def pip_env() -> dict[str, str]:
    """This machine's pip settings minus its local indexes, caps and wheel folders: PyPI as Colab sees it."""
    keep = {"PIP_INDEX_URL", "PIP_CERT", "PIP_CLIENT_CERT", "PIP_TRUSTED_HOST", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def require_index() -> None:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        urllib.request.urlopen(f"{index}/pip/", timeout=15).close()
    except OSError as err:
        pytest.skip(f"the package index {index} is unreachable ({err}): cannot resolve Colab's install")


def write_installed_stand_in(folder: Path, name: str, version: str) -> None:
    """A metadata-only wheel for a package Colab installed from its own index (torch 2.11.0+cu128): pip must be
    able to keep it, and PyPI has no such version."""
    stem = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{stem}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                "Tag: py3-none-any\n")
        whl.writestr(f"{stem}.dist-info/RECORD", "")


@pytest.mark.slow
def test_colab_gpu_install_changes_nothing_in_torch_cuda_jupyter_ipython(tmp_path):
    """What the first cell asks pip for on Colab's GPU runtime (Python 3.13, its packages held as the cell holds
    them), resolved against PyPI: it must resolve, and the runtime's stack must come out as it went in."""
    require_index()
    colab, from_urls = read_colab_freeze()
    wanted = hosted.project_requirements(PYPROJECT, hosted.HOSTED_EXTRAS + hosted.GPU_EXTRAS)
    missing = hosted.missing_requirements(wanted, colab)
    held = hosted.runtime_constraints(colab, free=[*hosted.requirement_names(missing), *hosted.MAY_UPGRADE])
    (tmp_path / "constraints.txt").write_text("\n".join(held) + "\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, version in colab.items():
        if "+" in version:
            write_installed_stand_in(wheels, name, version)
    for name in SDIST_ONLY:   # as asked for (a range) where the project names it, else as a dependency pulls it
        spec = next((m for m in missing if hosted.normalize(Requirement(m).name) == name), name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", spec, "-w", str(wheels)],
                       env=pip_env(), check=True, timeout=300)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
         "--python-version", "3.13", "--only-binary=:all:", "--ignore-installed", "--find-links", str(wheels),
         "-c", str(tmp_path / "constraints.txt"), *missing],
        env=pip_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip cannot install {missing} on Colab as it is:\n{done.stderr[-4000:]}"

    result = {hosted.normalize(i["metadata"]["name"]): i["metadata"]["version"]
              for i in json.loads(report.read_text())["install"]}
    changed = {n: f"{colab[n]} -> {v}" for n, v in result.items() if n in colab and colab[n] != v}
    added = sorted(n for n in result if n not in colab)
    stack_changes = {n: c for n, c in changed.items() if hosted.is_protected(n)}
    stack_changes |= {n: f"new {result[n]}" for n in added if hosted.is_protected(n)}
    assert not stack_changes, f"the install would change Colab's stack: {stack_changes}"
    assert not from_urls & set(result), f"would replace Colab's own builds: {from_urls & set(result)}"
    print(f"Colab GPU: installs {len(added)} new ({', '.join(added)}); upgrades {changed or 'nothing'}")
