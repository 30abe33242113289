"""A job's own argparse command line as its spec: the options keep working, each becomes a field with
its type, default and help, and field=value words set the fields every job shares."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import mlflow
import pytest

import mlrepro
from mlrepro.capture.arguments import given_options, spec_from_parser, spec_words
from mlrepro.capture.spec import role
from mlrepro.errors import SpecError


def mnist_parser() -> argparse.ArgumentParser:
    """The options of the PyTorch MNIST example, as it declares them."""
    parser = argparse.ArgumentParser(description="PyTorch MNIST Example")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="input batch size (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1.0, metavar="LR", help="learning rate")
    parser.add_argument("--dry-run", action="store_true", help="quickly check a single pass")
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default: 1)")
    parser.add_argument("--optimizer", choices=["adadelta", "sgd"], default="adadelta")
    parser.add_argument("--layers", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--data", default="../data")
    return parser


def test_every_option_is_a_field_with_its_type_default_and_help() -> None:
    spec_type = spec_from_parser(mnist_parser(), "parsed-mnist")
    spec = spec_type()
    assert (spec.job, spec.batch_size, spec.lr, spec.dry_run, spec.optimizer, spec.layers, spec.data) == (
        "parsed-mnist", 64, 1.0, False, "adadelta", [32, 64], "../data")
    assert spec_type.model_fields["batch_size"].description == "input batch size (default: 64)"
    with pytest.raises(ValueError, match="optimizer"):
        spec_type(optimizer="adam")


def test_an_option_named_like_a_shared_field_is_that_field_with_the_parsers_default() -> None:
    spec_type = spec_from_parser(mnist_parser(), "parsed-mnist-seed")
    assert spec_type().seed == 1
    assert role(spec_type, "seed").category.name == "SEED"  # ranked as a seed by compare
    with pytest.raises(ValueError, match="seed"):
        spec_type(seed=-1)  # the shared field's own checks


def test_only_the_options_given_are_read_so_a_spec_file_can_set_the_rest() -> None:
    given, rest = given_options(mnist_parser(), ["--lr", "0.5", "seed=4", "--spec", "s.yaml", "--dry-run"])
    assert given == {"lr": 0.5, "dry_run": True}
    assert spec_words(rest) == ("s.yaml", ["seed=4"])
    with pytest.raises(SpecError, match="unrecognized argument '--sed'"):
        spec_words(["--sed", "4"])


def test_argparse_answers_its_own_help_and_errors_as_it_always_did(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        given_options(mnist_parser(), ["--batch-size", "many"])
    assert done.value.code == 2 and "argument --batch-size: invalid int value: 'many'" in capsys.readouterr().err


def test_job_main_keeps_the_command_line_and_records_every_option(tmp_path: Path, store: str) -> None:
    seen = []

    def train(args: mlrepro.BaseSpec, run: mlrepro.TrackedRun) -> None:
        seen.append((args.batch_size, args.lr, args.dry_run, args.seed, args.deterministic))
        run.log_loss(0.5)

    with pytest.raises(SystemExit) as done:
        mlrepro.job_main(mnist_parser(), train, ["--batch-size", "32", "--dry-run", "deterministic=false"],
                         job="parsed-mnist-main")
    assert done.value.code == 0
    assert seen == [(32, 1.0, True, 1, False)]
    run = mlflow.MlflowClient(store).search_runs(["0"])[0]
    assert run.data.params["batch_size"] == "32" and run.data.params["dry_run"] == "true"
    assert run.data.params["seed"] == "1" and run.data.tags["mlrepro.job"] == "parsed-mnist-main"


def test_a_word_neither_the_parser_nor_the_spec_knows_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        mlrepro.job_main(mnist_parser(), lambda spec, run: None, ["sed=4"], job="parsed-mnist-typo")
    err = capsys.readouterr().err
    assert done.value.code == 2 and len(err.strip().splitlines()) == 1 and "sed" in err


def test_hugging_faces_argument_parser_is_read_as_the_argparse_parser_it_is() -> None:
    transformers = pytest.importorskip("transformers")  # an extra: tested where it is installed

    @dataclasses.dataclass
    class ScriptArguments:
        learning_rate: float = dataclasses.field(default=5e-5, metadata={"help": "the AdamW rate"})
        max_length: int = 128
        lowercase: bool = False
        model_name: str = "tiny-bert"

    parser = transformers.HfArgumentParser(ScriptArguments)
    spec_type = spec_from_parser(parser, "parsed-hf")
    given, rest = given_options(parser, ["--learning_rate", "1e-4", "--lowercase", "seed=7"])
    spec = spec_type.model_validate({**given, **dict(word.split("=") for word in rest)})
    assert (spec.learning_rate, spec.max_length, spec.lowercase, spec.model_name, spec.seed) == (
        1e-4, 128, True, "tiny-bert", 7)
    assert spec_type.model_fields["learning_rate"].description == "the AdamW rate"
