"""nbutils.generate.grounding: the no-LLM score of an Output against its page, and its threshold in stage 03."""
import pytest

from nbutils.generate import GenerateConfig, run
from nbutils.generate.grounding import Grounder, grounding_score
from nbutils.io import read_json, read_jsonl, write_jsonl
from tests.support.fake_llm_server import FakeLLMServer

PAGE = ("Low-rank adaptation freezes the pretrained weights and learns two small matrices per projection. "
        "With rank 16 on all linear layers it matched full fine-tuning within 0.5 points while training 0.6 "
        "percent of the parameters.")
OTHER = ("Speculative decoding drafts several tokens with a small model and verifies them with the large one "
         "in a single forward pass, which cuts latency by half on long replies. The acceptance rate of drafted "
         "tokens decides the speed-up.")


def test_output_from_its_page_scores_high_and_a_swapped_one_low():
    g = Grounder("idf", corpus=[PAGE, OTHER])
    own = "LoRA with rank 16 on all linear layers matched full fine-tuning while training 0.6 percent of parameters."
    assert g.score(own, PAGE) > 0.8
    assert g.score(own, OTHER) < 0.2
    assert g.score("The draft model verifies tokens in a single forward pass.", OTHER) > 0.8


def test_words_are_stemmed_stop_words_ignored_numbers_kept_whole():
    assert grounding_score("The models were trained.", "A model is training.", unit="unigram") == 1.0
    assert grounding_score("It matched within 0.7 points.", PAGE, unit="unigram") < 1.0     # 0.7 is not 0.5
    assert grounding_score("It is so.", PAGE) == 1.0           # no content word: nothing the page could fail to hold
    assert grounding_score("anything", "") == 0.0


def test_rare_words_weigh_more_with_idf():
    corpus = [PAGE, OTHER, "The model is trained on data.", "A model and its data."]
    g = Grounder("idf", corpus=corpus)
    plain = Grounder("unigram")
    out = "The model uses speculative drafting."           # "model" is common, "speculative" rare
    page = "The model and the data."
    assert g.score(out, page) < plain.score(out, page)


def test_unknown_unit_is_named():
    with pytest.raises(ValueError, match="unknown grounding unit 'rouge'"):
        Grounder("rouge")


def test_stage_scores_every_triple_and_min_grounding_drops_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_test_not_a_real_key")
    write_jsonl(tmp_path / "pages.jsonl", [{"paper_id": "2405.00001v1", "page": 1, "chunk": 0, "text": PAGE},
                                           {"paper_id": "2405.00002v1", "page": 1, "chunk": 0, "text": OTHER}])

    def reply(body):          # one Output from the page, one about something else
        page = body["messages"][-1]["content"].split("Text:")[-1]
        words = [w for w in page.split() if len(w) > 3][:8]
        return (f"Triple 1:\nInstruction: Which terms come after {' '.join(words[:4])}?\nInput: \n"
                f"Output: {' '.join(words)}.\n\n"
                f"Triple 2:\nInstruction: Who won the football cup in the year {len(page)}, and where?\nInput: \n"
                f"Output: Brazil beat Germany after extra time in front of a crowd of {len(page)}.")

    with FakeLLMServer(reply=reply) as srv:
        cfg = GenerateConfig.from_params(profile="full", data_dir=str(tmp_path), base_url=srv.url, rpm=0, tpm=0,
                                         min_grounding=0.5)
        res = run(cfg)
    kept = list(read_jsonl(tmp_path / "triples.jsonl"))
    dropped = list(read_jsonl(tmp_path / "triples_dropped.jsonl"))
    assert len(kept) == 2 and all(t["grounding"] >= 0.5 for t in kept)
    assert len(dropped) == 2 and all(t["drop_reason"] == "low_grounding" and t["grounding"] < 0.5 for t in dropped)
    assert all("Brazil" in t["output"] for t in dropped)
    report = read_json(tmp_path / "generate_report.json")
    assert report["drops"] == {"low_grounding": 2}
    assert report["grounding"]["unit"] == "idf" and report["grounding"]["below_min"] == 2
    assert "grounding (idf, no LLM)" in res.summary()
