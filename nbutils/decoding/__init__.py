"""One generation engine for 05's base and tuned passes and 03's local backend (see engine.py)."""
from .engine import EngineSettings, GenerationEngine, Session, choose_path, fit_batch_size, generate_in_order
from .params import (
                     STOP_MARKERS,
                     GenParams,
                     clean_answer,
                     cut_at_stop,
                     eos_ids,
                     left_pad,
                     length_sorted_batches,
                     rows_from_new_tokens,
)
from .plain import generate_plain

__all__ = ["EngineSettings", "generate_in_order", "GenerationEngine", "Session", "choose_path", "fit_batch_size",
           "GenParams",
           "STOP_MARKERS", "clean_answer", "cut_at_stop", "eos_ids", "left_pad", "length_sorted_batches",
           "rows_from_new_tokens", "generate_plain"]
