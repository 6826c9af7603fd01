"""Issue 27 item 5: one lock per data_dir (nbutils/lock.py), held by every stage and the runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from nbutils.lock import LOCK_FILE, DataDirBusy, data_dir_lock


def hold_in_child(data_dir, seconds: float = 30.0) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        from nbutils.lock import data_dir_lock
        with data_dir_lock({str(data_dir)!r}, "02_parse (test holder)"):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("NBUTILS_LOCK_TOKEN", None)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_is_refused_naming_the_holder(tmp_path):
    child = hold_in_child(tmp_path)
    try:
        with pytest.raises(DataDirBusy) as e:
            with data_dir_lock(tmp_path, "03_generate"):
                pass
        assert f"pid {child.pid}" in str(e.value) and "02_parse (test holder)" in str(e.value)
    finally:
        child.kill()
        child.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    child = hold_in_child(tmp_path)
    child.kill()
    child.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == child.pid   # still names the dead pid
    with data_dir_lock(tmp_path, "03_generate"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_the_lock_is_reentrant_and_passed_to_children(tmp_path):
    with data_dir_lock(tmp_path, "runner"):
        with data_dir_lock(tmp_path, "03_generate"):   # a stage inside the runner's process
            pass
        code = (f"from nbutils.lock import data_dir_lock\nwith data_dir_lock({str(tmp_path)!r}, 'child'):\n"
                "    print('ok')")
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert out.stdout.strip() == "ok", out.stderr


def test_every_stage_run_holds_the_lock(tmp_path):
    from nbutils.generate import GenerateConfig, run

    child = hold_in_child(tmp_path)
    try:
        cfg = GenerateConfig.from_params(profile="demo", data_dir=str(tmp_path))
        t0 = time.monotonic()
        with pytest.raises(DataDirBusy, match=f"pid {child.pid}"):
            run(cfg)
        assert time.monotonic() - t0 < 10
    finally:
        child.kill()
        child.wait()


def test_the_runner_holds_the_lock(tmp_path):
    from nbutils.runner import run_pipeline

    child = hold_in_child(tmp_path)
    try:
        with pytest.raises(DataDirBusy, match=f"pid {child.pid}"):
            run_pipeline(profile="demo", data_dir=tmp_path, only=["02"])
    finally:
        child.kill()
        child.wait()


def test_a_stage_inside_the_runners_notebook_passes_through_the_runners_lock(tmp_path):
    import nbformat

    from nbutils.runner import run_pipeline

    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('data_dir = "data"\nprofile = "demo"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from nbutils.lock import data_dir_lock\nwith data_dir_lock(data_dir, '02_parse'):\n    print('inside')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "nb").mkdir()
    nbformat.write(nb, str(tmp_path / "nb" / "02_parse.ipynb"))
    result = run_pipeline(profile="demo", data_dir=tmp_path / "data", notebooks_dir=tmp_path / "nb",
                          run_dir=tmp_path / "run")
    assert result.ok and "inside" in (tmp_path / "run" / "02_parse.ipynb").read_text()


def test_the_command_line_says_who_holds_the_data_dir(tmp_path, capsys):
    from nbutils.__main__ import main
    from nbutils.config import stage_main
    from nbutils.generate import GenerateConfig, run

    child = hold_in_child(tmp_path)
    try:
        assert main(["run", "--data-dir", str(tmp_path), "--only", "02"]) == 2
        assert stage_main(GenerateConfig, run, ["--data_dir", str(tmp_path), "--profile", "demo"]) == 2
        err = capsys.readouterr().err
        assert err.count(f"pid {child.pid}") == 2 and "Traceback" not in err
    finally:
        child.kill()
        child.wait()
