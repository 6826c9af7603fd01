"""nbutils.llm.deadline: a server dripping its reply is cut at the total time limit (both backends)."""
import time

import pytest

from nbutils.llm import LLMError, make_backend
from tests.support.fake_llm_server import FakeLLMServer
from tests.support.llm import MSG


# ---------------------------------------------------------------- empty replies, long waits, drips, secrets
@pytest.mark.parametrize("kind", ["groq", "openai"])
def test_a_dripping_server_is_cut_at_the_total_time_limit(groq_env, kind):
    with FakeLLMServer(script=[{"drip_s": 0.5}]) as srv:
        url = srv.url + ("/v1" if kind == "openai" else "")
        backend = make_backend(kind, "m" if kind == "openai" else None, url, timeout_s=2.0)
        t0 = time.monotonic()
        with pytest.raises(LLMError) as e:
            backend.complete(MSG, max_tokens=32)
        elapsed = time.monotonic() - t0
    assert e.value.kind == "timeout" and elapsed < 3.5, elapsed
