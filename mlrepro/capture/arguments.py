"""A job's own ``argparse`` command line as its spec: ``--batch-size 64`` keeps working, and the run
records, hashes and compares every option as a spec field.

Each option becomes a field named by its ``dest``, with its type, default and help; an option
named like a field every job shares (``--seed``) sets that field, with that field's checks and
role. The Hugging Face ``HfArgumentParser`` is an ``argparse`` parser and is read the same way.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field, create_model

from mlrepro.capture.spec import BaseSpec
from mlrepro.errors import SpecError

_SIMPLE = (bool, int, float, str)
_NOT_FIELDS = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


class _Unset:
    """Stands in a namespace for an option the command line did not give (argparse sets a default
    only where the namespace has no value yet)."""

    def __repr__(self) -> str:
        return "<not given>"


UNSET = _Unset()
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _value_type(action: argparse.Action) -> Any:
    """The Python type of one value of ``action``."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        return bool
    if isinstance(action, argparse._CountAction):
        return int
    if isinstance(action, (argparse._StoreConstAction, argparse._AppendConstAction)):
        return type(action.const) if isinstance(action.const, _SIMPLE) else str
    if action.choices is not None and all(isinstance(choice, _SIMPLE) for choice in action.choices):
        return Literal[tuple(action.choices)]  # type: ignore[valid-type]
    if action.type in _SIMPLE:
        return action.type
    sample = action.default[0] if isinstance(action.default, list) and action.default else action.default
    # A type function of the user's own (HF's string_to_bool): the type of what it gave the default.
    return type(sample) if isinstance(sample, _SIMPLE) else str


def _field_type(action: argparse.Action) -> Any:
    value = _value_type(action)
    many = action.nargs in ("*", "+", argparse.REMAINDER) or isinstance(action.nargs, int) and action.nargs > 1
    if many or isinstance(action, (argparse._AppendAction, argparse._AppendConstAction)):
        value = list[value]  # type: ignore[valid-type]
    return value | None if action.default is None and not action.required else value


def _description(action: argparse.Action) -> str:
    text = action.help if isinstance(action.help, str) and action.help != argparse.SUPPRESS else ""
    try:
        return text % {"default": action.default, "prog": "", "dest": action.dest}
    except (KeyError, TypeError, ValueError):
        return text


def option_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's options and positional arguments that hold a value."""
    return [action for action in parser._actions if not isinstance(action, _NOT_FIELDS)
            and action.dest not in (argparse.SUPPRESS, "job")]


def spec_from_parser(parser: argparse.ArgumentParser, job: str, module: str | None = None,
                     base: type[BaseSpec] = BaseSpec) -> type[BaseSpec]:
    """A spec class for ``job`` whose fields are the parser's options beside ``base``'s fields."""
    fields: dict[str, Any] = {"job": (Literal[job], job)}  # type: ignore[valid-type]
    for action in option_actions(parser):
        shared = base.model_fields.get(action.dest)
        if shared is not None:  # --seed: the shared field, its checks and role, with the parser's default
            default = shared.default if action.default is None else action.default
            fields[action.dest] = (shared.rebuild_annotation(), Field(default, description=shared.description))
            continue
        default = ... if action.required else action.default
        fields[action.dest] = (_field_type(action), Field(default, description=_description(action)))
    name = "".join(part.capitalize() for part in job.replace("-", "_").split("_")) + "Spec"
    try:
        return create_model(name, __base__=base, __module__=module or "__main__", **fields)
    except (TypeError, ValueError) as err:
        raise SpecError(f"the command line of {job} cannot be a spec: {err}") from err


def _assignments_first(parser: argparse.ArgumentParser, words: Sequence[str]) -> tuple[list[str], list[str]]:
    """The ``field=value`` words apart from the rest, so that an option with an optional value (Hugging
    Face's ``--fp16``, ``nargs="?"``) never takes ``seed=7`` as its value. A word right after an option
    that needs one value is that option's, whatever it looks like."""
    needs_value = {option for action in parser._actions for option in action.option_strings
                   if action.nargs is None and isinstance(action, (argparse._StoreAction, argparse._AppendAction))}
    options, assignments = [], []
    for index, word in enumerate(words):
        owned = index > 0 and words[index - 1] in needs_value
        if not owned and _ASSIGNMENT.match(word):
            assignments.append(word)
        else:
            options.append(word)
    return options, assignments


def given_options(parser: argparse.ArgumentParser, words: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The options ``words`` give (defaults left out, so a spec file can set them), and the words
    the parser does not know (``field=value``, ``--spec FILE``). argparse's own errors and ``--help``
    answer as they always did."""
    options, assignments = _assignments_first(parser, list(words))
    namespace = argparse.Namespace(**{action.dest: UNSET for action in option_actions(parser)})
    parsed, rest = parser.parse_known_args(options, namespace=namespace)
    given = {name: value for name, value in vars(parsed).items() if value is not UNSET}
    return given, [*rest, *assignments]


def spec_words(rest: Sequence[str]) -> tuple[str | None, list[str]]:
    """``--spec FILE`` and the ``field=value`` words among what the parser left; anything else is a
    word nobody knows."""
    spec_file, assignments, words = None, [], list(rest)
    while words:
        word = words.pop(0)
        if word == "--spec" and words:
            spec_file = words.pop(0)
        elif word.startswith("--spec="):
            spec_file = word.removeprefix("--spec=")
        elif "=" in word and not word.startswith("-"):
            assignments.append(word)
        else:
            raise SpecError(f"unrecognized argument {word!r}: give an option of this job's command line "
                            "or field=value for a field every job shares (seed=, deterministic=, resume_from=, ...)")
    return spec_file, assignments


def merged(file_values: Mapping[str, Any], options: Mapping[str, Any], assignments: Mapping[str, Any]) -> dict[str, Any]:
    """A spec file's values, then the options given, then ``field=value`` words: the later win."""
    return {**file_values, **options, **assignments}
