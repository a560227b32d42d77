"""The README documents every config key, command and CLI subcommand; a
new one without docs fails here."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from bot.config import Config
from bot.deploys.command_text import SUBCOMMANDS
from bot.runtime.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


DICT_KEYS = {"services": "<name>", "verify": "<environment>", "strategy": "<environment>", "checks": "<check>",
             "approvals": "<environment>"}
# A rollback engine takes exactly the keys of a deploy engine; the reference
# says so once instead of repeating them.
SAME_AS = ("services.<name>.rollback.", "services.<name>.deploy.")


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key path of ``model`` as the reference writes it:
    ``environments[].approvals.required``, ``services.<name>.deploy``."""
    keys = []
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        keys.append(key)
        annotation = _without_none(field.annotation)
        origin = typing.get_origin(annotation)
        if origin is list:
            inner, joint = typing.get_args(annotation)[0], "[]."
        elif origin is dict:
            inner, joint = typing.get_args(annotation)[1], f".{DICT_KEYS.get(name, '<name>')}."
        else:
            inner, joint = annotation, "."
        inner = _without_none(inner)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            keys.extend(config_keys(inner, key + joint))
    return keys


def _without_none(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def test_every_config_key_is_in_the_reference() -> None:
    keys = config_keys(Config)
    assert "environments[].approvals.allow_self_approval" in keys and "freeze[].from" in keys
    documented = set(re.findall(r"^\| `([^`]+)` \|", README, re.MULTILINE))
    missing = [key for key in keys if key.replace(*SAME_AS) not in documented]
    assert missing == []


def test_every_slash_subcommand_is_documented() -> None:
    for subcommand in SUBCOMMANDS:
        assert f"`/deploy {subcommand}" in README


def test_every_cli_subcommand_is_documented() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    for name in subparsers.choices:
        assert f"`slipway {name}" in README


def test_every_environment_variable_read_is_documented() -> None:
    sources = "\n".join(p.read_text() for folder in ("bot", "handlers", "store") for p in (ROOT / folder).rglob("*.py"))
    variables = set(re.findall(r"\"((?:SLACK|SLIPWAY)_[A-Z_]+)\"", sources))
    assert {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "SLACK_APP_TOKEN", "SLACK_API_URL"} <= variables
    for variable in variables:
        assert f"`{variable}`" in README, variable
