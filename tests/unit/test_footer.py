"""One footer format (render/footer.py), for cell and panel alike."""
from __future__ import annotations

from types import SimpleNamespace

from opchat_magic.providers.base import Reply, Usage
from opchat_magic.render.footer import USAGE_NOT_REPORTED, footer_text, usage_text


def _reply(**kw):
    r = Reply(provider=kw.pop("provider", "Opchatgpts"), model=kw.pop("model", "opchat-local"))
    r.started_at, r.first_chunk_at, r.finished_at = 10.0, 10.03, 10.15
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_registered_name_server_model_in_out_and_times():
    r = _reply(usage=Usage(prompt_tokens=22, completion_tokens=13, total_tokens=35))
    assert footer_text(r) == "opchatgpts · opchat-local · 22 in / 13 out tokens · first chunk 0.03 s · 0.15 s"


def test_the_turn_names_its_provider():
    r = _reply(provider="OpenAICompatible", model="llama3.2", usage=Usage(1, 2, 3))
    assert footer_text(r).startswith("openai · llama3.2 · ")
    assert footer_text(r, provider="ollama").startswith("ollama · llama3.2 · ")


def test_reasoning_tokens_and_notes():
    usage = SimpleNamespace(prompt_tokens=40, completion_tokens=310, total_tokens=350, reasoning_tokens=250)
    r = _reply(provider="OpenAICompatible", model="o3-mini", usage=usage)
    text = footer_text(r, notes=["input cut: 12 earlier messages left out", " "])
    assert "40 in / 310 out tokens (250 reasoning)" in text
    assert text.endswith(" · input cut: 12 earlier messages left out")


def test_unreported_usage_is_said():
    assert USAGE_NOT_REPORTED in footer_text(_reply(usage=None))
    assert USAGE_NOT_REPORTED in footer_text(_reply(usage=Usage()))
    assert usage_text(Usage(total_tokens=9)) == "9 tokens"
    assert usage_text({"prompt_tokens": 3}) == "3 in tokens"


def test_a_record_of_a_turn_works_too():
    record = SimpleNamespace(provider="Opchatgpts", model="", usage={"prompt_tokens": 5, "completion_tokens": 6},
                             time_to_first_chunk=None, total_time=1.5)
    assert footer_text(record) == "opchatgpts · 5 in / 6 out tokens · 1.50 s"


def test_the_endpoint_is_named_short_and_without_credentials():
    r = _reply(provider="OpenAICompatible", model="qwen3", usage=Usage(1, 2, 3),
               endpoint="http://127.0.0.1:11434/v1/chat/completions")
    assert footer_text(r).startswith("openai · qwen3 · 127.0.0.1:11434 · 1 in / 2 out tokens")
    r.endpoint = "https://user@api.example.com/v1/chat/completions"
    assert " · api.example.com · " in footer_text(r) and "user" not in footer_text(r)
