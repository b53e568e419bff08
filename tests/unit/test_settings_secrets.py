"""Which provider options are secrets: one rule for `%opchat config` and for scrubbing errors."""
from __future__ import annotations

import pytest

from opchat_magic.settings import OpchatSettings, is_secret_name, shown_setting, turn_options


@pytest.mark.parametrize("name", ["api_key", "apiKey", "proxy_password", "X-Auth-Token", "nonce", "secret",
                                  "token", "Authorization", "passwd"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["max_tokens", "author", "keywords", "bot_id", "context_id", "monkey",
                                  "tokenizer_path", "passwords_file_hint"])
def test_ordinary_names_are_shown(name):
    assert not is_secret_name(name)


def test_config_masks_secrets_and_shows_the_rest():
    shown = shown_setting({"api_key": "sk-123", "max_tokens": 64, "author": "ann", "nonce": "auto",
                           "proxy": "http://me:hunter2@127.0.0.1:9"})
    assert "sk-123" not in shown and "'api_key': '***'" in shown
    assert "'max_tokens': 64" in shown and "'author': 'ann'" in shown
    assert "'nonce': 'auto'" in shown  # a mode, not a secret
    assert "hunter2" not in shown


def test_turn_options_scrub_every_secret_named_option_from_errors():
    settings = OpchatSettings()
    settings.provider_options = {"api_key": "sk-abc", "proxy_password": "pw-xyz", "max_tokens": 64}
    options = turn_options(settings)
    assert {"sk-abc", "pw-xyz"} <= set(options.secrets)
    assert "64" not in options.secrets
