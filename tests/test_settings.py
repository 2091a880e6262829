"""load_settings: defaults < config.toml < environment < explicit arguments, and errors that say where."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmqueue.errors import ConfigError
from llmqueue.settings import LimitConfig, LLMConfig, WorkerConfig, load_settings

WriteConfig = Callable[[str], Path]


pytestmark = pytest.mark.usefixtures("clean_environment")


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a TOML file outside the cwd and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "conf" / "llmqueue.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return write


# ---- defaults and precedence ---------------------------------------------------------------------


def test_defaults_keep_openhands_retry_settings() -> None:
    llm = load_settings().llm

    assert (llm.num_retries, llm.retry_min_wait, llm.retry_max_wait, llm.retry_multiplier) == (
        4,
        5.0,
        30.0,
        2.0,
    )


def test_defaults_without_file_or_env_equal_the_model_defaults() -> None:
    settings = load_settings()

    assert settings.llm == LLMConfig()
    assert settings.worker == WorkerConfig()
    assert (settings.llm_groups, settings.limits) == ({}, {})
    assert settings.redis_url.get_secret_value() == "redis://localhost:6379/0"


def test_config_file_overrides_defaults(write_config: WriteConfig) -> None:
    path = write_config("[llm]\nnum_retries = 2\n")

    assert load_settings(path).llm.num_retries == 2


def test_env_overrides_config_file(write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config("[llm]\nnum_retries = 2\n")
    monkeypatch.setenv("LLM_NUM_RETRIES", "3")

    assert load_settings(path).llm.num_retries == 3


def test_explicit_overrides_beat_env_and_file(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config("[llm]\nnum_retries = 2\n")
    monkeypatch.setenv("LLM_NUM_RETRIES", "3")

    assert load_settings(path, llm={"num_retries": 9}).llm.num_retries == 9


def test_layers_merge_per_key_rather_than_replacing_the_section(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config('[llm]\nmodel = "from-file"\nnum_retries = 2\nretry_max_wait = 60\n')
    monkeypatch.setenv("LLM_NUM_RETRIES", "3")

    llm = load_settings(path, llm={"retry_max_wait": 45}).llm

    assert (llm.model, llm.num_retries, llm.retry_max_wait) == ("from-file", 3, 45.0)


# ---- environment ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env_name", "raw", "field", "expected"),
    [
        ("LLM_MODEL", "anthropic/claude-sonnet", "model", "anthropic/claude-sonnet"),
        ("LLM_API_KEY", "key-from-env-123", "api_key", "key-from-env-123"),
        ("LLM_BASE_URL", "http://127.0.0.1:4000/v1", "base_url", "http://127.0.0.1:4000/v1"),
        ("LLM_API_VERSION", "2024-06-01", "api_version", "2024-06-01"),
        ("LLM_EMBEDDING_MODEL", "text-embedding-3-large", "embedding_model", "text-embedding-3-large"),
        (
            "LLM_EMBEDDING_DEPLOYMENT_NAME",
            "azure/emb-deploy",
            "embedding_deployment_name",
            "azure/emb-deploy",
        ),
        ("LLM_DROP_PARAMS", "false", "drop_params", False),
        ("LLM_DISABLE_VISION", "true", "disable_vision", True),
        ("LLM_CACHING_PROMPT", "false", "caching_prompt", False),
        ("LLM_NUM_RETRIES", "7", "num_retries", 7),
        ("LLM_RETRY_MIN_WAIT", "1.5", "retry_min_wait", 1.5),
        ("LLM_RETRY_MAX_WAIT", "90", "retry_max_wait", 90.0),
        ("LLM_RETRY_MULTIPLIER", "3", "retry_multiplier", 3.0),
        ("LLM_RPM", "60", "rpm", 60.0),
        ("LLM_TPM", "10000", "tpm", 10000.0),
    ],
)
def test_llm_env_variable_sets_its_field(
    monkeypatch: pytest.MonkeyPatch, env_name: str, raw: str, field: str, expected: Any
) -> None:
    assert getattr(LLMConfig(), field) != expected, "the test value must differ from the default"
    monkeypatch.setenv(env_name, raw)

    value = getattr(load_settings().llm, field)

    if field == "api_key":
        value = value.get_secret_value()
    assert value == expected


def test_unknown_llm_env_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_FOO", "bar")
    monkeypatch.setenv("LLM_SOMETHING_OPENHANDS_USES", "1")

    assert load_settings().llm == LLMConfig()


def test_unknown_worker_env_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_FOO", "bar")

    assert load_settings().worker == WorkerConfig()


def test_batch_env_variables_set_the_batch_section_and_others_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BATCH_MAX_COST", "2.5")
    monkeypatch.setenv("BATCH_WINDOW", "300")
    monkeypatch.setenv("BATCH_SIZE", "32")  # a training script's, not ours

    batch = load_settings().batch
    assert (batch.max_cost, batch.window, batch.max_tokens) == (2.5, 300, None)


def test_batch_env_variables_override_the_file(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config("[batch]\nmax_cost = 10.0\nmax_tokens = 5000\n")
    monkeypatch.setenv("BATCH_MAX_COST", "3")

    batch = load_settings(config_path=path).batch
    assert (batch.max_cost, batch.max_tokens) == (3.0, 5000)


def test_a_bad_batch_env_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_WINDOW", "0")

    with pytest.raises(ConfigError, match=r"batch\.window \(env BATCH_WINDOW\)"):
        load_settings()


@pytest.mark.parametrize("section", ["LLM", "WORKER", "BATCH", "CACHE"])
@pytest.mark.parametrize("value", ["yes", "1", "{}"])
def test_a_bare_section_variable_of_another_program_neither_fails_nor_hides_ours(
    section: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(section, value)  # CACHE=yes, BATCH=1: names other programs use too
    ours = {
        "LLM": ("LLM_NUM_RETRIES", "7"),
        "WORKER": ("WORKER_MAX_JOBS", "7"),
        "BATCH": ("BATCH_WINDOW", "7"),
    }
    name, set_to = ours.get(section, ("CACHE_TTL", "7"))
    monkeypatch.setenv(name, set_to)

    settings = load_settings()
    got = {
        "LLM": settings.llm.num_retries,
        "WORKER": settings.worker.max_jobs,
        "BATCH": settings.batch.window,
        "CACHE": settings.cache.ttl,
    }[section]
    assert got == 7


@pytest.mark.parametrize("name", ["LIMITS", "LLM_GROUPS", "MODEL_LIST", "FALLBACKS", "ROUTER_SETTINGS"])
def test_a_variable_named_like_a_config_only_setting_is_not_read(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "not json")  # failed with pydantic-settings' own error and a traceback

    settings = load_settings()
    assert (settings.limits, settings.llm_groups, settings.model_list, settings.fallbacks) == ({}, {}, [], {})


def test_redis_url_is_read_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6380/3")

    assert load_settings().redis_url.get_secret_value() == "redis://cache.internal:6380/3"


def test_worker_env_variable_sets_its_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_MAX_JOBS", "17")

    assert load_settings().worker.max_jobs == 17


# ---- config.toml location ------------------------------------------------------------------------


def test_config_toml_in_cwd_is_read_when_no_path_is_given(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[llm]\nnum_retries = 1\n", encoding="utf-8")

    assert load_settings().llm.num_retries == 1


def test_explicit_config_path_replaces_the_cwd_config_toml(tmp_path: Path, write_config: WriteConfig) -> None:
    (tmp_path / "config.toml").write_text("[llm]\nnum_retries = 1\n", encoding="utf-8")
    path = write_config('[llm]\nmodel = "other"\n')

    llm = load_settings(path).llm

    assert (llm.model, llm.num_retries) == ("other", 4)


def test_redis_url_and_worker_are_read_from_the_file(write_config: WriteConfig) -> None:
    path = write_config('redis_url = "redis://file-host:6379/1"\n[worker]\nqueue_name = "q:test"\n')

    settings = load_settings(path)

    assert settings.redis_url.get_secret_value() == "redis://file-host:6379/1"
    assert settings.worker.queue_name == "q:test"


# ---- named [llm.<name>] groups -------------------------------------------------------------------


GROUPS_TOML = """
[llm]
model = "gpt-4o"
retry_max_wait = 60

[llm.cheap]
model = "gpt-4o-mini"
num_retries = 1

[llm.smart]
model = "o3"
"""


def test_llm_group_tables_do_not_change_the_llm_section(write_config: WriteConfig) -> None:
    settings = load_settings(write_config(GROUPS_TOML))

    assert (settings.llm.model, settings.llm.num_retries) == ("gpt-4o", 4)
    assert sorted(settings.llm_groups) == ["cheap", "smart"]


def test_llm_for_lays_the_group_over_the_llm_section(write_config: WriteConfig) -> None:
    cheap = load_settings(write_config(GROUPS_TOML)).llm_for("cheap")

    assert (cheap.model, cheap.num_retries, cheap.retry_max_wait) == ("gpt-4o-mini", 1, 60.0)


def test_llm_for_group_inherits_env_settings_of_the_llm_section(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_API_KEY", "inherited-key-1234")

    cheap = load_settings(write_config(GROUPS_TOML)).llm_for("cheap")

    assert cheap.api_key is not None
    assert cheap.api_key.get_secret_value() == "inherited-key-1234"


def test_llm_for_none_is_the_llm_section(write_config: WriteConfig) -> None:
    settings = load_settings(write_config(GROUPS_TOML))

    assert settings.llm_for(None) is settings.llm


def test_llm_for_unknown_group_raises_config_error_listing_known_groups(write_config: WriteConfig) -> None:
    settings = load_settings(write_config(GROUPS_TOML))

    with pytest.raises(ConfigError, match=r"'fast'.*cheap, smart"):
        settings.llm_for("fast")


def test_llm_for_any_group_without_groups_says_none_are_configured() -> None:
    with pytest.raises(ConfigError, match="none"):
        load_settings().llm_for("cheap")


def test_group_may_raise_min_wait_up_to_the_max_wait_of_the_llm_section(write_config: WriteConfig) -> None:
    # Laid over [llm], min 40 <= max 60; only the group alone (max defaults to 30) is out of order.
    path = write_config("[llm]\nretry_max_wait = 60\n\n[llm.slow]\nretry_min_wait = 40\n")

    slow = load_settings(path).llm_for("slow")

    assert (slow.retry_min_wait, slow.retry_max_wait) == (40.0, 60.0)


def test_unknown_key_in_a_group_names_the_group_key_and_file(write_config: WriteConfig) -> None:
    path = write_config('[llm.cheap]\nmodle = "gpt-4o-mini"\n')

    with pytest.raises(ConfigError) as excinfo:
        load_settings(path)

    message = str(excinfo.value)
    assert "[llm.cheap] modle" in message
    assert "unknown key" in message
    assert str(path) in message


# ---- [limits."<scope>"] and limit_for ------------------------------------------------------------


def test_limits_table_is_read_per_scope(write_config: WriteConfig) -> None:
    path = write_config('[limits."gpt-4o-mini"]\nrpm = 100\ntpm = 5000\nburst_seconds = 2\n')

    settings = load_settings(path)

    assert settings.limit_for("gpt-4o-mini", settings.llm) == LimitConfig(rpm=100, tpm=5000, burst_seconds=2)


def test_limit_for_scope_without_any_limit_is_none() -> None:
    settings = load_settings()

    assert settings.limit_for("gpt-4o", settings.llm) is None


def test_llm_rpm_and_tpm_limit_the_default_models_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RPM", "60")
    monkeypatch.setenv("LLM_TPM", "90000")
    settings = load_settings()

    assert settings.limit_for("gpt-4o", settings.llm) == LimitConfig(rpm=60, tpm=90000)


def test_llm_itpm_and_otpm_limit_input_and_output_tokens_of_every_scope(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_ITPM", "80000")
    settings = load_settings(write_config('[llm]\notpm = 16000\n[limits."anthropic/claude"]\nitpm = 40000\n'))

    assert settings.limit_for("openai/other", settings.llm) == LimitConfig(itpm=80000, otpm=16000)
    assert settings.limit_for("anthropic/claude", settings.llm) == LimitConfig(itpm=40000)


def test_llm_rpm_limits_a_scope_of_another_model_named_by_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RPM", "60")
    settings = load_settings()

    # A batch line naming its own model runs in that model's scope, under the same configured rate.
    assert settings.limit_for("openai/gpt-4o-mini", settings.llm) == LimitConfig(rpm=60)


def test_a_group_inherits_llm_rpm_for_its_own_scope(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_RPM", "60")
    settings = load_settings(write_config(GROUPS_TOML))
    cheap = settings.llm_for("cheap")

    assert cheap.scope != settings.llm.scope
    assert settings.limit_for(cheap.scope, cheap) == LimitConfig(rpm=60)


def test_a_group_with_its_own_rpm_keeps_it(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_RPM", "60")
    settings = load_settings(write_config('[llm.cheap]\nmodel = "gpt-4o-mini"\nrpm = 30\n'))
    cheap = settings.llm_for("cheap")

    assert settings.limit_for(cheap.scope, cheap) == LimitConfig(rpm=30)


def test_llm_rpm_applies_to_the_configured_limit_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RPM", "60")
    settings = load_settings(llm={"limit_scope": "shared-deployment"})

    assert settings.limit_for("shared-deployment", settings.llm) == LimitConfig(rpm=60)


def test_limits_table_wins_over_llm_rpm(write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RPM", "60")
    settings = load_settings(write_config('[limits."gpt-4o"]\nrpm = 500\n'))

    assert settings.limit_for("gpt-4o", settings.llm) == LimitConfig(rpm=500)


# ---- errors --------------------------------------------------------------------------------------


def config_error(*args: Any, **kwargs: Any) -> str:
    """The message of the ConfigError load_settings raises (and proof it is exactly a ConfigError)."""
    with pytest.raises(ConfigError) as excinfo:
        load_settings(*args, **kwargs)
    assert type(excinfo.value) is ConfigError
    return str(excinfo.value)


def test_negative_wait_in_file_names_the_key_and_file(write_config: WriteConfig) -> None:
    path = write_config("[llm]\nretry_min_wait = -1\n")

    message = config_error(path)

    assert "[llm] retry_min_wait" in message
    assert str(path) in message


def test_negative_wait_in_env_names_the_env_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RETRY_MAX_WAIT", "-3")

    assert "LLM_RETRY_MAX_WAIT" in config_error()


def test_min_wait_above_max_wait_in_file_is_a_config_error(write_config: WriteConfig) -> None:
    path = write_config("[llm]\nretry_min_wait = 10\nretry_max_wait = 5\n")

    message = config_error(path)

    assert "  [llm]: retry_min_wait (10) must not exceed retry_max_wait (5)" in message  # as other keys
    assert str(path) in message


def test_min_wait_above_max_wait_across_env_and_defaults_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_RETRY_MIN_WAIT", "45")

    assert "  llm (env LLM_*): retry_min_wait (45) must not exceed retry_max_wait (30)" in config_error()


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[llm]\nmodle = "gpt-4o"\n', "[llm] modle"),
        ("[worker]\nmax_job = 3\n", "[worker] max_job"),
        ('[limits."gpt-4o"]\nrpn = 3\n', '[limits."gpt-4o"] rpn'),
        ("verbose = true\n", "verbose"),
    ],
)
def test_unknown_key_in_file_names_the_key_and_file(write_config: WriteConfig, toml: str, key: str) -> None:
    path = write_config(toml)

    message = config_error(path)

    assert f"{key}: unknown key" in message
    assert str(path) in message


def test_wrong_type_in_file_names_the_key_and_file(write_config: WriteConfig) -> None:
    path = write_config('[llm]\nnum_retries = "many"\n')

    message = config_error(path)

    assert "[llm] num_retries" in message
    assert str(path) in message


def test_unparsable_toml_names_the_file(write_config: WriteConfig) -> None:
    path = write_config("[llm\nmodel = \n")

    message = config_error(path)

    assert str(path) in message
    assert "not valid TOML" in message


def test_missing_config_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "config.toml"

    message = config_error(path)

    assert str(path) in message
    assert "does not exist" in message


@pytest.mark.parametrize(
    ("env_name", "raw"),
    [
        ("LLM_NUM_RETRIES", "several"),
        ("LLM_RPM", "fast"),
        ("LLM_DROP_PARAMS", "perhaps"),
        ("WORKER_MAX_JOBS", "lots"),
    ],
)
def test_wrong_type_in_env_names_the_env_variable(
    monkeypatch: pytest.MonkeyPatch, env_name: str, raw: str
) -> None:
    monkeypatch.setenv(env_name, raw)

    assert f"(env {env_name})" in config_error()


def test_invalid_explicit_override_is_a_config_error() -> None:
    assert "llm.num_retries" in config_error(llm={"num_retries": -1})


def test_unknown_explicit_override_is_a_config_error() -> None:
    assert "unknown key" in config_error(colour="blue")


# ---- secrets -------------------------------------------------------------------------------------


def test_api_keys_never_appear_in_repr_or_str(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_API_KEY", "env-key-abcdef-123456")
    path = write_config('[llm.other]\napi_key = "group-key-zyxwvu-987654"\n')

    settings = load_settings(path)
    texts = [repr(settings), str(settings), repr(settings.llm_for("other"))]

    assert settings.llm_for("other").api_key is not None  # the key is there, only hidden
    for text in texts:
        assert "env-key-abcdef-123456" not in text
        assert "group-key-zyxwvu-987654" not in text


# ---- spending limits ([budget], LLM_BUDGET_*) ------------------------------------------------------


def test_budget_limits_come_from_the_file_and_the_environment_over_it(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config('[budget]\ndaily = 5.0\nmonthly = 90\n[budget.models."gpt-4o"]\ndaily = 2\n')
    monkeypatch.setenv("LLM_BUDGET_DAILY", "7.5")
    monkeypatch.setenv("BUDGET_DAILY", "1")  # not ours: the budget's variables are LLM_BUDGET_*

    budget = load_settings(path).budget

    assert (budget.daily, budget.monthly, budget.warn_at) == (7.5, 90.0, 0.8)
    assert budget.models["gpt-4o"].daily == 2.0
    assert budget.applies_to("other") and budget.active


def test_per_model_budget_limits_from_the_environment_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_BUDGET_MODELS", '{"gpt-4o": {"monthly": 40}}')

    budget = load_settings().budget

    assert budget.models["gpt-4o"].monthly == 40.0
    assert budget.applies_to("gpt-4o") and not budget.applies_to("gpt-4o-mini")


def test_a_bad_budget_key_is_named_in_the_file_and_in_the_environment(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"\[budget\] daly: unknown key"):
        load_settings(write_config("[budget]\ndaly = 5\n"))
    monkeypatch.setenv("LLM_BUDGET_DAILY", "-1")
    with pytest.raises(
        ConfigError, match=r"budget.daily \(env LLM_BUDGET_DAILY\): Input should be greater than 0"
    ):
        load_settings()


def test_no_budget_limit_means_nothing_is_capped() -> None:
    budget = load_settings().budget

    assert not budget.active and not budget.applies_to("gpt-4o")
