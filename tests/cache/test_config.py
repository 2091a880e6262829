"""``[cache]`` settings: the config file, ``cache = false``, the environment and the default directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmqueue.errors import ConfigError
from llmqueue.settings import CacheConfig, load_settings


def test_cache_is_on_with_a_disk_backend_by_default() -> None:
    config = load_settings(Path("/dev/null")).cache
    assert (config.enabled, config.backend, config.ttl) == (True, "disk", None)


def test_cache_false_at_the_top_of_the_file_turns_it_off(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('cache = false\n[llm]\nmodel = "gpt-4o-mini"\n', encoding="utf-8")
    assert load_settings(path).cache.enabled is False


def test_the_cache_table_sets_backend_ttl_and_size(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[cache]\nbackend = "redis"\nttl = 86400\nmax_size_mb = 50\n', encoding="utf-8")
    config = load_settings(path).cache
    assert (config.backend, config.ttl, config.max_size_mb) == ("redis", 86400, 50)


def test_an_unknown_backend_names_the_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[cache]\nbackend = "s3"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[cache\] backend"):
        load_settings(path)


def test_environment_variables_set_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "answers"))
    monkeypatch.setenv("CACHE_ENABLED", "false")
    config = load_settings(Path("/dev/null")).cache
    assert (config.dir, config.enabled) == (tmp_path / "answers", False)


def test_the_default_directory_follows_xdg_cache_home(tmp_path: Path) -> None:
    assert CacheConfig().resolved_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "llmqueue"
    assert CacheConfig().resolved_dir({}) == Path.home() / ".cache" / "llmqueue"
    assert CacheConfig(dir=tmp_path / "mine").resolved_dir({"XDG_CACHE_HOME": "/x"}) == tmp_path / "mine"
