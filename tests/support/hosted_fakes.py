"""Stand-ins for the hosted runtimes' secrets APIs (google.colab.userdata, kaggle_secrets), shaped like the real
ones: a missing secret raises, as does one the notebook was not granted access to."""
from __future__ import annotations

import types


class SecretNotFoundError(Exception):
    pass


class NotebookAccessError(Exception):
    pass


def fake_colab_modules(store: dict[str, str], denied: tuple[str, ...] = ()) -> dict[str, types.ModuleType]:
    """sys.modules entries for `from google.colab import userdata` backed by `store`."""
    userdata = types.ModuleType("google.colab.userdata")
    userdata.SecretNotFoundError = SecretNotFoundError
    userdata.NotebookAccessError = NotebookAccessError
    userdata.calls = []

    def get(key: str) -> str:
        userdata.calls.append(key)
        if key in denied:
            raise NotebookAccessError(key)
        if key not in store:
            raise SecretNotFoundError(key)
        return store[key]

    userdata.get = get
    colab = types.ModuleType("google.colab")
    colab.userdata = userdata
    google = types.ModuleType("google")
    google.colab = colab
    return {"google": google, "google.colab": colab, "google.colab.userdata": userdata}


def fake_kaggle_modules(store: dict[str, str]) -> dict[str, types.ModuleType]:
    """sys.modules entry for `from kaggle_secrets import UserSecretsClient` backed by `store`."""
    module = types.ModuleType("kaggle_secrets")

    class UserSecretsClient:
        def get_secret(self, label: str) -> str:
            if label not in store:
                raise ValueError(f"Unexpected response from the service. No secret labeled {label}")
            return store[label]

    module.UserSecretsClient = UserSecretsClient
    return {"kaggle_secrets": module}
