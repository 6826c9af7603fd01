"""nbutils.hosted and the notebooks' first cell: a fresh Colab/Kaggle runtime gets what it lacks and nothing else,
data lands in the platform's place, secrets reach the environment without being shown."""
from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import nbformat
import pytest

from nbutils import hosted
from nbutils.io import PROJECT_ROOT
from nbutils.runner import discover_notebooks
from tests.support.hosted_fakes import NotebookAccessError, fake_colab_modules, fake_kaggle_modules

NOTEBOOKS = discover_notebooks()
COLAB_STACK = {"torch": "2.11.0+cu128", "nvidia-cublas-cu12": "12.8.4.1", "triton": "3.6.0",
               "ipykernel": "6.17.1", "ipython": "7.34.0", "jupyter-client": "7.4.9", "tornado": "6.5.7"}


# --- platform, data folder ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("environ, expected", [
    ({"COLAB_RELEASE_TAG": "release-colab_20260819"}, "colab"),
    ({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, "kaggle"),
    ({"NBUTILS_HOSTED": "1"}, "hosted"),
    ({"HOME": "/root", "NBUTILS_HOSTED": "0"}, "local"),
])
def test_detect_platform_from_the_runtime_variables(environ, expected):
    assert hosted.detect_platform(environ) == expected


def test_data_home_prefers_a_mounted_google_drive(tmp_path):
    drive = tmp_path / "MyDrive"
    assert hosted.data_home("colab", "proj", drive=drive) == Path("/content")
    drive.mkdir()
    assert hosted.data_home("colab", "proj", drive=drive) == drive / "proj"
    assert hosted.data_home("kaggle", "proj") == Path("/kaggle/working")
    assert hosted.data_home("local", "proj") is None


# --- secrets --------------------------------------------------------------------------------------------------------

@pytest.fixture
def clean_secret_env(monkeypatch):
    for name in hosted.SECRET_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_colab_secrets_reach_the_environment_without_being_shown(monkeypatch, clean_secret_env, capsys):
    modules = fake_colab_modules({"GROQ_API_KEY": "gsk_from_panel", "HF_TOKEN": "hf_from_panel"})
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setenv("HF_TOKEN", "hf_already_exported")

    status = hosted.load_platform_secrets(platform="colab")

    assert os.environ["GROQ_API_KEY"] == "gsk_from_panel"
    assert os.environ["HF_TOKEN"] == "hf_already_exported"          # an exported value wins
    assert "OPENAI_API_KEY" not in os.environ
    assert status == {"GROQ_API_KEY": "set", "HF_TOKEN": "already set", "OPENAI_API_KEY": "not found"}
    assert "HF_TOKEN" not in modules["google.colab.userdata"].calls  # not even asked for
    assert "from_panel" not in capsys.readouterr().out + repr(status)


def test_a_secret_the_notebook_may_not_read_is_reported_not_raised(monkeypatch, clean_secret_env):
    modules = fake_colab_modules({"GROQ_API_KEY": "gsk_x"}, denied=("GROQ_API_KEY",))
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    assert hosted.load_platform_secrets(["GROQ_API_KEY"], platform="colab") == {"GROQ_API_KEY": "not found"}
    assert "GROQ_API_KEY" not in os.environ
    assert issubclass(NotebookAccessError, Exception)


def test_kaggle_secrets_reach_the_environment(monkeypatch, clean_secret_env):
    for name, module in fake_kaggle_modules({"OPENAI_API_KEY": "sk-from-kaggle"}).items():
        monkeypatch.setitem(sys.modules, name, module)
    status = hosted.load_platform_secrets(platform="kaggle")
    assert os.environ["OPENAI_API_KEY"] == "sk-from-kaggle"
    assert status["OPENAI_API_KEY"] == "set" and status["GROQ_API_KEY"] == "not found"


def test_secrets_are_left_alone_on_a_local_machine(monkeypatch, clean_secret_env):
    for name, module in fake_colab_modules({"GROQ_API_KEY": "gsk_x"}).items():
        monkeypatch.setitem(sys.modules, name, module)
    assert hosted.load_platform_secrets(platform="local") == {}
    assert "GROQ_API_KEY" not in os.environ


# --- what gets installed --------------------------------------------------------------------------------------------

def test_requirements_expand_the_projects_own_extras(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "proj"\ndependencies = ["a>=1"]\n'
                         '[project.optional-dependencies]\nx = ["b"]\nall = ["proj[x]", "c<2"]\n')
    assert hosted.project_requirements(pyproject, ["all"]) == ["a>=1", "c<2", "b"]
    with pytest.raises(ValueError, match="no extra 'gpu'.*all, x"):
        hosted.project_requirements(pyproject, ["gpu"])


def test_missing_requirements_are_the_absent_and_the_too_old():
    installed = {"torch": "2.11.0+cu128", "datasets": "4.0.0", "peft": "0.20.0"}
    reqs = ["torch>=2.11", "datasets>=4.7", "peft>=0.20", "trl>=1.16", "colorama; python_version < '3'"]
    assert hosted.missing_requirements(reqs, installed) == ["datasets>=4.7", "trl>=1.16"]


def test_constraints_hold_the_runtime_but_free_what_must_change():
    installed = {**COLAB_STACK, "datasets": "4.0.0", "numpy": "2.1.3", "pyarrow": "18.1.0", "odd": "not-a-version"}
    held = hosted.runtime_constraints(installed, free=["datasets", "pyarrow", "torch"])
    assert "torch==2.11.0+cu128" in held and "ipykernel==6.17.1" in held   # the stack is never freed
    assert "numpy==2.1.3" in held
    assert not any(line.startswith(("datasets==", "pyarrow==", "odd==")) for line in held)
    stack_only = hosted.runtime_constraints(installed, stack_only=True)
    assert sorted(stack_only) == sorted(f"{k}=={v}" for k, v in COLAB_STACK.items())


class FakePip:
    """Records each pip call with the constraints it was given; answers with the given return codes."""

    def __init__(self, *codes: int):
        self.codes, self.calls = list(codes), []

    def __call__(self, cmd, **kwargs):
        constraints = Path(cmd[cmd.index("-c") + 1]).read_text().split() if "-c" in cmd else None
        self.calls.append((cmd, constraints))
        return subprocess.CompletedProcess(cmd, self.codes.pop(0), "", "ERROR: ResolutionImpossible")


def colab_like(**extra: str) -> dict[str, str]:
    names = hosted.requirement_names(hosted.project_requirements(PROJECT_ROOT / "pyproject.toml", ["demo"]))
    return {**{n: "999" for n in names}, **COLAB_STACK, "pyarrow": "18.1.0", "numpy": "2.1.3", **extra}


def test_install_asks_pip_only_for_what_is_missing_and_holds_the_rest():
    pip = FakePip(0)
    installed = hosted.install_missing(PROJECT_ROOT, installed=colab_like(datasets="4.0.0"), run=pip)
    assert installed == [r for r in hosted.project_requirements(PROJECT_ROOT / "pyproject.toml", ["demo"])
                         if r.startswith("datasets")]
    (cmd, held), = pip.calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "install"] and installed[0] in cmd
    assert "torch==2.11.0+cu128" in held and "numpy==2.1.3" in held
    assert not any(line.startswith(("datasets==", "pyarrow==")) for line in held)


def test_install_falls_back_to_holding_only_the_stack():
    pip = FakePip(1, 0)
    hosted.install_missing(PROJECT_ROOT, installed=colab_like(datasets="4.0.0"), run=pip)
    assert len(pip.calls) == 2
    assert "numpy==2.1.3" not in pip.calls[1][1] and "torch==2.11.0+cu128" in pip.calls[1][1]


def test_install_failure_shows_pips_reason():
    with pytest.raises(RuntimeError, match=r"could not install datasets>=4\.7:\nERROR: ResolutionImpossible"):
        hosted.install_missing(PROJECT_ROOT, installed=colab_like(datasets="4.0.0"), run=FakePip(1, 1))


def test_nothing_to_install_means_no_pip_at_all():
    pip = FakePip()
    assert hosted.install_missing(PROJECT_ROOT, installed=colab_like(), run=pip) == []
    assert pip.calls == []


def test_torch_is_never_installed_even_when_missing_or_old():
    with pytest.raises(RuntimeError, match=r"torch>=2\.11 \(installed: 2\.4\.0\).*never installs"):
        hosted.install_missing(PROJECT_ROOT, installed=colab_like(torch="2.4.0"), run=FakePip())


def test_an_upgrade_of_something_already_imported_asks_for_a_restart():
    assert "packaging" in sys.modules
    assert hosted.stale_imports(["Packaging"]) == ["packaging"]
    assert hosted.stale_imports(["no-such-distribution"]) == []


@pytest.fixture
def project_needing(tmp_path, monkeypatch):
    """A project whose only requirement is not installed here, and an environment of no hosted platform."""
    for name in ("COLAB_RELEASE_TAG", "COLAB_GPU", "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "NBUTILS_HOSTED",
                 "NBUTILS_HOME", "PYTHONPATH", *hosted.SECRET_NAMES):
        monkeypatch.delenv(name, raising=False)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "proj"\ndependencies = ["no-such-package-xyz>=1"]\n'
                                            '[project.optional-dependencies]\ndemo = []\ngpu = []\n')
    return project


def test_a_local_python_is_never_changed(project_needing):
    pip = FakePip()
    with pytest.raises(RuntimeError, match=r"lacks no-such-package-xyz>=1: install the project .*pip install -e"):
        hosted.setup_hosted(project_needing, run=pip)
    assert pip.calls == []


def test_on_kaggle_it_installs_sets_the_path_and_loads_secrets(project_needing, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("NBUTILS_HOME", str(tmp_path / "home"))      # a user's choice wins over /kaggle/working
    for name, module in fake_kaggle_modules({"HF_TOKEN": "hf_secret_value"}).items():
        monkeypatch.setitem(sys.modules, name, module)
    pip = FakePip(0)

    hosted.setup_hosted(project_needing, run=pip)

    (cmd, held), = pip.calls                    # the demo model is installed in this venv already
    assert "no-such-package-xyz>=1" in cmd and "torch==" + hosted.installed_versions()["torch"] in held
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(project_needing)
    assert os.environ["NBUTILS_HOME"] == str(tmp_path / "home") and os.environ["HF_TOKEN"] == "hf_secret_value"
    out = capsys.readouterr().out
    assert "(kaggle; 1 requirement(s) installed)" in out and "HF_TOKEN set" in out
    assert "hf_secret_value" not in out


# --- the notebooks' first cell --------------------------------------------------------------------------------------

def first_cell(path: Path):
    nb = nbformat.read(str(path), as_version=4)
    return nb.cells, next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")


def test_first_cell_is_the_same_in_every_notebook_and_precedes_the_parameters():
    sources = set()
    for path in NOTEBOOKS:
        cells, i = first_cell(path)
        assert "parameters" in cells[i + 1].metadata.get("tags", []), f"{path.name}: parameters must come next"
        assert "setup_hosted" in cells[i].source
        sources.add(cells[i].source)
    assert len(sources) == 1, "the first code cell differs between notebooks"
    first_statement = ast.parse(sources.pop()).body[0]
    assert isinstance(first_statement, ast.Assign) and first_statement.targets[0].id == "REPO_URL"


def test_first_cell_does_nothing_where_nbutils_is_importable(monkeypatch):
    cells, i = first_cell(NOTEBOOKS[0])
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the cell ran a command"))
    path_before, env_before = list(sys.path), dict(os.environ)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(cells[i].source, "first-cell", "exec"), {})
    assert out.getvalue() == "" and sys.path == path_before and dict(os.environ) == env_before


def test_first_cell_without_a_project_or_url_says_to_set_repo_url(tmp_path, monkeypatch):
    import importlib.util

    cells, i = first_cell(NOTEBOOKS[0])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nbutils" else real_find_spec(name, *a))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("nothing to clone: must not run git"))
    monkeypatch.delenv("NBUTILS_REPO_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="set REPO_URL in this cell"):
        exec(compile(cells[i].source, "first-cell", "exec"), {})


@pytest.mark.slow
def test_demo_notebooks_run_from_elsewhere_without_the_install(tmp_path, monkeypatch):
    """The hosted path, simulated: a kernel that sees the dependencies but not nbutils (no editable install, no
    PYTHONPATH), started in a folder outside the project; the first cell must find the project and make 01 and
    02 run."""
    import papermill as pm

    cells, i = first_cell(NOTEBOOKS[0])
    repo = "arxiv-pipeline"
    monkeypatch.setenv("NBUTILS_REPO_URL", f"https://git.example.invalid/team/{repo}.git")  # the kernel inherits it
    kernel_python = make_kernel_without_nbutils(tmp_path, monkeypatch)
    probe = subprocess.run([kernel_python, "-E", "-c", "import importlib.util as u; import papermill, torch; "
                            "print(u.find_spec('nbutils'))"], capture_output=True, text=True, cwd=tmp_path)
    assert probe.stdout.strip() == "None", probe.stderr     # the dependencies are there, nbutils is not
    work = tmp_path / "content"
    work.mkdir()
    (work / repo).symlink_to(PROJECT_ROOT, target_is_directory=True)   # like a clone left by an earlier session
    data = tmp_path / "data"
    for nb in NOTEBOOKS[:2]:
        out = tmp_path / nb.name
        pm.execute_notebook(str(nb), str(out), parameters={"data_dir": str(data), "profile": "demo"},
                            cwd=str(work), kernel_name="hosted-sim", progress_bar=False)
        executed = nbformat.read(str(out), as_version=4)
        setup_output = "".join(o.get("text", "") for o in executed.cells[i].outputs)
        assert f"nbutils from {PROJECT_ROOT}" in setup_output
    assert (data / "papers.jsonl").stat().st_size > 0 and (data / "pages.jsonl").stat().st_size > 0


def make_kernel_without_nbutils(tmp_path: Path, monkeypatch) -> str:
    """A venv whose site-packages points at this interpreter's (a .pth line: the packages are visible, but the
    .pth files there, the editable nbutils among them, are not run) and a kernelspec starting it with -E."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    spec = tmp_path / "jupyter" / "kernels" / "hosted-sim"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-E", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hosted runtime (simulated)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.delenv("NBUTILS_HOME", raising=False)
    return str(python)
