"""ExportConfig: typed values, refusals before anything runs, the command line's --print-config."""
from __future__ import annotations

import json

import pytest

from nbutils.config import stage_main
from nbutils.export import ExportConfig, run


def test_print_config_resolves_paths_under_data_dir_and_types_values(capsys, tmp_path):
    assert stage_main(ExportConfig, run, ["--print-config", "--data_dir", str(tmp_path), "--gguf_types", "q8_0",
                                          "--hub_private", "false"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["gguf_types"] == ["q8_0"] and cfg["hub_private"] is False and cfg["base_model"] is None
    assert cfg["adapter_dir"] == str(tmp_path / "models" / "adapter")
    assert cfg["export_dir"] == str(tmp_path / "export")


def test_an_unknown_gguf_type_is_refused_naming_the_tool_that_makes_it(capsys):
    assert stage_main(ExportConfig, run, ["--print-config", "--gguf_types", "q4_k_m"]) == 2
    err = capsys.readouterr().err
    assert "'q4_k_m'" in err and "llama-quantize" in err


def test_push_needs_a_repo_id_and_the_token_is_never_a_parameter():
    with pytest.raises(ValueError, match="hub_repo_id"):
        ExportConfig.from_params(push_to_hub=True)
    assert not any("token" in name for name in ExportConfig.field_names())
    assert ExportConfig().hub_private is True and ExportConfig().push_to_hub is False
