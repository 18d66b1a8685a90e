"""One recipe = one YAML file read by TRL's TrlParser into typed dataclasses; CLI flags override.

Shared by `python -m train.grpo`, `transfer.eval.evaluate` and `transfer.analysis.analyze`: an unknown key, a
bad value, a missing file or an unknown prompt template is one `error:` line before anything
heavy loads, not a traceback minutes later. The YAML is read and type-checked against the
project's own fields first (`check_recipe_values`): TrlParser hands a YAML value to a dataclass
as it is, so `stop_strings: "box"` arrived as the characters b, o, x and stopped every answer at
the first "b", and `lam: 1.0` was a traceback.
"""

import math
import types
import typing
from dataclasses import fields
from pathlib import Path

import yaml

from train.errors import UserError
from train.prompts import render_prompt


def parse_recipe(dataclass_types: tuple, argv: list[str] | None, kind: str) -> tuple:
    """--config <yaml> plus --field value overrides -> one instance per dataclass type."""
    import sys

    from trl import TrlParser  # heavy import, kept out of module import time

    args = list(sys.argv[1:] if argv is None else argv)
    if "--config" in args[:-1]:
        check_recipe_values(dataclass_types, args[args.index("--config") + 1], kind)
    try:
        parsed = TrlParser(dataclass_types).parse_args_and_config(args=args)
    except (ValueError, OSError) as err:  # unknown key, bad value, no such recipe file
        raise UserError(f"bad {kind} recipe: {err}") from None
    for part in parsed:
        if getattr(part, "prompt_template", None) is not None:
            render_prompt(part.prompt_template, "")  # unknown template: fail now
    return tuple(parsed)


def check_recipe_values(dataclass_types: tuple, path: str, kind: str) -> None:
    """Refuse, in one line naming the key, a recipe that is not a YAML mapping or whose value for
    one of the project's fields has the wrong type (a string or a number where a list is meant,
    a float where an integer is, a non-finite number)."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"cannot read {kind} recipe {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"{kind} recipe {path} is not UTF-8 text: save it as UTF-8") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{kind} recipe {path} is not valid YAML{line}: {problem}") from None
    if not isinstance(config, dict):
        raise UserError(f"{kind} recipe {path} must be a YAML mapping of field: value")
    for cls in dataclass_types:
        if cls.__module__.split(".")[0] not in ("train", "transfer", "__main__"):
            continue  # TRL's own configs check their own values
        hints = typing.get_type_hints(cls)
        for field in fields(cls):
            if field.name in config and not _fits(config[field.name], hints[field.name]):
                raise UserError(f"{kind} recipe {path}: {field.name}: {config[field.name]!r} is "
                                f"not {_spell(hints[field.name])}")


def _fits(value, annotation) -> bool:
    """Whether a YAML value is of a field's type (the annotations these recipes use)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if annotation is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value))
    if annotation is str:
        return isinstance(value, str)
    return True  # anything else: left to the dataclass


def _spell(annotation) -> str:
    """'a list of numbers', 'an integer or null', ... for the message."""
    names = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false",
             type(None): "null"}
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_spell(arg) for arg in args)
    if origin is list:
        item = {int: "integers", float: "numbers", str: "strings"}.get(args[0], "values")
        return f"a list of {item} (e.g. [...])"
    return names.get(annotation, str(annotation))
