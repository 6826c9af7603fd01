"""What nbutils.llm's tests send: one chat message and a retry policy fast enough for tests."""
from nbutils.llm import RetryPolicy

MSG = [{"role": "user", "content": "Text: rotary embeddings rotate query and key vectors by position."}]


FAST = RetryPolicy(max_attempts=4, base_s=0.05, cap_s=0.2)
