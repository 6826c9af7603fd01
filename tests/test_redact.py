"""nbutils.redact: the one redaction every stage uses."""
from nbutils.redact import MASK, redact


def test_env_secrets_urls_headers_and_key_shaped_values_are_masked(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789")
    text = redact('{"error": "bad key", "headers": {"Authorization": "Bearer gsk_abcdefghijklmnop"}} '
                  "token tok-0123456789 at https://bob:hunter22@host/x?api_key=s3cr3tvalue&start=0 sk-proj_ABCDEFGH12")
    for secret in ("gsk_abcdefghijklmnop", "tok-0123456789", "hunter22", "s3cr3tvalue", "sk-proj_ABCDEFGH12"):
        assert secret not in text
    assert "start=0" in text and f"https://{MASK}@host/x" in text and '"error": "bad key"' in text


def test_plain_text_is_left_alone():
    assert redact("LoRA adds a low-rank update; see https://arxiv.org/abs/2106.09685?v=2") == \
        "LoRA adds a low-rank update; see https://arxiv.org/abs/2106.09685?v=2"
    assert redact("") == ""
