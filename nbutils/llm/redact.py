"""03's redaction is the library's one (nbutils.redact): re-exported for the LLM backends."""
from ..redact import MASK, redact, secret_values

__all__ = ["MASK", "redact", "secret_values"]
