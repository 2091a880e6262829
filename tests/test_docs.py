"""The documentation's reference pages against the code: every command, option and setting is there.

The pages are rendered at build time by ``docgen`` (see ``docs/internals/development.md``); these tests
render them in process and compare them with what the CLI prints and what the settings read.
"""

from __future__ import annotations

import ast
import html
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel, SecretStr, ValidationError
from typer.testing import CliRunner

from docgen import benchmarks, cli, hooks, metrics, redis_keys, settings
from llmqueue.cli import app
from llmqueue.errors import ConfigError
from llmqueue.settings import LLMConfig, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
SEED_LLM_SETTINGS = [
    "LLM_NUM_RETRIES",
    "LLM_RETRY_MIN_WAIT",
    "LLM_RETRY_MAX_WAIT",
    "LLM_RETRY_MULTIPLIER",
    "LLM_API_VERSION",
    "LLM_EMBEDDING_MODEL",
    "LLM_EMBEDDING_DEPLOYMENT_NAME",
    "LLM_DROP_PARAMS",
    "LLM_DISABLE_VISION",
    "LLM_CACHING_PROMPT",
    "LLM_MODEL",
    "LLM_API_KEY",
    "LLM_BASE_URL",
    "LLM_RPM",
    "LLM_TPM",
    "LLM_ITPM",
    "LLM_OTPM",
]
# Variables that are only valid together: each is tried with its partner set.
PARTNERS = {
    "REDIS_SENTINELS": {"REDIS_SENTINEL_SERVICE": "x-test"},
    "REDIS_SENTINEL_SERVICE": {"REDIS_SENTINELS": "x-test:26379"},
}


def command_paths(typer_app: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command as the Typer app declares it (not as docgen walks the click tree)."""
    paths = [prefix]
    for info in typer_app.registered_commands:
        assert info.callback is not None
        paths.append((*prefix, info.name or info.callback.__name__.replace("_", "-")))
    for group in typer_app.registered_groups:
        assert group.name is not None and group.typer_instance is not None
        paths += command_paths(group.typer_instance, (*prefix, group.name))
    return paths


def sections_by_anchor(page: str) -> dict[str, str]:
    """Each ``{#anchor}`` heading's text up to the next heading, unescaped as a reader sees it."""
    out: dict[str, str] = {}
    for chunk in re.split(r"\n(?=#+ )", "\n" + page):
        anchor = re.search(r"\{#([\w-]+)\}", chunk.split("\n", 1)[0])
        if anchor:
            out[anchor.group(1)] = html.unescape(chunk.replace("\\|", "|"))
    return out


def flat(text: str) -> str:
    return " ".join(text.replace("`", "").split())


@pytest.fixture(scope="module")
def cli_page() -> dict[str, str]:
    return sections_by_anchor(cli.render())


@pytest.mark.parametrize("path", command_paths(app), ids=lambda path: " ".join(path) or "llmqueue")
def test_every_commands_help_is_in_the_cli_reference(path: tuple[str, ...], cli_page: dict[str, str]) -> None:
    help_text = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert help_text.exit_code == 0, help_text.output
    section = cli_page.get("-".join(("llmqueue", *path)))
    assert section is not None, f"no section for llmqueue {' '.join(path)} in the CLI reference"

    # An option's row in the help's panel starts with its flags, before its type ("<path>").
    rows = [line.split("│", 2)[1] for line in help_text.output.splitlines() if re.match(r"│ +-", line)]
    flags = {flag for row in rows for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", row.split("<")[0])}
    assert rows and "--help" in flags
    documented = set(re.findall(r"`(--?[a-zA-Z][\w-]*)`", section))
    missing = flags - {"--help"} - documented
    assert not missing, f"options in --help but not in the reference: {missing}"

    # Each subcommand the help lists is in the section's table of commands.
    panel = help_text.output.split("Commands ", 1)[1] if "─ Commands " in help_text.output else ""
    for name in re.findall(r"^│ ([\w-]+) {2,}", panel, flags=re.MULTILINE):
        assert f"`{' '.join(('llmqueue', *path, name))}`" in section

    # The text between the usage line and the first panel, as --help prints it, is the section's too.
    after_usage = help_text.output.split("Usage:", 1)[1].split("\n", 1)[1]
    description = after_usage.split("╭", 1)[0]
    assert flat(description)
    assert flat(description) in flat(section)


def test_the_cli_reference_lists_every_command_the_app_has() -> None:
    documented = {command.path[1:] for command in cli.commands()}
    assert documented == set(command_paths(app))


def test_the_settings_reference_lists_every_variable_a_command_option_reads() -> None:
    page = cli.render_environment()
    variables = set()
    for path in command_paths(app):
        command = typer.main.get_command(app)
        for name in path:
            command = command.commands[name]
        for param in command.params:
            envvar = param.envvar
            variables |= {envvar} if isinstance(envvar, str) else set(envvar or ())
    assert "LLMQUEUE_CONFIG" in variables
    for variable in variables:
        assert f"| `{variable}` |" in page, variable


def test_the_settings_reference_names_every_seed_setting_and_limit() -> None:
    page = settings.render()
    for variable in SEED_LLM_SETTINGS:
        assert f"`{variable}`" in page, variable


def test_every_setting_is_in_the_reference_with_its_key_type_default_and_description() -> None:
    page = settings.render()
    rows = settings.all_rows()
    assert len(rows) > 50
    for row in rows:
        assert row.description, f"{row.key}: no description in the code, and none in docgen.settings.NOTES"
        line = next((line for line in page.splitlines() if line.startswith(f"| `{row.key}` |")), None)
        assert line is not None, row.key
    for name in LLMConfig.model_fields:
        assert f"| `{name}` | `LLM_{name.upper()}` |" in page


def test_a_description_changed_in_the_code_changes_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    field = LLMConfig.model_fields["num_retries"]
    assert field.description and field.description in settings.render()
    monkeypatch.setattr(field, "description", "retries, as this test alone words it")
    page = settings.render()
    assert "retries, as this test alone words it" in page
    line = next(line for line in page.splitlines() if line.startswith("| `num_retries` |"))
    assert "`LLM_NUM_RETRIES`" in line and "retries, as this test alone words it" in line


def test_a_note_is_only_kept_for_a_field_the_code_does_not_describe() -> None:
    fields = settings.documented_fields()
    for key in settings.NOTES:
        assert key in fields, f"NOTES[{key!r}] names no setting"
        assert not fields[key].description, f"{key} is described in the code now: drop NOTES[{key!r}]"


def other_value(field: Any, default: Any) -> list[str]:
    """Environment values for ``field`` that differ from its default, most likely valid first."""
    text = settings.type_name(field.annotation)
    if "bool" in text:
        return ["false" if default else "true"]
    if text.startswith("list"):
        return ['["x-test*"]']
    if text.startswith("dict"):  # JSON, as LLM_BUDGET_MODELS
        return ['{"x-test": {"daily": 1}}']
    if '"' in text:  # a Literal
        return [choice.strip('"') for choice in text.split(" | ") if choice.strip('"') != default]
    if "int" in text or "float" in text:
        base = default if isinstance(default, int | float) and default else 1
        return [str(base * 2), str(base * 3), "0.5", "3"]
    return ["/tmp/x-test" if "path" in text else "x-test", "redis://x-test:6379/0"]


@pytest.mark.parametrize(
    "row", [row for row in settings.all_rows() if row.env], ids=lambda row: row.env or row.key
)
def test_every_environment_variable_in_the_reference_sets_its_setting(
    row: settings.Row, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no config.toml
    for name in list(os.environ):
        if name.startswith(("LLM_", "WORKER_", "BATCH_", "CACHE_", "REDIS_")):
            monkeypatch.delenv(name)
    assert row.env is not None
    env = row.env
    for partner, value in PARTNERS.get(env, {}).items():
        monkeypatch.setenv(partner, value)
    matching = [
        (len(prefix), name) for name, prefix in settings.ENV_PREFIXES.items() if env.startswith(prefix)
    ]
    section = max(matching)[1] if matching else None  # LLM_BUDGET_ before LLM_
    model = Settings if section is None else Settings.model_fields[section].annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    field = model.model_fields[row.key]
    default = field.get_default(call_default_factory=True)
    default = default.get_secret_value() if isinstance(default, SecretStr) else default
    for value in other_value(field, default):
        monkeypatch.setenv(row.env, value)
        try:
            loaded = load_settings()
        except (ConfigError, ValidationError):
            continue
        got = getattr(loaded if section is None else getattr(loaded, section), row.key)
        got = got.get_secret_value() if isinstance(got, SecretStr) else got
        assert got != default, f"{row.env}={value} did not change {row.key}"
        return
    pytest.fail(f"no value of {row.env} loaded")


def test_sections_the_reference_gives_no_environment_variable_read_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A section that starts reading ``<SECTION>_<KEY>`` must be added to
    ``llmqueue.settings.sources.ENV_PREFIXES``."""
    monkeypatch.chdir(tmp_path)
    checked = 0
    for section, info in Settings.model_fields.items():
        model = info.annotation
        if section in settings.ENV_PREFIXES or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for key, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            monkeypatch.setenv(f"{section.upper()}_{key.upper()}", other_value(field, default)[0])
            assert getattr(getattr(load_settings(), section), key) == default, (
                f"{section.upper()}_{key.upper()}"
            )
            checked += 1
    assert checked >= 3  # [router_settings] today


def test_the_redis_keys_table_has_every_key_builder() -> None:
    from llmqueue import keys

    page = redis_keys.render()
    builders = [name for name, value in vars(keys).items() if callable(value) and not name.startswith("_")]
    builders = [name for name in builders if getattr(keys, name).__module__ == keys.__name__]
    assert builders
    for name in builders:
        assert f"`keys.{name}()`" in page


def served_metrics() -> dict[str, str]:
    """Each metric a worker's ``/metrics`` declares (its ``# TYPE`` lines), with its type."""
    from prometheus_client import CollectorRegistry, generate_latest

    from llmqueue.ops.metrics import WorkerMetrics

    text = generate_latest(WorkerMetrics(CollectorRegistry()).registry).decode()
    return dict(re.findall(r"^# TYPE (llmqueue_\w+) (\w+)$", text, flags=re.MULTILINE))


def test_the_metrics_table_has_every_metric_a_worker_serves() -> None:
    page = metrics.render()
    served = served_metrics()
    assert len(served) > 10
    for name, kind in served.items():
        assert f"| `{name}` | {kind} |" in page, name


def test_every_metric_the_docs_name_is_one_a_worker_serves() -> None:
    names = set(served_metrics())
    for page in [*(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]:
        for name in re.findall(r"\bllmqueue_[a-z_]+", page.read_text(encoding="utf-8")):
            if name.endswith(("_bucket", "_sum", "_count")):
                name = name.rsplit("_", 1)[0]
            assert name in names, f"{page.relative_to(ROOT)} names {name}, which no worker serves"


def test_the_benchmarks_page_shows_every_benchmark_of_the_results_file(tmp_path: Path) -> None:
    data = json.loads(benchmarks.RESULTS.read_text(encoding="utf-8"))
    page = benchmarks.render()
    for name, result in data["benchmarks"].items():
        assert f"{{#{name}}}" in page
        assert f"python -m bench --only {name}" in page
        for row in result["rows"]:
            if row.get("target"):
                assert benchmarks.cell(row["target"]) in page

    # A figure changed in the results file changes the page.
    changed = json.loads(json.dumps(data))
    first = next(iter(changed["benchmarks"].values()))
    first["notes"] = ["a note only this test writes"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(changed), encoding="utf-8")
    assert "a note only this test writes" in benchmarks.render(path)


def test_every_test_and_source_file_the_docs_cite_exists() -> None:
    """The guarantees name the test that shows each; a renamed test must not leave a dead citation."""
    cited = 0
    for page in [*(ROOT / "docs").rglob("*.md"), ROOT / "README.md"]:
        text = page.read_text(encoding="utf-8")
        for path, name in re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?", text):
            cited += 1
            source = ROOT / path
            assert source.is_file(), f"{page.relative_to(ROOT)} cites {path}, which does not exist"
            if name:
                defined = {
                    node.name
                    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
                    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                }
                assert name in defined, f"{page.relative_to(ROOT)} cites {path}::{name}, which is not there"
    assert cited > 10


def test_every_generated_marker_in_the_docs_is_known_and_filled() -> None:
    markers = 0
    for page in (ROOT / "docs").rglob("*.md"):
        text = page.read_text(encoding="utf-8")
        markers += len(hooks.MARKER.findall(text))
        assert not hooks.MARKER.search(hooks.fill(text)), page
    assert markers == len(hooks.renderers())
