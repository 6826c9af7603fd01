"""nbutils.decoding.params: left padding, stop handling, length-sorted batches, cutting the next Alpaca
section off an answer."""
from __future__ import annotations

from nbutils import evaluate as ev


# ---------------------------------------------------------------- batching helpers
def test_left_pad_and_stop_handling():
    ids, mask = ev.left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ev.cut_at_stop([4, 9, 2, 2, 2], [2]) == ([4, 9], True)
    assert ev.cut_at_stop([4, 9, 3], [2]) == ([4, 9, 3], False)
    batches = ev.length_sorted_batches([3, 10, 1, 9, 4], batch_size=2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_clean_answer_cuts_the_next_alpaca_section():
    assert ev.clean_answer(" It works.\n\n### Instruction:\nNext one") == "It works."
    assert ev.clean_answer("plain answer  ") == "plain answer"
