"""A record names the code to run again; it is input, not an order.

``reproduce`` and ``bisect`` start a logged run's job again from what its ``code.json`` says: an
entry (a module or a script), the words it was given, the project folder and the MLproject entry
point. Anyone who can log a run can write that file, so before anything starts the record must fit
the code on disk:

- every source it names lies inside the project folder, and so does the entry (a module found
  there, or a script there), whose file is among the sources the record hashed;
- in the recorded project folder (no ``--project``), the sources there hash to the recorded
  ``code.source_digest``: the record's own folder is used only where it still holds that code;
- an MLproject entry point is one the folder's ``MLproject`` declares.

A module entry starts as ``python -P -m``: the folder it starts in (the record's working folder,
where the job's relative paths point) is not put on ``sys.path``, so nothing there can stand in for
the checked code.

A record that does not fit is refused in one line that shows the command it would have run; the
user may still run it, having seen it, with ``--trust-record``. Nothing a record holds goes to a
shell or to ``python -c``: the words become the argv of the checked entry.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from mlrepro.capture.code import CodeRecord, sources_now
from mlrepro.errors import ReproductionError


@dataclass(frozen=True)
class Launch:
    """A command a replay would start, and where."""

    command: list[str]
    cwd: Path

    def describe(self) -> str:
        return f"{shlex.join(self.command)} (in {self.cwd})"


def misfit(code: CodeRecord, folder: Path, recorded_folder: bool, mlproject_entry: str | None) -> str | None:
    """Why the record does not fit the code in ``folder``; None where it does. ``recorded_folder``: the
    folder is the one the record names (not one the user gave), so its sources must hash as recorded."""
    folder = folder.resolve()
    for relative in code.sources:
        if not _inside(folder, relative):
            return f"its sources name {relative!r}, outside the project folder"
    entry_file = _entry_file(code, folder)
    if entry_file is None:
        return f"its entry {code.entry_kind} {code.entry!r} is not in the project folder {folder}"
    relative = entry_file.relative_to(folder).as_posix()
    if relative not in code.sources:
        return f"it holds no digest of its entry {relative}, so nothing says that file is what ran"
    if recorded_folder:
        now = code.model_copy(update={"sources": sources_now(code, folder)})
        if now.source_digest != code.source_digest:
            changed = sorted(path for path in code.sources if now.sources[path] != code.sources[path])
            return (f"the code in {folder} is not the code it ran (source digest {now.source_digest} here, "
                    f"{code.source_digest} recorded; {', '.join(changed[:3])} differ)")
    if mlproject_entry is not None and mlproject_entry not in _declared_entry_points(folder):
        return f"its MLproject entry point {mlproject_entry!r} is not declared in {folder / 'MLproject'}"
    return None


def refuse_unless_fits(run_id: str, code: CodeRecord, folder: Path, recorded_folder: bool,
                       mlproject_entry: str | None, launch: Launch, trust_record: bool) -> None:
    """Raise ``ReproductionError`` (showing ``launch``) where the record does not fit the code on disk,
    unless the user trusts the record."""
    why = misfit(code, folder, recorded_folder, mlproject_entry)
    if why is not None and not trust_record:
        raise ReproductionError(
            f"run {run_id}'s record does not fit the code on disk: {why}; nothing was run. It would run: "
            f"{launch.describe()}. Pass --project DIR (a checkout of the code it ran), or --trust-record to run "
            "that as recorded")


def _inside(folder: Path, relative: str) -> bool:
    path = PurePosixPath(relative)
    return bool(relative) and not path.is_absolute() and ".." not in path.parts and \
        (folder / relative).resolve().is_relative_to(folder)


def _entry_file(code: CodeRecord, folder: Path) -> Path | None:
    """The file the entry starts, inside ``folder``; None where it is not there."""
    if code.entry_kind == "script":
        return (folder / code.entry).resolve() if _inside(folder, code.entry) and (folder / code.entry).is_file() \
            else None
    if code.entry_kind != "module" or not all(part.isidentifier() for part in code.entry.split(".")):
        return None
    base = folder.joinpath(*code.entry.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):  # python -m runs a package's __main__
        if candidate.is_file() and candidate.resolve().is_relative_to(folder):
            return candidate.resolve()
    return None


def _declared_entry_points(folder: Path) -> set[str]:
    try:
        project = yaml.safe_load((folder / "MLproject").read_text())
        return set(project["entry_points"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return set()
