"""train.tracking: an offline run records its GRPO inputs, and `link` declares them after sync."""

import json
import os
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


def test_online_without_a_way_there_falls_back_to_offline_in_one_line(tmp_path, monkeypatch,
                                                                       caplog):
    """WANDB_MODE=online without network retried for 118 s and ended in a traceback after the
    results were written; without a key it was a UsageError traceback. Now one warning, an
    offline run, and the user's setting back afterwards. (No connection is tried here: the
    reachability probe is replaced.)"""
    from train import tracking

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(tracking, "wandb_reachable", lambda timeout_s=3.0: False)
    for credentials in (False, True):  # no credentials; credentials but no server
        monkeypatch.setattr(tracking, "wandb_credentials", lambda have=credentials: have)
        caplog.clear()
        with caplog.at_level("WARNING"), wandb_session("wandb", tmp_path / "out",
                                                       "rast-transfer") as session:
            assert os.environ["WANDB_MODE"] == "offline"
            session.init(name="x").finish()
        expected = "api.wandb.ai:443 is not reachable" if credentials else "no W&B credentials"
        assert expected in caplog.text and "logging offline instead" in caplog.text
        assert os.environ["WANDB_MODE"] == "online"  # the user's setting, restored
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))
