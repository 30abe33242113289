"""What data a run trained on: a dataset's name, where it came from, and a digest of its content.

Other data, another order of the batches or other augmentations are among the commonest reasons
two runs part. A run records each dataset it is given (``run.log_dataset``) through MLflow's own
dataset tracking, which the UI shows, and compare ranks a changed digest right after the code.

The digest must be cheap for large data. A file's content hash (SHA-256) is computed once and
kept in a cache (``MLREPRO_CACHE_DIR``, else ``~/.cache/mlrepro``) under its path, size and
modification time: a second run over the same files reads only their ``stat``. A user who has a
digest already (a dataset version, a content address) passes it instead.

No torch and no MLflow at import: a torch ``Dataset`` is recognised by the attributes it has.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlrepro.errors import DatasetError, describe_validation_error

CACHE_DIR_ENV = "MLREPRO_CACHE_DIR"
# A folder of more files than this is hashed only with the user's say (digest=): a record names its path.
MAX_FILES = 1_000_000
# A Hugging Face dataset up to this size is named by its rows, read as the run starts; a larger one by
# the library's fingerprint, which is random where a transform cannot be pickled (pass digest= then).
HF_ROWS_BYTES = 1 << 30
# The fields of torchvision's FakeData that decide its images: it draws image i from random_offset + i.
_FAKE_DATA_FIELDS = ("size", "image_size", "num_classes", "random_offset")
# The attribute a torchvision dataset's files lie under, relative to its root (CIFAR-10, CIFAR-100).
_TORCHVISION_FOLDER = "base_folder"


class DatasetRecord(BaseModel):
    """One dataset as a run records it: what MLflow's ``log_input`` keeps, and what compare compares."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=500)
    digest: str = Field(min_length=1, max_length=36)  # MLflow's column holds 36 characters
    source_type: str = Field(min_length=1, max_length=36)  # "local" (a path), "code" (drawn by code), "hf", ...
    source: str = Field(max_length=4000)  # a path, or what the code draws it from, as JSON
    context: str = Field("train", min_length=1, max_length=40)  # MLflow's mlflow.data.context tag

    @property
    def fact(self) -> str:
        """Its key among the differences compare ranks: data read from somewhere is a cause of its own
        (``data.<name>``); data the job's code draws follows from the code and the spec (``drawn_data.<name>``)."""
        return f"{'drawn_data' if self.source_type == 'code' else 'data'}.{self.name}"

    @property
    def path(self) -> Path | None:
        """The file or folder on disk, for a dataset read from one (MLflow's local source: {"uri": path})."""
        if self.source_type != "local":
            return None
        try:
            uri = json.loads(self.source).get("uri")
        except (ValueError, AttributeError):
            return None  # a record is input: a source that is not one is no path
        return Path(uri.removeprefix("file://")) if isinstance(uri, str) and uri else None


def describe_dataset(source: Any, name: str | None = None, digest: str | None = None,
                     context: str = "train") -> DatasetRecord:
    """The record of ``source``: a path (a file or a folder), a torch ``Dataset``, a Hugging Face
    ``Dataset``, or an ``mlflow.data`` dataset; ``digest`` where the user has one already. What
    MLflow would refuse (a digest over 36 characters, an empty name) is one line here, before the run
    spools it."""
    try:
        return _described(source, name, digest, context)
    except ValidationError as err:
        raise DatasetError(f"log_dataset: {describe_validation_error(err)}") from err


def _described(source: Any, name: str | None, digest: str | None, context: str) -> DatasetRecord:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).resolve()
        if not path.exists():
            raise DatasetError(f"log_dataset: {path} does not exist")
        return DatasetRecord(name=name or path.name, digest=digest or path_digest(path), source_type="local",
                             source=json.dumps({"uri": str(path)}), context=context)
    inner = _unwrapped(source)
    if _is_mlflow_dataset(inner):
        return DatasetRecord(name=name or inner.name, digest=digest or inner.digest, source_type=inner.source._get_source_type(),
                             source=inner.source.to_json(), context=context)
    fingerprint = getattr(inner, "_fingerprint", None)
    if isinstance(fingerprint, str) and fingerprint:  # a Hugging Face datasets.Dataset
        of_rows = _hugging_face_rows_digest(inner) if digest is None else None
        return DatasetRecord(name=name or type(inner).__name__, digest=digest or of_rows or fingerprint[:36],
                             source_type="hf",
                             source=json.dumps({"fingerprint": fingerprint, "digest_of": "rows" if of_rows else
                                                "the user" if digest else "fingerprint",
                                                "rows": len(inner) if hasattr(inner, "__len__") else None}),
                             context=context)
    if type(inner).__name__ == "FakeData" and all(hasattr(inner, field) for field in _FAKE_DATA_FIELDS):
        drawn = {field: _plain(getattr(inner, field)) for field in _FAKE_DATA_FIELDS}
        return DatasetRecord(name=name or "FakeData", digest=digest or _digest_of_text(json.dumps(drawn, sort_keys=True)),
                             source_type="code", source=json.dumps({"torchvision.datasets.FakeData": drawn}),
                             context=context)
    tensors = getattr(inner, "tensors", None)
    if type(inner).__name__ == "TensorDataset" and isinstance(tensors, tuple):  # data made in memory by code
        return DatasetRecord(name=name or "TensorDataset", digest=digest or _tensors_digest(tensors), source_type="code",
                             source=json.dumps({"torch.utils.data.TensorDataset": [
                                 {"shape": list(t.shape), "dtype": str(t.dtype)} for t in tensors]}), context=context)
    root, folder = getattr(inner, "root", None), getattr(inner, _TORCHVISION_FOLDER, None)
    if isinstance(root, (str, os.PathLike)) and isinstance(folder, str):  # torchvision's CIFAR-10 and its kind
        files = Path(root, folder)
        if files.is_dir():
            return _described(files, name or type(inner).__name__, digest, context)
    if digest is not None:
        return DatasetRecord(name=name or type(source).__name__, digest=digest, source_type="code",
                             source=json.dumps({"class": type(source).__qualname__}), context=context)
    raise DatasetError(f"log_dataset: mlrepro cannot read a {type(source).__qualname__}'s content; pass the "
                       "folder or file it reads (run.log_dataset(path)), or digest=, a digest you have of it")


def _hugging_face_rows_digest(dataset: Any) -> str | None:
    """A digest of the rows a Hugging Face ``datasets.Dataset`` holds, as Arrow writes them, and of the
    indices a ``select`` or ``shuffle`` keeps; None for one over ``HF_ROWS_BYTES`` (named by its
    fingerprint then) or one that is not laid out as the library's own.

    Its ``_fingerprint`` names the transforms that made it, not the rows, and it is random where a
    transform cannot be pickled (the library warns "a random hash was used instead"): two runs of the
    same code would record other data, and compare would name the data as the cause of a difference
    it did not make. The rows are read once, batch by batch as Arrow keeps them (the same code lays
    them out the same)."""
    try:
        tables = [dataset.data.table] + ([dataset._indices.table] if dataset._indices is not None else [])
        if sum(table.nbytes for table in tables) > HF_ROWS_BYTES:
            return None
    except AttributeError:
        return None
    # pyarrow only where a Hugging Face dataset is recorded, which brought it
    import pyarrow as pa

    digest = hashlib.sha256()
    for table in tables:
        metadata = _without_fingerprint(table.schema.metadata)
        for batch in table.to_batches():
            batch = batch.replace_schema_metadata(metadata)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            digest.update(sink.getvalue())
    return digest.hexdigest()[:16]


def _without_fingerprint(metadata: dict[bytes, bytes] | None) -> dict[bytes, bytes]:
    """A table's schema metadata less the fingerprint the library writes into it: its features (a
    ``ClassLabel``'s names, say) are part of the data; the fingerprint, random or not, is not."""
    kept = dict(metadata or {})
    try:
        info = json.loads(kept[b"huggingface"])
        info.pop("fingerprint", None)
        kept[b"huggingface"] = json.dumps(info, sort_keys=True).encode()
    except (KeyError, ValueError, AttributeError):
        pass
    return kept


def _unwrapped(source: Any) -> Any:
    """The dataset under torch's ``Subset`` (``dataset``): the data the indices pick from."""
    seen = 0
    while type(source).__name__ == "Subset" and hasattr(source, "dataset") and seen < 10:
        source, seen = source.dataset, seen + 1
    return source


def _is_mlflow_dataset(source: Any) -> bool:
    return all(hasattr(source, attribute) for attribute in ("name", "digest", "source")) and \
        hasattr(getattr(source, "source", None), "to_json") and type(source).__module__.startswith("mlflow.")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _tensors_digest(tensors: tuple[Any, ...]) -> str:
    """Each tensor's dtype, shape and bytes, in order (copied to the CPU: a dataset is read once)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _digest_of_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def path_digest(path: Path) -> str:
    """A digest of a file's or a folder's content: each file's relative path and content hash, in
    order. Hidden files and folders (``.DS_Store``, ``.cache``) are left out: they are not data.
    Links are not followed, and only regular files are read (never a device such as /dev/zero)."""
    if path.is_file():
        files = [(path.name, path)]
    else:
        files = []
        for folder, subfolders, names in os.walk(path):
            subfolders[:] = [name for name in subfolders if not name.startswith(".")]
            for name in names:
                file = Path(folder, name)
                if not name.startswith(".") and file.is_file() and not file.is_symlink():
                    files.append((file.relative_to(path).as_posix(), file))
            if len(files) > MAX_FILES:
                raise DatasetError(f"log_dataset: {path} holds more than {MAX_FILES:,} files; pass digest=, a digest "
                                   "you have of it")
        files.sort()
    cache = _DigestCache.load()
    lines = [f"{relative} {cache.content_hash(file)}" for relative, file in files]
    cache.save()
    return _digest_of_text("\n".join(lines))


def digests_now(datasets: Mapping[str, DatasetRecord]) -> dict[str, str]:
    """The digests the recorded datasets read from disk have now, by name (files hashed only where
    their size or modification time changed): what ``reproduce`` warns of before it runs. A dataset
    that is gone, or too large to hash, says so in place of a digest."""
    now = {}
    for key, dataset in datasets.items():
        path = dataset.path
        if path is None:
            continue
        if not path.exists():
            now[key] = f"(not on disk at {path})"
            continue
        try:
            now[key] = path_digest(path)
        except (DatasetError, OSError) as err:
            now[key] = f"(not checked: {type(err).__name__})"
    return now


class _DigestCache:
    """Content hashes under (path, size, modification time): each file is read once, until it changes.

    The cache is a convenience, never the truth: an entry that is not what this module writes is
    ignored and the file read again."""

    def __init__(self, path: Path, entries: dict[str, Any]) -> None:
        self.path = path
        self.entries = entries
        self.changed = False

    @classmethod
    def load(cls) -> _DigestCache:
        folder = Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "mlrepro")
        path = folder / "file-digests.json"
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries if isinstance(entries, dict) else {})

    def content_hash(self, file: Path) -> str:
        stat = file.stat()
        key = str(file.resolve())
        known = self.entries.get(key)
        if isinstance(known, list) and len(known) == 3 and known[:2] == [stat.st_size, stat.st_mtime_ns] \
                and isinstance(known[2], str):
            return known[2]
        with file.open("rb") as data:
            digest = hashlib.file_digest(data, "sha256").hexdigest()
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        """Written whole and renamed into place; a cache that cannot be written is only slower."""
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            temporary.write_text(json.dumps(self.entries))
            os.replace(temporary, self.path)
        except OSError:
            pass
