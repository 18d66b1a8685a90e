"""W&B behind one switch, for GRPO, evaluation and analysis alike.

`wandb_session(report_to, output_dir, project)` is the only place the project touches W&B's
environment: inside it, runs write to `output_dir/wandb`, go offline unless credentials exist
(upload later with `wandb sync <output_dir>/wandb/offline-run-*`), and land in `project`;
variables the user set win. On the way out the open run is finished and the environment is
restored, so one job's settings never leak into the next one in the same process. With
`report_to` "none" it yields None, and callers skip logging.

    with wandb_session("wandb", Path("outputs/x"), "rast-transfer") as wandb:
        if wandb is not None:
            wandb.init(name="x").finish()
"""

import contextlib
import logging
import netrc
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def wandb_credentials() -> bool:
    """True when W&B could log online: WANDB_API_KEY is set or ~/.netrc has api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wants_wandb(report_to: str | list[str] | None) -> bool:
    """report_to as TRL spells it ("wandb", ["wandb", ...], "none", "all") or as our recipes do."""
    names = [report_to] if isinstance(report_to, str) or report_to is None else report_to
    return any(name in ("wandb", "all") for name in names)


@contextlib.contextmanager
def wandb_session(report_to: str | list[str] | None, output_dir: Path | str,
                  project: str) -> Iterator[object | None]:
    """The wandb module set up for one job (see the module docstring), or None when off."""
    if not wants_wandb(report_to):
        yield None
        return
    import wandb  # optional at import time: a run with report_to none never loads it

    wanted = {"WANDB_DIR": str(Path(output_dir).resolve()), "WANDB_PROJECT": project}
    if not wandb_credentials():
        wanted["WANDB_MODE"] = "offline"
    added = {key: value for key, value in wanted.items() if key not in os.environ}
    os.environ.update(added)
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    if os.environ.get("WANDB_MODE") == "offline":
        logger.info("W&B offline in %s/wandb (upload later with `wandb sync`)",
                    os.environ["WANDB_DIR"])
    try:
        yield wandb
    finally:
        if wandb.run is not None:
            wandb.finish()
        for key in added:
            os.environ.pop(key, None)
