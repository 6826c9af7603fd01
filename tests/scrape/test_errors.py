"""nbutils.scrape.errors: no secret lands in what 01 prints or stores."""
from __future__ import annotations

from pathlib import Path

from nbutils.scrape import ScrapeConfig, redact, scrape
from tests.support.hostile_servers import HostileServer, send


def test_redact_masks_env_secrets_credentials_in_urls_and_auth_headers(monkeypatch):
    monkeypatch.setenv("GROQ_API_KEY", "gsk_live_0123456789abcdef")
    text = redact("echo: Authorization: Bearer abcdefghijklmnop; key gsk_live_0123456789abcdef; "
                  "url https://bob:hunter22@host/x?api_key=s3cr3tvalue&start=0")
    for secret in ("abcdefghijklmnop", "gsk_live_0123456789abcdef", "hunter22", "s3cr3tvalue"):
        assert secret not in text
    assert "start=0" in text and "https://[REDACTED]@host/x" in text


def test_credentials_in_the_api_url_stay_out_of_the_report_and_the_output(tmp_path, capsys):
    def echo_headers(h):                                      # an error page that echoes what it was sent
        send(h, 500, f"bad request from {h.headers.get('Authorization')} to {h.path}".encode(), "text/plain")

    with HostileServer({"/api/query": echo_headers}) as s:
        api = s.url("/api/query").replace("http://", "http://user:pa55word-xyz@") + "?token=tok-abcdef12345"
        cfg = ScrapeConfig.from_params(profile="demo", data_dir=str(tmp_path), backend="api", api_url=api,
                                       max_retries=0, delay_s=0.01)
        result = scrape(cfg, api_url=api)
    stored = Path(cfg.report_path).read_text() + result.summary() + capsys.readouterr().out
    assert result.listing_failures and "HTTP 500" in stored
    assert "pa55word-xyz" not in stored and "tok-abcdef12345" not in stored
