"""Exit codes, and the one place where an error becomes one line on stderr.

Exit codes, like ``cmp``:
    0  success; for compare, the runs are identical; for check, every leg passed; for bisect, the
       replays agree (the difference did not recur)
    1  compare: the runs differ; check: a leg failed; bisect: it names where the replays part
    2  bad input or an unusable store: a one-line message on stderr, nothing half-written
    3  compare: identical so far, but a run did not finish (RUNNING, KILLED, FAILED)
    4  a job or ``sync``: the tracking store did not take everything in time; the rest waits in
       the local spool, and ``mlrepro sync`` delivers it (nothing is lost)
    128+N  a job stopped by signal N (130 SIGINT, 143 SIGTERM), its run KILLED with every step recorded;
       check or bisect interrupted (130)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

import click
from pydantic import ValidationError

from mlrepro.errors import MlreproError, describe_validation_error, one_line, redacted
from mlrepro.store.spool import DeliveryPendingError

if TYPE_CHECKING:
    from mlrepro.analysis.compare import RunComparison

EXIT_OK = 0
EXIT_DIFFERENT = 1
EXIT_ERROR = 2
EXIT_UNFINISHED = 3
EXIT_PENDING = 4


def exit_code(comparison: RunComparison) -> int:
    """A comparison's exit code: 0 identical, 3 identical so far (a run did not finish), 1 different."""
    return {"identical": EXIT_OK, "identical so far": EXIT_UNFINISHED}.get(comparison.verdict, EXIT_DIFFERENT)


def fail(message: str) -> NoReturn:
    click.echo(f"mlrepro: error: {one_line(redacted(message))}", err=True)
    sys.exit(EXIT_ERROR)


@contextmanager
def user_errors(on_error: Callable[[str], None] | None = None) -> Iterator[None]:
    """Turn every user-facing failure into one line on stderr and exit code 2."""
    try:
        yield
    except DeliveryPendingError as err:
        click.echo(f"mlrepro: {one_line(redacted(str(err)))}", err=True)
        sys.exit(EXIT_PENDING)
    except (ValidationError, MlreproError) as err:
        message = f"invalid input: {describe_validation_error(err)}" if isinstance(err, ValidationError) else str(err)
        if on_error is not None:
            on_error(message)
        fail(message)


@contextmanager
def interrupted_in_one_line(command: str) -> Iterator[None]:
    """Ctrl-C in a command that runs jobs of its own (check, bisect): the jobs end with it, and it
    says so in one line, exit 130, as a shell expects of an interrupted command."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo(f"mlrepro: {command} interrupted; its legs' scratch store is removed", err=True)
        sys.exit(128 + 2)


