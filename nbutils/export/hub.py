"""Push the export to the Hugging Face Hub with huggingface_hub: create_repo (private by default) and one commit
holding merged/'s files at the repo root, the model card, the Modelfile and the GGUF files. The token comes from the
environment only (HF_TOKEN); HF_ENDPOINT, when set, names another Hub (tests run a local one)."""
from __future__ import annotations

import os
from pathlib import Path

from .inputs import ExportError, environment_token

SKIP = {".export-key", "export_merge.json"}


class HubPushError(ExportError):
    pass


def files_to_push(merged_dir: Path | None, export_dir: Path, gguf_files: dict[str, str],
                  include_gguf: bool) -> list[tuple[str, Path]]:
    """(path in the repo, local file) of everything the commit holds."""
    files: list[tuple[str, Path]] = []
    if merged_dir is not None and merged_dir.is_dir():
        files += [(p.name, p) for p in sorted(merged_dir.iterdir()) if p.is_file() and p.name not in SKIP]
    for name in ("README.md", "Modelfile"):
        if (export_dir / name).exists():
            files.append((name, export_dir / name))
    if include_gguf:
        files += [(Path(p).name, Path(p)) for p in gguf_files.values()]
    return files


def push(repo_id: str, files: list[tuple[str, Path]], private: bool = True, message: str = "") -> dict:
    """Create the repo (exist_ok) and commit `files` in one commit; returns the repo URL and commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    token = environment_token()
    if not token:
        raise HubPushError("push_to_hub=True needs a Hugging Face token in the environment: set HF_TOKEN (a write "
                           "token from https://huggingface.co/settings/tokens; on Colab/Kaggle the secrets panel). "
                           "It is never a parameter.")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    api = HfApi(endpoint=endpoint, token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    ops = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files]
    info = api.create_commit(repo_id, operations=ops, commit_message=message or "nbutils export",
                             repo_type="model")
    return {"repo_url": str(url), "commit": info.oid, "commit_url": info.commit_url, "files": [n for n, _ in files],
            "private": private}
