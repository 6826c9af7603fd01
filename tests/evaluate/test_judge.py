"""nbutils.evaluate.judge: LLM-as-judge through nbutils.llm backends (both orders asked, the tuned model's
preference scored) and verdict parsing."""
from __future__ import annotations

from nbutils import evaluate as ev


# ---------------------------------------------------------------- LLM-as-judge through nbutils.llm backends
class ScriptedJudge:
    """A Backend (nbutils.llm protocol) whose verdict is a function of the prompt; counts its calls."""

    name, model, supports_json_mode, batch_size = "scripted", "judge-1", False, 1

    def __init__(self, decide):
        self.decide, self.calls = decide, 0

    def complete(self, messages, *, max_tokens=512, temperature=0.0, json_mode=False):
        from nbutils.llm import Completion

        self.calls += 1
        return Completion(text=self.decide(messages[-1]["content"]))


def _answer(prompt: str, letter: str) -> str:
    return prompt.split(f"Answer {letter}:\n", 1)[1].split("\n\n", 1)[0]


def test_judge_asks_both_orders_and_scores_the_tuned_preference(tmp_path):
    rows = [{"id": i, "instruction": f"q{i}", "input": ""} for i in range(4)]
    refs = [f"right answer {i}" for i in range(4)]
    base, tuned = [f"wrong {i}" for i in range(4)], list(refs)
    # a fair judge: picks the answer equal to the reference, wherever it stands
    fair = ScriptedJudge(lambda p: "A" if _answer(p, "A") == p.split("Reference answer:\n")[1].split("\n\n")[0] else "B")
    judged = ev.judge_pairwise(rows, refs, base, tuned, fair, tmp_path / "judge.jsonl", workers=1)
    assert fair.calls == 8                                    # two orders per example
    assert [j["tuned_pref"] for j in judged] == [1.0] * 4 and all(j["consistent"] for j in judged)
    m = ev.judge_metrics(judged, n_boot=200, seed=0, confidence=0.95)["judge_preference"]
    assert m["tuned"] == 1.0 and m["base"] == 0.0 and m["order_consistency"] == 1.0
    # a position-biased judge (always "A") cancels out: no preference, never order-consistent
    biased = ScriptedJudge(lambda p: "A")
    judged = ev.judge_pairwise(rows, refs, base, tuned, biased, tmp_path / "biased.jsonl", workers=1)
    assert [j["tuned_pref"] for j in judged] == [0.5] * 4 and not any(j["consistent"] for j in judged)
    # verdicts are cached: a rerun makes no call
    again = ScriptedJudge(lambda p: "B")
    assert ev.judge_pairwise(rows, refs, base, tuned, again, tmp_path / "judge.jsonl", workers=1) is not None
    assert again.calls == 0


def test_parse_verdict():
    assert ev.parse_verdict("B") == "B"
    assert ev.parse_verdict("Answer A is better.") == "A"
    assert ev.parse_verdict("tie") == "TIE"
    assert ev.parse_verdict("neither") is None
