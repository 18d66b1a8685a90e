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
import json
import logging
import netrc
import os
import socket
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def wandb_credentials() -> bool:
    """True when W&B could log online: WANDB_API_KEY is set or ~/.netrc has api.wandb.ai."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _wandb_host() -> tuple[str, int]:
    url = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def wandb_reachable(timeout_s: float = 3.0) -> bool:
    """Whether W&B's server (WANDB_BASE_URL, default api.wandb.ai) answers a TCP connection in
    a few seconds: asked once per job, only when logging online was asked for."""
    try:
        socket.create_connection(_wandb_host(), timeout=timeout_s).close()
        return True
    except OSError:
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
    saved = {key: os.environ.get(key) for key in (*added, "WANDB_MODE")}
    os.environ.update(added)
    if os.environ.get("WANDB_MODE", "online") == "online":
        fallback = ("WANDB_MODE=online but no W&B credentials (WANDB_API_KEY or ~/.netrc)"
                    if not wandb_credentials() else
                    None if wandb_reachable() else "{}:{} is not reachable".format(*_wandb_host()))
        if fallback:  # online without a way there: 118 s of retries, then a traceback
            logger.warning("W&B: %s; logging offline instead (upload later with `wandb sync`)",
                           fallback)
            os.environ["WANDB_MODE"] = "offline"
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    if os.environ.get("WANDB_MODE") == "offline":
        logger.info("W&B offline in %s/wandb (upload later with `wandb sync`)",
                    os.environ["WANDB_DIR"])
    try:
        yield wandb
    finally:
        if wandb.run is not None:
            wandb.finish()
        # wandb's process-wide setup caches the settings of its first run (WANDB_DIR above all):
        # without a teardown the next job in this process would write into this job's directory
        wandb.teardown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class HideStepAxis(TrainerCallback):
    """Hide transformers' x axis, train/global_step, as a panel of its own.

    transformers' W&B callback charts every metric against train/global_step
    (`define_metric("*", step_metric="train/global_step")`) but defines that axis visible, so
    the run shows a panel of train/global_step against wandb's step. Hidden here, where its run
    exists and nothing is logged yet: after that callback's on_train_begin (user callbacks follow
    the reporting ones), before the first log. Nothing happens without a W&B run.
    """

    def on_train_begin(self, args, state, control, **kwargs):
        wandb = sys.modules.get("wandb")  # never imported here: a run without W&B stays without
        if wandb is not None and wandb.run is not None:
            wandb.run.define_metric("train/global_step", hidden=True)


ARTIFACT_FILE = "wandb_artifact.json"  # in a train.grpo output: the W&B artifact of its model
CHECKPOINT_FILES = ("rast_pair.json", "config.json", "generation_config.json",
                    "adapter_config.json", "eval_before_after.json")


def log_checkpoint(wandb, run, output_dir: Path | str) -> str:
    """Log a train.grpo output as the run's `model` artifact; return its reference.

    Small on purpose: the pairing, config and evaluation files, and references to the final
    weight files (not copied, not checksummed; checkpoint-*/ left out). Aliased with the run id, so a consumer pins this very
    checkpoint; the reference goes to output_dir/wandb_artifact.json, where transfer and analysis
    runs find it (declare_input). Works offline: `wandb sync` uploads it with the run.
    """
    output_dir = Path(output_dir).resolve()
    name = output_dir.name
    artifact = wandb.Artifact(name, type="model", metadata={"path": str(output_dir)})
    for file in CHECKPOINT_FILES:
        if (output_dir / file).is_file():
            artifact.add_file(str(output_dir / file))
    for weights in sorted(output_dir.glob("*.safetensors")):  # the final model, not checkpoint-*/
        artifact.add_reference(weights.as_uri(), name=f"weights/{weights.name}", checksum=False)
    alias = f"run-{run.id}"
    run.log_artifact(artifact, aliases=["latest", alias])
    reference = f"{run.project}/{name}:{alias}"
    (output_dir / ARTIFACT_FILE).write_text(json.dumps({"artifact": reference, "type": "model",
                                                        "run_id": run.id}, indent=2) + "\n")
    return reference


def declare_input(run, model_dirs: dict[str, str | None]) -> dict[str, str]:
    """Declare the train.grpo checkpoints among `model_dirs` ({role: dir or hub id}) as inputs of
    `run`, so base -> GRPO -> evaluation is one lineage graph; returns {role: reference}.

    Online this is run.use_artifact. wandb refuses use_artifact offline, so an offline run records
    the references in its config (`inputs`) and `python -m train.tracking link <wandb dir>`
    declares them after `wandb sync` (README, "W&B").
    """
    inputs = {}
    for role, model_dir in model_dirs.items():
        file = Path(model_dir) / ARTIFACT_FILE if model_dir else None
        if file is not None and file.is_file():
            inputs[role] = json.loads(file.read_text())["artifact"]
    if not inputs:
        return inputs
    run.config.update({"inputs": inputs}, allow_val_change=True)
    if not run.offline:
        for reference in inputs.values():
            run.use_artifact(reference, type="model")
    return inputs


def link_offline_inputs(wandb_dir: Path | str) -> list[tuple[str, str]]:
    """After `wandb sync`: declare each synced offline run's recorded inputs on the server."""
    import subprocess
    import sys

    import wandb

    api, linked = wandb.Api(), []
    for run_dir in sorted(Path(wandb_dir).glob("offline-run-*")):
        # an offline run's config lives in its .wandb log, which only wandb's own reader opens
        state = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--summary",
                                "--json", str(run_dir)], capture_output=True, text=True,
                               check=True).stdout
        config = json.loads(state).get("config") or {}
        inputs, project = config.get("inputs") or {}, config.get("wandb_project")
        run_id = run_dir.name.rsplit("-", 1)[-1]
        if not inputs or not project:
            continue
        run = api.run(f"{api.default_entity}/{project}/{run_id}")
        for reference in inputs.values():
            run.use_artifact(api.artifact(f"{api.default_entity}/{reference}", type="model"))
            linked.append((run_id, reference))
    return linked


def main(argv: list[str] | None = None) -> None:
    """python -m train.tracking link outputs/transfer-tiny/wandb (after `wandb sync`)."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["link"] or len(argv) != 2:
        sys.exit("usage: python -m train.tracking link <output_dir>/wandb  (after `wandb sync`)")
    for run_id, reference in link_offline_inputs(argv[1]):
        print(f"{run_id} <- {reference}")


if __name__ == "__main__":
    main()
