"""model_list in config.toml and in a LiteLLM proxy config.yaml: parsing, errors, os.environ/ keys."""

import logging
from pathlib import Path

import pytest

from llmqueue.errors import ConfigError
from llmqueue.limits.routing import Deployments, deployment_kwargs
from llmqueue.model_list import resolve
from llmqueue.ops.logs import secrets_of
from llmqueue.settings import load_settings

TWO_REGIONS = """
[[model_list]]
model_name = "gpt-4o"
[model_list.litellm_params]
model = "azure/gpt-4o-eu"
api_base = "https://eu.example.com"
api_key = "os.environ/AZURE_EU_KEY"
api_version = "2024-06-01"
rpm = 600
tpm = 100000

[[model_list]]
model_name = "gpt-4o"
model_info = { id = "openai-main" }
litellm_params = { model = "openai/gpt-4o", api_key = "os.environ/OPENAI_KEY", rpm = 500, temperature = 0.2 }

[[model_list]]
model_name = "gpt-4o-mini"
litellm_params = { model = "openai/gpt-4o-mini", api_key = "os.environ/OPENAI_KEY" }
"""

PROXY_YAML = """
model_list:
  - model_name: claude-sonnet
    litellm_params:
      model: anthropic/claude-sonnet-4-20250514
      api_key: os.environ/ANTHROPIC_KEY_A
      rpm: 50
      tpm: 40000
  - model_name: claude-sonnet
    litellm_params:
      model: bedrock/anthropic.claude-sonnet-4
      aws_region_name: us-east-1
      aws_secret_access_key: os.environ/AWS_SECRET
      rpm: 100
router_settings:
  cooldown_time: 12
  allowed_fails: 2
  routing_strategy: usage-based-routing-v2
litellm_settings:
  fallbacks: [{"claude-sonnet": ["claude-haiku"]}]
general_settings:
  master_key: sk-proxy-master-1234
"""


pytestmark = pytest.mark.usefixtures("clean_environment")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_model_list_in_config_toml_keeps_each_deployment_and_its_limit(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "config.toml", TWO_REGIONS))

    gpt4o = settings.deployments_of("gpt-4o")
    assert [d.name for d in gpt4o] == ["gpt-4o#0", "openai-main"]
    assert [(d.litellm_params.rpm, d.litellm_params.tpm) for d in gpt4o] == [(600, 100000), (500, None)]
    assert gpt4o[0].litellm_params.api_base == "https://eu.example.com"
    assert gpt4o[1].extra_params == {"temperature": 0.2}
    assert settings.deployments_of("openai/gpt-4o") == []


def test_os_environ_keys_are_read_from_the_environment_given_at_start() -> None:
    path = Path("config.toml")
    path.write_text(TWO_REGIONS, encoding="utf-8")
    deployments = load_settings(path).model_list

    resolved = resolve(deployments, {"AZURE_EU_KEY": "azure-eu-secret-1", "OPENAI_KEY": "sk-openai-2"})

    assert resolved[0].params["api_key"] == "azure-eu-secret-1"
    assert resolved[0].params["model"] == "azure/gpt-4o-eu"
    assert resolved[0].params["api_version"] == "2024-06-01"
    assert resolved[1].params == {"model": "openai/gpt-4o", "api_key": "sk-openai-2", "temperature": 0.2}
    assert resolved[0].secrets == ("azure-eu-secret-1",)


def test_a_missing_environment_variable_names_the_entry_and_key(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "config.toml", TWO_REGIONS))

    with pytest.raises(ConfigError) as caught:
        resolve(settings.model_list, {"OPENAI_KEY": "sk-openai-2"})

    assert (
        "model_list[0] (gpt-4o) litellm_params.api_key: environment variable AZURE_EU_KEY is not set"
        in str(caught.value)
    )


def test_settings_hold_only_the_reference_to_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_EU_KEY", "azure-eu-secret-1")
    settings = load_settings(write(tmp_path, "config.toml", TWO_REGIONS))

    assert "azure-eu-secret-1" not in settings.model_dump_json()
    assert "azure-eu-secret-1" not in repr(settings)


def test_validation_errors_name_entry_index_model_name_and_key(tmp_path: Path) -> None:
    text = """
[[model_list]]
model_name = "gpt-4o"
litellm_params = { model = "openai/gpt-4o", rpm = 600 }

[[model_list]]
model_name = "gpt-4o"
litellm_params = { model = "azure/gpt-4o", rpm = -1 }

[[model_list]]
model_name = "embed"
litellm_params = { api_key = "os.environ/EMBED_KEY" }
region = "eu"
"""
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "config.toml", text))

    message = str(caught.value)
    assert "config.toml" in message
    assert "model_list[1] (gpt-4o) litellm_params.rpm: Input should be greater than 0" in message
    assert "model_list[2] (embed) litellm_params.model: required" in message
    assert "model_list[2] (embed) region: unknown key" in message
    assert "model_list[0]" not in message


def test_two_deployments_with_one_id_are_an_error(tmp_path: Path) -> None:
    text = """
[[model_list]]
model_name = "gpt-4o"
litellm_params = { model = "openai/gpt-4o" }
model_info = { id = "main" }

[[model_list]]
model_name = "gpt-4o"
litellm_params = { model = "azure/gpt-4o" }
model_info = { id = "main" }
"""
    with pytest.raises(ConfigError, match=r"model_list\[1\] \(gpt-4o\) model_info.id: 'main' is already"):
        load_settings(write(tmp_path, "config.toml", text))


def test_fallbacks_table_and_router_settings_in_config_toml(tmp_path: Path) -> None:
    text = (
        'fallbacks = { "gpt-4o" = ["gpt-4o-mini"] }\n\n[router_settings]\ncooldown_time = 20\n' + TWO_REGIONS
    )
    settings = load_settings(write(tmp_path, "config.toml", text))

    assert settings.fallbacks == {"gpt-4o": ["gpt-4o-mini"]}
    assert settings.router_settings.cooldown_time == 20
    assert settings.router_settings.allowed_fails == 3


def test_bad_router_setting_names_its_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[router_settings\] cooldown_time"):
        load_settings(write(tmp_path, "config.toml", "[router_settings]\ncooldown_time = -3\n"))


def test_litellm_proxy_yaml_gives_model_list_fallbacks_and_cooldowns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "llmqueue.config"):
        settings = load_settings(litellm_config=write(tmp_path, "proxy.yaml", PROXY_YAML))

    names = [d.name for d in settings.deployments_of("claude-sonnet")]
    assert names == ["claude-sonnet#0", "claude-sonnet#1"]
    extra = settings.model_list[1].extra_params
    assert extra["aws_region_name"] == "us-east-1"
    assert extra["aws_secret_access_key"].get_secret_value() == "os.environ/AWS_SECRET"
    resolved = resolve(settings.model_list, {"ANTHROPIC_KEY_A": "ant-key-1", "AWS_SECRET": "aws-secret-2"})
    assert resolved[1].params["aws_secret_access_key"] == "aws-secret-2"
    assert resolved[1].secrets == ("aws-secret-2",)
    assert settings.fallbacks == {"claude-sonnet": ["claude-haiku"]}
    assert (settings.router_settings.cooldown_time, settings.router_settings.allowed_fails) == (12, 2)
    warning = caplog.text
    assert "router_settings.routing_strategy" in warning and "general_settings" in warning
    assert "sk-proxy-master-1234" not in warning


def test_yaml_validation_names_the_file_and_entry(tmp_path: Path) -> None:
    text = "model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, tpm: zero}\n"
    with pytest.raises(ConfigError) as caught:
        load_settings(litellm_config=write(tmp_path, "proxy.yaml", text))

    assert "proxy.yaml" in str(caught.value)
    assert "model_list[0] (a) litellm_params.tpm:" in str(caught.value)


def test_model_list_in_both_files_is_an_error(tmp_path: Path) -> None:
    toml = write(tmp_path, "config.toml", TWO_REGIONS)
    yaml = write(tmp_path, "proxy.yaml", PROXY_YAML)

    with pytest.raises(ConfigError, match="model_list set in both"):
        load_settings(toml, litellm_config=yaml)


def test_a_yaml_without_model_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a model_list"):
        load_settings(litellm_config=write(tmp_path, "proxy.yaml", "general_settings: {}\n"))


def test_retries_in_litellm_params_are_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = '[[model_list]]\nmodel_name = "m"\nlitellm_params = { model = "openai/m", num_retries = 3 }\n'
    with caplog.at_level(logging.WARNING, "llmqueue.config"):
        settings = load_settings(write(tmp_path, "config.toml", text))

    assert "model_list[0] (m) litellm_params.num_retries is ignored" in caplog.text
    assert "num_retries" not in resolve(settings.model_list, {})[0].params


def test_deployment_limits_come_from_litellm_params_unless_limits_table_names_the_deployment(
    tmp_path: Path,
) -> None:
    text = TWO_REGIONS + '\n[limits."openai-main"]\nrpm = 450\nburst_seconds = 2\n'
    settings = load_settings(write(tmp_path, "config.toml", text))
    env = {"AZURE_EU_KEY": "k1", "OPENAI_KEY": "k2"}

    candidates = Deployments(settings, env).candidates("gpt-4o")

    assert [(c.scope, c.limit.rpm if c.limit else None) for c in candidates] == [
        ("gpt-4o#0", 600),
        ("openai-main", 450),
    ]
    assert candidates[1].limit is not None and candidates[1].limit.burst_seconds == 2
    assert Deployments(settings, env).candidates("gpt-4o-mini")[0].limit is None


def test_deployment_kwargs_replace_credentials_and_keep_the_jobs_own_params() -> None:
    path = Path("config.toml")
    path.write_text(TWO_REGIONS, encoding="utf-8")
    resolved = resolve(load_settings(path).model_list, {"AZURE_EU_KEY": "k1", "OPENAI_KEY": "k2"})
    job_kwargs = {
        "model": "gpt-4o",
        "api_key": "worker-default-key",
        "api_base": "http://default",
        "temperature": 0.9,
        "messages": [],
        "timeout": 60,
    }

    kwargs = deployment_kwargs(job_kwargs, resolved[1], {"temperature": 0.9})

    assert kwargs == {
        "model": "openai/gpt-4o",
        "api_key": "k2",
        "temperature": 0.9,
        "messages": [],
        "timeout": 60,
    }


def test_secrets_of_settings_include_model_list_credentials(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "config.toml", TWO_REGIONS))

    secrets = secrets_of(settings, {"AZURE_EU_KEY": "azure-eu-secret-1", "OPENAI_KEY": "sk-openai-2"})

    assert {"azure-eu-secret-1", "sk-openai-2"} <= set(secrets)


def test_an_inline_credential_is_hidden_in_settings_and_scrubbed_from_logs(tmp_path: Path) -> None:
    text = (
        '[[model_list]]\nmodel_name = "claude"\n'
        'litellm_params = { model = "bedrock/claude", aws_secret_access_key = "inline-aws-secret-9" }\n'
    )
    settings = load_settings(write(tmp_path, "config.toml", text))

    assert "inline-aws-secret-9" not in repr(settings)
    assert "inline-aws-secret-9" in secrets_of(settings, {})
    assert resolve(settings.model_list, {})[0].params["aws_secret_access_key"] == "inline-aws-secret-9"


def test_a_worker_without_a_deployments_key_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from llmqueue.cli import app

    monkeypatch.delenv("AZURE_EU_KEY", raising=False)
    monkeypatch.setenv("OPENAI_KEY", "sk-openai-2")
    yaml = write(tmp_path, "proxy.yaml", PROXY_YAML)
    toml = write(
        tmp_path, "regions.toml", TWO_REGIONS
    )  # not ./config.toml, which --litellm-config would meet

    from_yaml = CliRunner().invoke(
        app, ["worker", "--litellm-config", str(yaml), "--redis-url", "redis://127.0.0.1:1"]
    )
    from_toml = CliRunner().invoke(
        app, ["worker", "--config", str(toml), "--redis-url", "redis://127.0.0.1:1"]
    )

    assert isinstance(from_yaml.exception, ConfigError)
    assert (
        "model_list[0] (claude-sonnet) litellm_params.api_key: environment variable ANTHROPIC_KEY_A"
        in str(from_yaml.exception)
    )
    assert isinstance(from_toml.exception, ConfigError)
    assert (
        "model_list[0] (gpt-4o) litellm_params.api_key: environment variable AZURE_EU_KEY is not set"
        in str(from_toml.exception)
    )
