"""The dataset catalog (``data/catalog.json``) and fetching its files with sha256 checks.

The catalog maps a dataset name to its files, each with the URL it is published at, its sha256
digest and its size. Multi30k is the first entry: its upstream location is the GitHub
repository ``multi30k/dataset``, folder ``data/task1/raw/`` (the 2016 test set is named
``test_2016_flickr.<lang>.gz`` there).

Files come either from a local mirror folder (a plain copy) or from their URL
(``urllib.request``); both are written to a temporary file in the output folder, checked
against the catalog's digest and only then renamed into place, so that a failed, interrupted
or corrupt fetch leaves nothing half-written. Files already present with the right digest are
skipped.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nmt.errors import ConfigError, InputError, NMTError

CATALOG_PATH = Path(__file__).resolve().parents[2] / "data" / "catalog.json"
CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0

#: ``progress(file_name, done_bytes, total_bytes)``; ``total_bytes`` is ``None`` when unknown.
ProgressFn = Callable[[str, int, int | None], None]

_DATASET_KEYS = ("description", "homepage", "citation", "license", "languages", "splits", "files")
_FILE_KEYS = ("name", "url", "sha256", "bytes")


class ChecksumError(InputError):
    """A fetched file whose sha256 digest differs from the catalog's."""


class DownloadError(NMTError):
    """A file could not be downloaded from its URL."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset.

    Args:
        name: file name, also its name in the output and mirror folders (``train.de.gz``).
        url: where the file is published.
        sha256: expected digest, 64 lowercase hex characters.
        bytes: expected size in bytes, or ``None`` when unknown (only used for progress).
    """

    name: str
    url: str
    sha256: str
    bytes: int | None = None


@dataclass(frozen=True)
class Dataset:
    """A catalog entry: what a dataset is and which files make it up.

    Args:
        name: catalog key (``multi30k``).
        description: one or two sentences on the content and where it comes from.
        homepage: the upstream project page.
        citation: whom to cite (``Elliott et al. 2016``).
        license: the terms the data is published under.
        languages: language codes (``de``, ``en``, ...).
        splits: split name → sentences per language.
        files: the files to fetch.
    """

    name: str
    description: str
    homepage: str
    citation: str
    license: str
    languages: tuple[str, ...]
    splits: Mapping[str, int]
    files: tuple[DataFile, ...]


def load_catalog(path: str | Path | None = None) -> dict[str, Dataset]:
    """Read the dataset catalog.

    Args:
        path: a catalog JSON file; ``None`` means the project's ``data/catalog.json``.

    Returns:
        Dataset name → :class:`Dataset`, in catalog order.

    Raises:
        ConfigError: the file is missing, not valid JSON, or an entry has missing or unknown
            keys or a malformed digest.
    """
    path = Path(CATALOG_PATH if path is None else path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"dataset catalog not found at {path}; nmt reads it from its source checkout "
            "(install with `pip install -e .`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read dataset catalog {path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the catalog must be a JSON object of dataset name → entry")
    return {name: _parse_dataset(name, entry, path) for name, entry in raw.items()}


def _check_keys(
    where: str, entry: Any, required: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    valid = required + optional
    unknown = sorted(set(entry) - set(valid))
    missing = [key for key in required if key not in entry]
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys are {list(valid)}")
    if missing:
        raise ConfigError(f"{where}: missing keys {missing}")


def _parse_file(where: str, entry: Any) -> DataFile:
    _check_keys(where, entry, required=_FILE_KEYS[:3], optional=_FILE_KEYS[3:])
    digest = str(entry["sha256"]).lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ConfigError(f"{where}: sha256={entry['sha256']!r} is not 64 hex characters")
    name = str(entry["name"])
    if Path(name).name != name or name in ("", ".", ".."):
        raise ConfigError(f"{where}: name={name!r} must be a plain file name, not a path")
    size = entry.get("bytes")
    return DataFile(name, str(entry["url"]), digest, None if size is None else int(size))


def _parse_dataset(name: str, entry: Any, path: Path) -> Dataset:
    where = f"{path}: dataset {name!r}"
    _check_keys(where, entry, required=("files",), optional=_DATASET_KEYS[:-1])
    if not isinstance(entry["files"], list) or not entry["files"]:
        raise ConfigError(f"{where}: 'files' must be a non-empty list of file entries")
    files = tuple(_parse_file(f"{where}, file {i}", item) for i, item in enumerate(entry["files"]))
    return Dataset(
        name=name,
        description=str(entry.get("description", "")),
        homepage=str(entry.get("homepage", "")),
        citation=str(entry.get("citation", "")),
        license=str(entry.get("license", "")),
        languages=tuple(entry.get("languages", ())),
        splits={str(k): int(v) for k, v in entry.get("splits", {}).items()},
        files=files,
    )


def find_dataset(name: str, catalog: Mapping[str, Dataset] | None = None) -> Dataset:
    """The catalog entry called ``name``.

    Raises:
        ConfigError: no such dataset (the message lists the valid names).
    """
    catalog = load_catalog() if catalog is None else catalog
    if name not in catalog:
        raise ConfigError(
            f"unknown dataset {name!r}; the catalog has: {', '.join(sorted(catalog))}"
        )
    return catalog[name]


def sha256_file(path: str | Path) -> str:
    """The sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def get_dataset(
    name: str,
    out_dir: str | Path,
    mirror: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> list[Path]:
    """Fetch every file of a catalog dataset into ``out_dir`` and check its sha256.

    A file already in ``out_dir`` with the right digest is kept as it is (not rewritten).

    Args:
        name: catalog name (``multi30k``).
        out_dir: folder to write the files to; created if missing.
        mirror: a local folder holding the files under their catalog names; they are copied
            from there instead of downloaded.
        progress: called as ``progress(file_name, done_bytes, total_bytes)`` while each file is
            fetched (once with ``done == total`` for a file that is skipped).

    Returns:
        The paths of the dataset's files in ``out_dir``, in catalog order.

    Raises:
        ConfigError: unknown dataset name, or a broken catalog.
        InputError: the mirror folder, or a file in it, is missing or unreadable.
        ChecksumError: a fetched file has the wrong digest (nothing is left in ``out_dir``).
        DownloadError: a download failed.
    """
    dataset = find_dataset(name)
    if mirror is not None and not Path(mirror).is_dir():
        raise InputError("mirror folder not found", mirror)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder: {exc}", out) from None
    return [fetch_file(file, out, mirror, progress) for file in dataset.files]


def fetch_file(
    file: DataFile,
    out_dir: Path,
    mirror: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Fetch one file into ``out_dir`` atomically unless it is already there and intact.

    Returns:
        ``out_dir / file.name``.

    Raises:
        InputError: the mirror lacks the file or it cannot be read.
        ChecksumError: the fetched bytes have the wrong digest (the temporary file is removed).
        DownloadError: the download failed.
    """
    target = out_dir / file.name
    if target.is_file() and sha256_file(target) == file.sha256:
        if progress is not None:
            size = target.stat().st_size
            progress(file.name, size, size)
        return target
    # A unique name beside the target, so that os.replace is an atomic rename on one filesystem.
    tmp = out_dir / f".{file.name}.{uuid.uuid4().hex[:12]}.part"
    try:
        dst = open(tmp, "xb")  # closed by the with statement below
    except OSError as exc:
        raise InputError(f"cannot write to the output folder: {exc}", out_dir) from None
    try:
        with dst:
            if mirror is None:
                actual = _download(file, dst, progress)
            else:
                actual = _copy_from_mirror(file, Path(mirror), dst, progress)
            dst.flush()
            os.fsync(dst.fileno())
        if actual != file.sha256:
            source = file.url if mirror is None else Path(mirror) / file.name
            raise ChecksumError(
                f"sha256 mismatch: expected {file.sha256}, got {actual} (fetched from {source}); "
                "the file is corrupt or the catalog is out of date",
                file.name,
            )
        os.replace(tmp, target)
    except BaseException:  # also on Ctrl-C: never leave a half-written file behind
        tmp.unlink(missing_ok=True)
        raise
    return target


def _copy_from_mirror(
    file: DataFile, mirror: Path, dst: IO[bytes], progress: ProgressFn | None
) -> str:
    source = mirror / file.name
    try:
        with open(source, "rb") as src:
            return _stream(src, dst, file.name, source.stat().st_size, progress)
    except FileNotFoundError:
        raise InputError(
            f"{file.name} is not in the mirror folder; put the dataset's files there or drop "
            "--mirror/NMT_DATA_MIRROR to download them",
            source,
        ) from None
    except OSError as exc:
        raise InputError(f"cannot copy from the mirror folder: {exc}", source) from None


def _download(file: DataFile, dst: IO[bytes], progress: ProgressFn | None) -> str:
    try:
        with urllib.request.urlopen(file.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else file.bytes
            return _stream(response, dst, file.name, total, progress)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError is an OSError
        raise DownloadError(
            f"cannot download {file.name} from {file.url}: {exc}; without internet access, "
            "copy the files from a local folder with --mirror DIR (or NMT_DATA_MIRROR)"
        ) from None


def _stream(
    src: IO[bytes], dst: IO[bytes], name: str, total: int | None, progress: ProgressFn | None
) -> str:
    """Copy ``src`` to ``dst`` in chunks, reporting progress; return the sha256 of the bytes."""
    digest = hashlib.sha256()
    done = 0
    if progress is not None:
        progress(name, done, total)
    for chunk in iter(lambda: src.read(CHUNK_BYTES), b""):
        dst.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        if progress is not None:
            progress(name, done, total)
    return digest.hexdigest()
