"""Fixtures shared by nbutils.llm's tests: a Groq key (not a real one) in the environment, no base URL set."""
import pytest


@pytest.fixture
def groq_env(monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_not_a_real_key")
    monkeypatch.delenv("GROQ_BASE_URL", raising=False)
