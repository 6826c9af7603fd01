"""nbutils.llm.redact: secrets from the environment and key-shaped strings are masked."""




# ---------------------------------------------------------------- empty replies, long waits, drips, secrets
def test_redact_masks_env_secrets_and_key_shapes(monkeypatch):
    from nbutils.llm import redact

    monkeypatch.setenv("MY_SERVICE_TOKEN", "plainsecretvalue99")
    text = ('{"authorization": "Bearer gsk_abcdefghij1234567890", "note": "plainsecretvalue99", '
            '"other": "sk-proj-ABCDEFGH12345678 hf_ABCDEFGHIJKLMNOP"} Authorization: Basic dXNlcjpwYXNz')
    out = redact(text)
    for secret in ("gsk_abc", "plainsecretvalue99", "sk-proj", "hf_ABC", "dXNlcjpwYXNz"):
        assert secret not in out
    assert redact("attention is all you need: tokens: 512") == "attention is all you need: tokens: 512"
