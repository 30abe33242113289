"""What code a run ran, and how to start it again.

A spec says what a job computes; the code says how. Two scripts that build the
same spec are two jobs, and an edited README or an untracked notes file is not a
change of code. So the record names:

- the entry: the module (``python -m pkg.job``) or the script, relative to the
  project folder, that started the process;
- a digest of the job's sources: every Python file loaded from the project
  folder when the run opened, the entry included (files in a virtualenv inside
  it are libraries, not the job);
- git, in the project folder: the commit, whether *tracked* files changed and a
  digest of that diff; untracked files are only counted, since they did not run;
- how to start it again: the MLproject entry point with its parameters, or the
  module or script with its words, and the project folder.

Reads files and runs ``git``; never raises (a fact it cannot read is
``unavailable``) and imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

UNAVAILABLE = "unavailable"
NO_CHANGES = "none"
# The project folder is the nearest folder above the entry that holds one of these.
_PROJECT_MARKERS = ("MLproject", ".git")
_LIBRARY_FOLDERS = ("site-packages", "dist-packages")

# Set by mlrepro's job command line (``mlrepro.job_main``): the job takes ``--spec FILE``,
# so a repeat can hand it the logged spec instead of replaying its words.
_takes_spec_file = False


def mark_job_command_line() -> None:
    """Say that this process was started through mlrepro's job command line."""
    global _takes_spec_file
    _takes_spec_file = True


class CodeRecord(BaseModel):
    """The code a run ran and how it was started; ``facts`` is what compare weighs."""

    model_config = ConfigDict(frozen=True)

    entry: str  # "projects.linefit" (module), "train.py" (script, relative to project_dir), "-c", "<interactive>"
    entry_kind: Literal["module", "script", "command", "interactive"]
    project_dir: str
    working_dir: str = ""  # where the process was started: relative paths in its words are from here
    args: list[str] = Field(default_factory=list)  # the words after the entry, as typed
    takes_spec_file: bool = False
    sources: dict[str, str] = Field(default_factory=dict)  # path relative to project_dir -> sha256 (16 hex)
    git_commit: str = UNAVAILABLE
    git_dirty: str = UNAVAILABLE  # "true" when tracked files differ from the commit
    git_diff_digest: str = UNAVAILABLE  # sha256 of `git diff HEAD`, "none" when clean
    git_untracked: str = UNAVAILABLE  # how many untracked, unignored files; never "the code changed"
    # Set when `mlflow run` started the job: the entry point and the parameters it was given.
    mlproject_entry_point: str | None = None
    mlproject_parameters: dict[str, str] = Field(default_factory=dict)

    @property
    def source_digest(self) -> str:
        """One hash of every source file's path and content."""
        if not self.sources:
            return UNAVAILABLE
        content = "\n".join(f"{path} {digest}" for path, digest in sorted(self.sources.items()))
        return hashlib.sha256(content.encode()).hexdigest()[:16]

    def facts(self) -> dict[str, str]:
        """The record as environment facts: these are compared, ranked and hashed with the rest."""
        return {
            "code.entry": self.entry,
            "code.source_digest": self.source_digest,
            "git.commit": self.git_commit,
            "git.dirty": self.git_dirty,
            "git.diff_digest": self.git_diff_digest,
            "git.untracked": self.git_untracked,
        }


def capture_code() -> CodeRecord:
    """The code of this process: its entry, its project folder, its loaded sources and git state."""
    kind, entry, start = _entry()
    project = _project_dir(start)
    entry_file = Path(entry) if kind == "script" else None
    if entry_file is not None:
        entry = _relative(entry_file, project) or str(entry_file)
    git = git_facts(project)
    return CodeRecord(
        entry=entry,
        entry_kind=kind,
        project_dir=str(project),
        working_dir=os.getcwd(),
        args=list(sys.argv[1:]),
        takes_spec_file=_takes_spec_file,
        sources=_sources(project, [entry_file] if entry_file else []),
        **git,
    )


def sources_now(logged: CodeRecord, project: Path) -> dict[str, str]:
    """The digest of each file ``logged`` ran, as it is in ``project`` now ("missing" where it is not)."""
    sources = {}
    for relative in logged.sources:
        try:
            sources[relative] = hashlib.sha256((project / relative).read_bytes()).hexdigest()[:16]
        except OSError:
            sources[relative] = "missing"
    return sources


def facts_now(logged: CodeRecord, project: Path) -> dict[str, str]:
    """The code facts of ``project`` as it is now, for the files ``logged`` ran: whether the same
    sources and commit are there before a repeat starts."""
    now = logged.model_copy(update={"sources": sources_now(logged, project), **git_facts(project.resolve())})
    return now.facts()


def _entry() -> tuple[Literal["module", "script", "command", "interactive"], str, Path]:
    """How the process was started, and the folder to look for its project from."""
    main = sys.modules.get("__main__")
    module_spec = getattr(main, "__spec__", None)
    if module_spec is not None and module_spec.name and module_spec.origin:
        name = module_spec.name.removesuffix(".__main__")
        origin = Path(module_spec.origin).resolve()
        # The folder on sys.path the top package was found in: one level up per dotted part.
        top = origin.parents[len(module_spec.name.split(".")) - 1]
        return "module", name, Path.cwd() if _is_library(top) else top
    main_file = getattr(main, "__file__", None)
    if main_file:
        path = Path(main_file).resolve()
        return "script", str(path), path.parent
    if sys.argv and sys.argv[0] == "-c":
        return "command", "-c", Path.cwd()
    return "interactive", "<interactive>", Path.cwd()


def _is_library(path: Path) -> bool:
    return any(part in _LIBRARY_FOLDERS for part in path.parts)


def _project_dir(start: Path) -> Path:
    for folder in (start, *start.parents):
        if any((folder / marker).exists() for marker in _PROJECT_MARKERS):
            return folder
    return start


def _relative(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return None


# Every module sifted so far, by id (each held, so that its id is not reused), and the
# Python files among theirs that lie outside Python's own installation, in the order seen.
_sifted: dict[int, object] = {}
_files_outside_installation: list[str] = []


def _loaded_files(installations: tuple[str, ...]) -> list[str]:
    """The Python files of the modules this process has loaded, outside Python's installation.

    A process with torch loaded holds thousands of modules; each is sifted once a process, so a
    process that starts many runs (a sweep, a notebook) does not walk them all at each, whose
    memory has gone cold by then (0.04 to 0.05 s a run here). A file stays once its module was
    loaded, as the code that ran. Read from each module's own namespace: getattr would call the
    module-level ``__getattr__`` of each module without a ``__file__``."""
    for module in list(sys.modules.values()):
        if _sifted.get(id(module)) is module:
            continue
        _sifted[id(module)] = module
        text = getattr(module, "__dict__", {}).get("__file__")
        if isinstance(text, str) and text.endswith(".py") and not text.startswith(installations):
            _files_outside_installation.append(text)
    return _files_outside_installation


def _sources(project: Path, extra: Iterable[Path]) -> dict[str, str]:
    """Every Python file loaded from the project folder (libraries inside it excluded).

    Sifted by the text of their paths (absolute, as Python records them), and only the
    project's own are read."""
    # Python's own installation (a virtualenv inside the project, a pyenv under a home folder
    # kept in git) holds libraries, never the job.
    installations = tuple(str(Path(prefix).resolve()) + os.sep for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    root = str(project) + os.sep
    found = {}
    for text in {*_loaded_files(installations), *(str(path) for path in extra)}:
        if not text.endswith(".py") or not text.startswith(root) or text.startswith(installations):
            continue
        file = Path(text)
        relative = file.relative_to(project).as_posix()
        if _is_library(Path(relative)):
            continue
        try:
            found[relative] = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
        except OSError:
            continue
    return dict(sorted(found.items()))


def _git(project: Path, *args: str) -> bytes | None:
    if shutil.which("git") is None:
        return None
    try:
        result = subprocess.run(["git", "-C", str(project), *args], capture_output=True, timeout=20, check=False,
                                env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"))
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def git_facts(project: Path) -> dict[str, str]:
    """The commit, whether tracked files changed, a digest of that diff, and how many files are untracked."""
    # One git process for the commit, the changes and the untracked files (each costs a run's
    # start about 10 ms): porcelain v2 heads its lines with "# branch.oid <commit>".
    status = _git(project, "status", "--porcelain=v2", "--branch", "--untracked-files=all")
    lines = status.decode(errors="replace").splitlines() if status is not None else []
    commit = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), "(initial)")
    if commit == "(initial)":  # no git, not a repository, or no commit yet
        return dict.fromkeys(("git_commit", "git_dirty", "git_diff_digest", "git_untracked"), UNAVAILABLE)
    untracked = sum(line.startswith("? ") for line in lines)
    dirty = any(not line.startswith(("# ", "? ", "! ")) for line in lines)
    diff = _git(project, "diff", "HEAD", "--binary") if dirty else b""
    return {
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "git_diff_digest": hashlib.sha256(diff).hexdigest()[:16] if diff else NO_CHANGES,
        "git_untracked": str(untracked),
    }
