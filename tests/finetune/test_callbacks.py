"""nbutils.finetune.callbacks: a non-finite loss stops training with a clear error."""
from __future__ import annotations

import pytest

from nbutils.finetune import callbacks


# ------------------------------------------------------------------------------------------------ fast
def test_nonfinite_loss_stops_with_a_clear_error():
    cb = callbacks.StopOnNonFiniteLoss()
    state = type("S", (), {"global_step": 7})()
    cb.on_log(None, state, None, logs={"loss": 1.5, "learning_rate": 2e-4})  # fine
    with pytest.raises(callbacks.NonFiniteLossError, match="step 7.*learning_rate"):
        cb.on_log(None, state, None, logs={"loss": float("nan"), "learning_rate": 2e-4})
    with pytest.raises(callbacks.NonFiniteLossError):
        cb.on_log(None, state, None, logs={"eval_loss": float("inf")})
