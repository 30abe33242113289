"""The Hugging Face Trainer under mlrepro (examples/huggingface, mlrepro.transformers): the exact loss
of every optimizer step whatever ``logging_steps`` is, the Trainer's seed held to the spec's, checkpoints
the Trainer itself resumes from mid-epoch, and its own MLflow logging in the same run, with no clash."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from transformers import Trainer, TrainingArguments

from examples.huggingface.train import BertSpec, Sequences, tiny_bert
from mlrepro import load_run, start_run
from mlrepro.errors import CheckpointError, SpecError
from mlrepro.integrations.transformers import (
    KEPT_FILES,
    STATE_FILE,
    TRANSFORMERS_KEY,
    WEIGHTS_FILE,
)
from mlrepro.training.checkpoint import Checkpoint, capture_rng_state
from mlrepro.transformers import MlreproCallback
from tests.conftest import (
    REPO,
)
from tests.helpers.framework_guarantees import (
    assert_bisect_names_the_planted_op,
    assert_check_passes,
    assert_resumes_and_repeats,
)
from tests.helpers.planting import planted_copy

EXAMPLE = REPO / "examples" / "huggingface" / "train.py"


def arguments(folder: Path, spec: BertSpec, **options: object) -> TrainingArguments:
    settings: dict[str, object] = dict(
        output_dir=str(folder), seed=spec.seed, num_train_epochs=1, per_device_train_batch_size=8,
        gradient_accumulation_steps=2, logging_steps=1, save_strategy="no", report_to=["mlflow"], use_cpu=True,
        disable_tqdm=True)
    return TrainingArguments(**{**settings, **options})


def test_every_step_logs_the_loss_the_trainer_reports_and_its_mlflow_logging_shares_the_run(
        store: str, tmp_path: Path) -> None:
    spec = BertSpec(lr=1e-3)
    with start_run(spec) as run:
        trainer = Trainer(model=tiny_bert(), args=arguments(tmp_path, spec, learning_rate=spec.lr),
                          train_dataset=Sequences(64, 16, 64), callbacks=[MlreproCallback(run)])
        trainer.train()
    # Logging every step, the Trainer reports each step's loss: the sum of its micro-batches' (each
    # divided by gradient_accumulation_steps), as mlrepro logged it, to the last bit.
    reported = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(reported) == 4 and load_run(run.run_id).losses.values.tolist() == reported

    client = mlflow.MlflowClient()
    whole = client.get_run(run.run_id)
    assert whole.info.status == "FINISHED"  # Hugging Face's callback did not end mlrepro's run
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [0, 1, 2, 3]
    renamed = client.get_metric_history(run.run_id, "transformers/loss")
    assert [(m.step, m.value) for m in renamed] == [(step + 1, loss) for step, loss in enumerate(reported)]
    # The Trainer's arguments are logged beside the spec; a spec field keeps the spec's text.
    assert whole.data.params["learning_rate"] == "0.001" and whole.data.params["lr"] == "0.001"
    assert whole.data.params["seed"] == "3"
    assert len(mlflow.search_runs(output_format="list")) == 1  # no run of Hugging Face's own


def test_a_trainer_seeded_otherwise_than_the_spec_is_refused(store: str, tmp_path: Path) -> None:
    spec = BertSpec()
    for options, fragment in (({"seed": 5}, "TrainingArguments.seed is 5 but the spec's seed is 3"),
                              ({"data_seed": 9}, "TrainingArguments.data_seed is 9")):
        with pytest.raises(SpecError, match=fragment), start_run(spec) as run:
            Trainer(model=tiny_bert(), args=arguments(tmp_path, spec, **options), train_dataset=Sequences(8, 4, 64),
                    callbacks=[MlreproCallback(run)])


class Resumed:
    """The part of a run a resume reads: its checkpoint."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.resume = checkpoint


def checkpoint(files: dict[str, object], step: int = 6) -> Checkpoint:
    return Checkpoint(step=step, epoch=0, batch_in_epoch=step, model={"w": torch.ones(2)}, optimizer=None,
                      rng=capture_rng_state(), extra={TRANSFORMERS_KEY: files})


def test_a_resume_rebuilds_only_the_trainers_own_files_and_the_weights() -> None:
    state = json.dumps({"global_step": 6}).encode()
    folder = Path(MlreproCallback(Resumed(checkpoint({STATE_FILE: state, "optimizer.pt": b"opt"}))).resume_from_checkpoint)
    assert folder.name == "checkpoint-6"
    assert sorted(path.name for path in folder.iterdir()) == sorted([STATE_FILE, "optimizer.pt", WEIGHTS_FILE])
    assert (folder / STATE_FILE).read_bytes() == state
    assert torch.equal(torch.load(folder / WEIGHTS_FILE, weights_only=True)["w"], torch.ones(2))
    assert "training_args.bin" not in KEPT_FILES  # a pickle: only code could read it back


@pytest.mark.parametrize(("files", "fragment"), [
    ({STATE_FILE: b'{"global_step": 6}', "../../outside": b"x"}, "holds a Trainer file mlrepro does not write"),
    ({STATE_FILE: b'{"global_step": 6}', "training_args.bin": b"x"}, "holds a Trainer file mlrepro does not write"),
    ({STATE_FILE: {"global_step": 6}}, "a value that is not bytes"),
    ({STATE_FILE: b'{"global_step": 2}'}, "holds the Trainer's state at step 2"),
    ({"optimizer.pt": b"x"}, f"holds no readable {STATE_FILE}"),
])
def test_a_forged_trainer_checkpoint_is_refused_before_anything_is_written(files: dict[str, object],
                                                                          fragment: str) -> None:
    with pytest.raises(CheckpointError, match=fragment):
        MlreproCallback(Resumed(checkpoint(files))).resume_from_checkpoint  # noqa: B018


def test_a_checkpoint_of_another_kind_of_job_is_refused() -> None:
    other = Checkpoint(step=3, epoch=0, batch_in_epoch=3, model={}, optimizer=None, rng={}, extra={})
    with pytest.raises(CheckpointError, match="not saved by mlrepro's Hugging Face callback"):
        MlreproCallback(Resumed(other)).resume_from_checkpoint  # noqa: B018


@pytest.mark.e2e
def test_a_hugging_face_job_gets_every_guarantee(tmp_path: Path, store: str) -> None:
    # 8 optimizer steps an epoch, with 2 loader workers; a checkpoint every 5 steps, mostly mid-epoch.
    # SIGKILL after a checkpoint, then resume.
    words = ["epochs=30", "accumulate=2", "num_workers=2", "checkpoint_every=5"]
    whole = assert_resumes_and_repeats(store, tmp_path, EXAMPLE, words, steps=240)

    # One MLflow run holds mlrepro's record and the Trainer's own logging: one series a metric.
    client = mlflow.MlflowClient()
    run = client.get_run(whole)
    assert [m.step for m in client.get_metric_history(whole, "loss")] == list(range(240))
    assert [m.step for m in client.get_metric_history(whole, "transformers/loss")] == list(range(4, 241, 4))
    assert run.data.params["lr"] == "0.0005" and run.data.params["gradient_accumulation_steps"] == "2"
    # full_determinism set the Trainer's switches after the run opened: the record says what held.
    assert "env.CUDA_LAUNCH_BLOCKING: unset -> 1" in run.data.tags["mlrepro.environment_changed"]

    # bisect names the step and the line of an unseeded op planted from step 7, replayed from the
    # Trainer's own checkpoint at step 5 (every checkpoint kept).
    script = planted_copy(EXAMPLE, tmp_path / "planted", "import mlrepro\n", [(
        "    model = tiny_bert()\n",
        "    model = tiny_bert()\n    model.classifier.register_forward_hook("
        "lambda module, inputs, out: planted(trainer.state.global_step, out))\n")])
    assert_bisect_names_the_planted_op(store, tmp_path, script, ["epochs=2", "checkpoint_every=5", "keep_checkpoints=0"])

    assert_check_passes(store, tmp_path, EXAMPLE)
