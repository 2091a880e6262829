"""The CLI reference: every ``llmqueue`` command, its arguments and options, from the Typer app.

Walks the click command tree Typer builds from ``llmqueue.cli.app`` at build time, so a command or an
option added in the code is in the reference the next time the site is built. Newer Typer releases
carry their own copy of click, so commands and parameters are read by what they have (``commands``,
``is_flag``, ``choices``), not by click's classes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import typer

from docgen.markdown import cell, code, escape_html, table


@dataclass(frozen=True)
class Command:
    """One command of the tree, with the context click would give it."""

    path: tuple[str, ...]
    command: Any  # a click Command (Typer's copy of click or click itself)
    context: Any  # its click Context

    @property
    def name(self) -> str:
        return " ".join(self.path)

    @property
    def anchor(self) -> str:
        return "-".join(self.path)


def commands() -> Iterator[Command]:
    """Every command and command group, depth first, in the order ``--help`` lists them."""
    from llmqueue.cli import app

    root = typer.main.get_command(app)
    yield from _walk(root, root.context_class(root, info_name="llmqueue"), ("llmqueue",))


def is_group(command: Any) -> bool:
    return hasattr(command, "list_commands")


def _walk(command: Any, context: Any, path: tuple[str, ...]) -> Iterator[Command]:
    yield Command(path, command, context)
    if is_group(command):
        for name in command.list_commands(context):
            sub = command.get_command(context, name)
            if sub is None or sub.hidden:
                continue
            yield from _walk(sub, sub.context_class(sub, info_name=name, parent=context), (*path, name))


def plain(text: str | None) -> str:
    """Typer help text as printed: rich's escaped brackets unescaped, click's ``\\b`` marks dropped."""
    return (text or "").replace("\\[", "[").replace("\b", "").strip()


def is_argument(param: Any) -> bool:
    return bool(param.param_type_name == "argument")


def is_flag(param: Any) -> bool:
    return bool(getattr(param, "is_flag", False))


def type_text(param: Any, context: Any) -> str:
    if is_flag(param):
        return "flag"
    display = getattr(param, "display_type", None)
    if display is not None:  # Typer's own: "<path>", "<live|batch-api>"
        shown = str(display(context)).strip("<>")
        return " \\| ".join(code(part) for part in shown.split("|")) if "|" in shown else shown
    kind = getattr(param, "type", None)
    choices = getattr(kind, "choices", None)
    if choices:
        return " \\| ".join(code(str(getattr(choice, "value", choice))) for choice in choices)
    name = getattr(kind, "name", "") or ""
    return {"integer": "int", "text": "str", "boolean": "bool"}.get(name, name)


def default_text(param: Any) -> str:
    default = param.default
    if default is None or callable(default) or is_flag(param):
        return ""
    if isinstance(default, list | tuple) and not default:
        return ""
    if getattr(param, "show_default", None) is False:
        return ""
    return code(str(getattr(default, "value", default)))


def param_rows(command: Command) -> list[list[str]]:
    rows = []
    for param in command.command.get_params(command.context):
        if getattr(param, "hidden", False) or "--help" in param.opts:
            continue
        if is_argument(param):
            names = code(str(param.name).upper())
        else:
            names = ", ".join(code(opt) for opt in (*param.opts, *param.secondary_opts))
        envvar = ", ".join(envvars(param))
        rows.append(
            [
                names,
                type_text(param, command.context),
                default_text(param),
                code(envvar) if envvar else "",
                cell(plain(getattr(param, "help", None))),
            ]
        )
    return rows


def envvars(param: Any) -> tuple[str, ...]:
    """The environment variables an option reads when it is not given."""
    return (param.envvar,) if isinstance(param.envvar, str) else tuple(param.envvar or ())


def environment() -> dict[str, list[tuple[Command, Any]]]:
    """Each environment variable an option reads, with the commands and options that read it."""
    found: dict[str, list[tuple[Command, Any]]] = {}
    for command in commands():
        for param in command.command.get_params(command.context):
            if getattr(param, "hidden", False):
                continue
            for variable in envvars(param):
                found.setdefault(variable, []).append((command, param))
    return dict(sorted(found.items()))


def render_environment() -> str:
    """The settings page's table of the variables the commands read beside the settings' own."""
    leaves = {command.name for command in commands() if not is_group(command.command)}
    rows = []
    for variable, readers in environment().items():
        _, first = readers[0]
        options = sorted({opt for _, param in readers for opt in param.opts if opt.startswith("--")})
        names = {command.name for command, _ in readers}
        left_out = sorted(leaves - names)
        if len(names) > 3 and len(left_out) <= 2:
            read_by = "every command" + "".join(f" but `{name}`" for name in left_out[:1])
            read_by += "".join(f" and `{name}`" for name in left_out[1:])
        else:
            read_by = ", ".join(f"`{name}`" for name in sorted(names))
        rows.append(
            [
                code(variable),
                ", ".join(code(option) for option in options),
                read_by,
                cell(plain(getattr(first, "help", None))),
            ]
        )
    return table(["variable", "option", "read by", "what it sets"], rows) + "\n"


def usage(command: Command) -> str:
    pieces = command.command.collect_usage_pieces(command.context)
    return " ".join([command.name, *pieces])


def render() -> str:
    """The generated part of the CLI reference page."""
    parts = []
    for command in commands():
        level = "#" * min(len(command.path) + 1, 4)
        parts.append(f"{level} `{command.name}` {{#{command.anchor}}}\n")
        parts.append(f"```\n{usage(command)}\n```\n")
        help_text = plain(command.command.help)
        if help_text:
            parts.append(escape_html(help_text) + "\n")
        if is_group(command.command):
            subs = [
                sub
                for sub in commands()
                if len(sub.path) == len(command.path) + 1 and sub.path[: len(command.path)] == command.path
            ]
            parts.append(
                table(
                    ["command", "what it does"],
                    (
                        [f"[`{sub.name}`](#{sub.anchor})", cell(plain(sub.command.get_short_help_str(200)))]
                        for sub in subs
                    ),
                )
                + "\n"
            )
        rows = param_rows(command)
        if rows:
            parts.append(
                table(["argument / option", "type", "default", "environment", "description"], rows) + "\n"
            )
    return "\n".join(parts)
