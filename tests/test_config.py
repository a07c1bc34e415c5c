import pickle

import pytest

from comfyui_fal_sd3.fal_core.config import FalConfig, Secret, check_key_form
from comfyui_fal_sd3.fal_core.errors import ConfigError, MissingKeyError

KEY = "0a1b2c3d-4e5f:0123456789abcdef0123456789abcdef"


def test_key_from_env_and_pair_and_file(tmp_path):
    assert FalConfig.from_env({"FAL_KEY": KEY}).key == Secret(KEY)
    pair = FalConfig.from_env({"FAL_KEY_ID": "id1", "FAL_KEY_SECRET": "sec1"})
    assert pair.key.reveal() == "id1:sec1" and pair.key_source == "env"
    key_file = tmp_path / "k"
    key_file.write_text(KEY + "\n")
    from_file = FalConfig.from_env({}, key_file=key_file)
    assert from_file.key.reveal() == KEY and from_file.key_source == "file"
    # The environment wins over the file.
    assert FalConfig.from_env({"FAL_KEY": "a:b"}, key_file=key_file).key.reveal() == "a:b"


def test_urls_from_env_and_overrides():
    cfg = FalConfig.from_env({"FAL_QUEUE_URL": "http://127.0.0.1:9/q/", "FAL_CDN_URL": "http://c"},
                             rest_url="http://r")
    assert (cfg.queue_url, cfg.rest_url, cfg.cdn_url) == ("http://127.0.0.1:9/q", "http://r", "http://c")
    with pytest.raises(ConfigError, match="queue_url='queue.fal.run'.*http"):
        FalConfig(queue_url="queue.fal.run")


def test_key_never_shows():
    cfg = FalConfig(key=KEY)
    for text in (repr(cfg), str(cfg), f"{cfg.key}", repr(cfg.key), str([cfg])):
        assert KEY not in text and "0123456789abcdef" not in text
    assert cfg.redact(f"oops {KEY} and 0123456789abcdef0123456789abcdef") == "oops *** and ***"
    with pytest.raises(TypeError):
        pickle.dumps(cfg.key)


def test_missing_key_says_how_to_set_it():
    with pytest.raises(MissingKeyError) as info:
        FalConfig.from_env({}, missing_key_hint="or use the settings dialog").authorization()
    assert "FAL_KEY" in str(info.value) and "settings dialog" in str(info.value)


def test_key_form_check():
    assert check_key_form(KEY) is None
    assert "key_id:key_secret" in check_key_form("just-a-secret")
    assert check_key_form("  ") == "the key is empty"


def test_platform_api_url_from_env_gets_the_key_and_nothing_else_does():
    cfg = FalConfig.from_env({"FAL_KEY": KEY, "FAL_API_URL": "http://127.0.0.1:9/api/v1/"})
    assert cfg.api_url == "http://127.0.0.1:9/api/v1"
    assert cfg.is_fal_host("http://127.0.0.1:9/api/v1/models/pricing")
    assert not cfg.is_fal_host("http://127.0.0.1:9/api/v10")
    assert FalConfig().api_url == "https://api.fal.ai/v1"


def test_a_refused_keys_message_says_where_it_came_from_and_what_to_do(tmp_path):
    key_file = tmp_path / "k"
    key_file.write_text(KEY)
    env_where, env_todo = FalConfig.from_env({"FAL_KEY": KEY}, key_place="the dialog").key_origin()
    assert "environment" in env_where and "set FAL_KEY" in env_todo and "the dialog" in env_todo
    file_where, file_todo = FalConfig.from_env({}, key_file=key_file, key_place="the dialog").key_origin()
    assert file_where == "the dialog" and "enter a valid key" in file_todo
