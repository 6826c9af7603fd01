"""The push, against a local Hub speaking the endpoints huggingface_hub's create_repo and create_commit use
(repo creation, README metadata validation, preupload, the LFS batch API and a basic PUT, the NDJSON commit).
Not tested here: the Xet transfer path (the real Hub's default for large files when hf_xet is installed; the fake
turns it off with HF_HUB_DISABLE_XET) and the real Hub's authorisation rules beyond a bearer token."""
from __future__ import annotations

import pytest

from nbutils import export as ex
from tests.support.fake_hub import FakeHub

from .conftest import export_config


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)   # tests/conftest.py keeps the real Hub off; this one is local
    with FakeHub(token="hf_test_token_0123456789") as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_TOKEN", h.token)
        yield h


def test_push_creates_a_private_repo_with_weights_card_modelfile_and_gguf(data_dir, hub):
    cfg = export_config(data_dir, gguf_types=["q8_0"], push_to_hub=True, hub_repo_id="me/tiny-arxiv")
    r = ex.run(cfg, verbose=False)
    repo = hub.repos["me/tiny-arxiv"]
    assert repo["private"] is True and len(repo["commits"]) == 1
    files = repo["files"]
    out = data_dir / "export"
    gguf_name = "tiny-llama-arxiv-lora-q8_0.gguf"
    assert files[gguf_name] == (out / gguf_name).read_bytes()                       # went through LFS
    assert files["model.safetensors"] == (out / "merged" / "model.safetensors").read_bytes()
    assert files["README.md"] == (out / "README.md").read_bytes()                   # a regular file
    assert {"config.json", "tokenizer.json", "generation_config.json", "Modelfile"} <= set(files)
    assert ".export-key" not in files
    assert any(p.startswith("/lfs/") for _, p in hub.calls)
    assert r.hub["private"] and r.hub["repo_url"].endswith("me/tiny-arxiv") and "Pushed to" in r.summary()
    assert "me/tiny-arxiv" in (out / "README.md").read_text()                      # the card loads the repo id


def test_push_without_a_token_in_the_environment_says_where_to_set_it(data_dir, hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    with pytest.raises(ex.ExportError, match="set HF_TOKEN"):
        ex.run(export_config(data_dir, gguf_types=[], push_to_hub=True, hub_repo_id="me/x"), verbose=False)
    assert hub.repos == {}


def test_a_wrong_token_is_the_hubs_error_not_a_silent_success(data_dir, hub, monkeypatch):
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(HfHubHTTPError):
        ex.run(export_config(data_dir, gguf_types=[], push_to_hub=True, hub_repo_id="me/x",
                             hub_private=False), verbose=False)
    assert hub.repos == {}
