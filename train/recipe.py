"""One recipe = one YAML file read by TRL's TrlParser into typed dataclasses; CLI flags override.

Shared by `python -m train.grpo`, `transfer.eval.evaluate` and `transfer.analysis.analyze`: an unknown key, a
bad value, a missing file or an unknown prompt template is one `error:` line before anything
heavy loads, not a traceback minutes later.
"""

from train.errors import UserError
from train.prompts import render_prompt


def parse_recipe(dataclass_types: tuple, argv: list[str] | None, kind: str) -> tuple:
    """--config <yaml> plus --field value overrides -> one instance per dataclass type."""
    from trl import TrlParser  # heavy import, kept out of module import time

    try:
        parsed = TrlParser(dataclass_types).parse_args_and_config(args=argv)
    except (ValueError, OSError) as err:  # unknown key, bad value, no such recipe file
        raise UserError(f"bad {kind} recipe: {err}") from None
    for part in parsed:
        if getattr(part, "prompt_template", None) is not None:
            render_prompt(part.prompt_template, "")  # unknown template: fail now
    return tuple(parsed)
