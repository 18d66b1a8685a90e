"""train.tracking: an offline run records its GRPO inputs, and `link` declares them after sync."""

import json
import typing

import wandb

from train.tracking import ARTIFACT_FILE, declare_input, link_offline_inputs, wandb_session


class FakeApi:
    """wandb.Api's three calls that link uses, recording the input declarations."""

    default_entity = "me"
    used: typing.ClassVar[list] = []

    def run(self, path):
        api = self

        class Run:
            def use_artifact(self, artifact):
                api.used.append((path, artifact))
        return Run()

    def artifact(self, name, type=None):
        return f"{name} ({type})"


def test_offline_run_records_inputs_and_link_declares_them(tmp_path, monkeypatch):
    grpo = tmp_path / "tiny-s-grpo"
    grpo.mkdir()
    (grpo / ARTIFACT_FILE).write_text(json.dumps({"artifact": "rast-grpo/tiny-s-grpo:run-a1"}))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with wandb_session("wandb", tmp_path / "out", "rast-transfer") as session:
        run = session.init(name="x", config={"wandb_project": "rast-transfer"})
        assert declare_input(run, {"small_rl": str(grpo), "target_rl": "Qwen/Qwen2.5-7B",
                                   "other": None}) == {"small_rl": "rast-grpo/tiny-s-grpo:run-a1"}
        run_id = run.id
        run.finish()
    monkeypatch.setattr(wandb, "Api", FakeApi)
    assert link_offline_inputs(tmp_path / "out" / "wandb") == [(run_id,
                                                                "rast-grpo/tiny-s-grpo:run-a1")]
    assert FakeApi.used == [(f"me/rast-transfer/{run_id}", "me/rast-grpo/tiny-s-grpo:run-a1 (model)")]
