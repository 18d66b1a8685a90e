"""W&B behind one switch: runs go offline into the output directory unless credentials exist.

Offline runs upload later with `wandb sync <output_dir>/wandb/offline-run-*`; `report_to: none`
in a recipe turns W&B off entirely.
"""

import netrc
import os


def wandb_credentials() -> bool:
    """True when W&B could log online: WANDB_API_KEY is set or ~/.netrc has api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
