"""Where the data directory lives: a local folder or a filesystem URL, behind one small interface.

::

  KTRDR_DATA_DIR / DataManager(data_dir=...)   "/srv/ktrdr", "./data", "s3://bucket/prefix", ...
        │ open_location()
        ▼
  Location: a pyarrow filesystem + the base path in it (created on first use)
        │ list_dir / read_bytes / open_input / write_atomic / delete / move / check_dir
        ├── local disk: os calls; a write goes to a hidden temporary file in the target's
        │   folder, is fsynced, renamed over the target (``os.replace``) and the folder is
        │   fsynced: a crash leaves the old file or the new one, never half of one.
        └── object storage (pyarrow.fs: S3, GCS, HDFS; any fsspec filesystem through
            ``FSSpecHandler``): objects are written whole. The bytes are uploaded to a hidden
            temporary key, its size is checked, then a server-side copy puts it at the target
            key (S3's CopyObject is atomic: a reader sees the old object or the new one).

``s3://`` URLs take the standard AWS environment: ``AWS_ENDPOINT_URL`` (or
``AWS_ENDPOINT_URL_S3``) for an S3-compatible server such as MinIO, ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` (or any other source of the AWS SDK's
default chain) and ``AWS_REGION`` / ``AWS_DEFAULT_REGION``. pyarrow's own URL options
(``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``) are honoured as given.

Hidden names (a leading ``.`` or ``_``) are skipped by Spark, Hive and ``pyarrow.dataset``;
temporary files are named ``.tmp-<name>.<random>`` so that no ``*.parquet`` glob matches them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from ktrdr.data.store_errors import StoreUnusableError

log = logging.getLogger(__name__)

#: Prefix of temporary files and objects (hidden from every dataset reader).
TMP_PREFIX = ".tmp-"
#: Object stores: seconds to connect, seconds per request, attempts per request.
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
MAX_ATTEMPTS = 3

_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]+://")
#: Filesystems whose folders exist implicitly (no folder objects are created).
_FLAT_NAMESPACES = {"s3", "gcs"}


def is_url(text: str) -> bool:
    """``s3://...``, ``gs://...``, ``file://...``: anything with a scheme (not ``C:\\``)."""
    return bool(_URL_RE.match(text))


def default_data_dir() -> Path | str:
    """``KTRDR_DATA_DIR`` (a path or a URL), else ``./data``."""
    value = os.environ.get("KTRDR_DATA_DIR") or "data"
    return value if is_url(value) else Path(value)


@dataclass(frozen=True)
class Entry:
    """One listed file or folder."""

    path: str
    name: str
    is_file: bool
    size: int = 0
    mtime_ns: int = 0


@dataclass
class Location:
    """A data directory: a filesystem and the base path in it.

    Paths handed to the methods are paths *in the filesystem* (``join`` builds them): an
    absolute OS path on a local disk, ``bucket/key`` on S3.
    """

    url: str
    scheme: str
    _base: str
    _factory: Callable[[], tuple[pafs.FileSystem, str]] | None = field(default=None, repr=False)
    _fs: pafs.FileSystem | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def base(self) -> str:
        """The data directory's path in the filesystem (a URL's is known once it is open)."""
        if self._factory is not None and self._fs is None:
            self.fs  # noqa: B018
        return self._base

    @property
    def local(self) -> bool:
        return self.scheme == ""

    @property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem (created on first use).

        Raises:
            StoreUnusableError: the URL names no filesystem this installation can open.
        """
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    if self._factory is None:
                        self._fs = pafs.LocalFileSystem()
                    else:
                        try:
                            self._fs, self._base = self._factory()
                        except StoreUnusableError:
                            raise
                        except (OSError, ValueError, pa.ArrowException) as exc:
                            raise StoreUnusableError(
                                f"cannot open the data directory {self.url}: {exc}") from exc
        return self._fs

    def join(self, *parts: str) -> str:
        """The path of ``parts`` under the base."""
        if self.local:
            return os.path.join(self._base, *parts)
        return "/".join([self.base.rstrip("/"), *parts])

    def display(self, path: str) -> Path | str:
        """``path`` as a user writes it: an OS path, or a URL (``s3://bucket/key``)."""
        if self.local:
            return Path(path)
        return f"{self.scheme}://{path.lstrip('/')}"

    # ----------------------------------------------------------------- reading

    def info(self, path: str) -> pafs.FileInfo:
        return self.fs.get_file_info(path)

    def list_dir(self, path: str, recursive: bool = False) -> list[Entry]:
        """The files and folders under ``path``, sorted by path (none when it does not
        exist or is not a folder)."""
        if self.local:
            return sorted(_scan_local(path, recursive), key=lambda e: e.path)
        selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
        try:
            infos = self.fs.get_file_info(selector)
        except NotADirectoryError:
            return []
        return sorted((Entry(i.path, i.base_name, i.type == pafs.FileType.File, i.size or 0,
                             i.mtime_ns or 0) for i in infos), key=lambda e: e.path)

    def read_bytes(self, path: str) -> bytes:
        """The whole file.

        Raises:
            FileNotFoundError: there is no such file.
        """
        if self.local:
            return Path(path).read_bytes()
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(path)
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def open_input(self, path: str) -> Any:
        """A random-access file for pyarrow's readers."""
        if self.local:
            return pa.OSFile(path, "rb")
        return self.fs.open_input_file(path)

    # ----------------------------------------------------------------- writing

    def write_atomic(self, path: str, write: Callable[[Any], object]) -> None:
        """Replace ``path`` by what ``write(handle)`` writes, atomically (module docstring).

        ``handle`` takes ``write(bytes)`` and is accepted by ``pyarrow.parquet.write_table``.
        """
        if self.local:
            _write_local(path, write)
        else:
            buffer = pa.BufferOutputStream()
            write(buffer)
            self._put_whole(path, buffer.getvalue())

    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        self.write_atomic(path, lambda handle: handle.write(data))

    def _put_whole(self, path: str, data: pa.Buffer) -> None:
        parent, name = path.rsplit("/", 1)
        tmp = f"{parent}/{TMP_PREFIX}{name}.{secrets.token_hex(6)}"
        fs = self.fs
        if fs.type_name not in _FLAT_NAMESPACES:
            fs.create_dir(parent, recursive=True)
        try:
            with fs.open_output_stream(tmp) as out:
                out.write(data)
            size = fs.get_file_info(tmp).size
            if size != data.size:
                raise OSError(f"upload of {self.display(tmp)} is incomplete: {size} of "
                              f"{data.size} bytes")
            fs.move(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.delete_file(tmp)
            raise

    def delete(self, path: str) -> None:
        if self.local:
            os.unlink(path)
            _fsync_dir(os.path.dirname(path))
        else:
            self.fs.delete_file(path)

    def move(self, src: str, dst: str) -> None:
        """Move a file (a rename on a local disk; a server-side copy, then a delete, on S3)."""
        if self.local:
            _makedirs_durable(os.path.dirname(dst))
            os.replace(src, dst)
            _fsync_dir(os.path.dirname(dst))
            _fsync_dir(os.path.dirname(src))
        else:
            self.fs.move(src, dst)

    # ----------------------------------------------------------------- checks

    def check_dir(self, path: str, writable: bool, what: str) -> None:
        """Raise ``StoreUnusableError`` unless ``path`` is (or can become) a usable folder.

        Nothing is left behind: a write probe is a temporary file, deleted at once.
        """
        if self.local:
            _check_local_dir(Path(path), writable, what)
        else:
            self._check_remote_dir(path, writable, what)

    def _check_remote_dir(self, path: str, writable: bool, what: str) -> None:
        shown = self.display(path)
        fs = self.fs
        try:
            if fs.type_name in _FLAT_NAMESPACES:
                bucket = path.split("/", 1)[0]
                if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                    raise StoreUnusableError(
                        f"the bucket {bucket!r} of {what} {shown} does not exist: create it, "
                        f"or point KTRDR_DATA_DIR / --data-dir at an existing bucket")
            if fs.get_file_info(path).type == pafs.FileType.File:
                raise StoreUnusableError(
                    f"{what} {shown} is a file, not a folder: point KTRDR_DATA_DIR / "
                    f"--data-dir elsewhere, or remove the file")
        except StoreUnusableError:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise StoreUnusableError(
                f"cannot reach {what} {shown}: {_short(exc)}; check AWS_ENDPOINT_URL, the "
                f"credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), AWS_REGION and the "
                f"network") from exc
        if writable:
            probe = f"{path.rstrip('/')}/{TMP_PREFIX}probe.{secrets.token_hex(6)}"
            try:
                with fs.open_output_stream(probe) as out:
                    out.write(b"probe")
                fs.delete_file(probe)
            except (OSError, pa.ArrowException) as exc:
                raise StoreUnusableError(
                    f"cannot write to {what} {shown}: {_short(exc)}; grant write access "
                    f"(s3:PutObject, s3:DeleteObject) or use another data directory") from exc


def open_location(data_dir: str | os.PathLike | Location | None) -> Location:
    """The ``Location`` of a data directory given as a path or a URL (None: the default).

    Raises:
        StoreUnusableError: an unsupported URL (raised on first use of the filesystem).
    """
    if isinstance(data_dir, Location):
        return data_dir
    if data_dir is None:
        data_dir = default_data_dir()
    text = os.fspath(data_dir)
    if not is_url(text):
        return Location(text, "", str(Path(text).expanduser().resolve()))
    scheme = text.split("://", 1)[0].lower()
    if scheme == "file":
        path = urlsplit(text).path
        return Location(text, "", str(Path(path).resolve()))
    if scheme in ("s3", "s3a"):
        return Location(text, "s3", "", _factory=lambda: _s3_filesystem(text))
    return Location(text, scheme, "", _factory=lambda: _other_filesystem(text))


def _s3_filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """An ``S3FileSystem`` from the AWS environment (module docstring) and ``bucket/prefix``."""
    parts = urlsplit(url)
    path = (parts.netloc + parts.path).rstrip("/")
    if not parts.netloc:
        raise StoreUnusableError(f"no bucket in {url!r}: write s3://BUCKET/PREFIX")
    if parts.query:  # pyarrow's own options, as given
        fs, path = pafs.FileSystem.from_uri(url.replace("s3a://", "s3://", 1))
        return fs, path.rstrip("/")
    options: dict[str, Any] = dict(
        connect_timeout=CONNECT_TIMEOUT, request_timeout=REQUEST_TIMEOUT,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS))
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint:
        ep = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        options.update(endpoint_override=ep.netloc, scheme=ep.scheme or "https")
        region = region or "us-east-1"  # what S3-compatible servers answer to
    if not region:
        try:
            region = pafs.resolve_s3_region(parts.netloc)
        except (OSError, pa.ArrowException) as exc:
            raise StoreUnusableError(
                f"cannot find the region of bucket {parts.netloc!r} ({_short(exc)}): set "
                f"AWS_REGION, or AWS_ENDPOINT_URL for an S3-compatible server") from exc
    options["region"] = region
    return pafs.S3FileSystem(**options), path


def _other_filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for ``url`` (GCS, HDFS, ...), else fsspec's, wrapped for pyarrow."""
    try:
        fs, path = pafs.FileSystem.from_uri(url)
        return fs, path.rstrip("/")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as first:
        try:
            import fsspec
        except ImportError:
            raise StoreUnusableError(
                f"no filesystem for {url!r} ({first}); use a local path or s3://, or install "
                f"fsspec and the package for this scheme") from None
        try:
            ffs, path = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise StoreUnusableError(f"no filesystem for {url!r}: {exc}") from exc
        return pafs.PyFileSystem(pafs.FSSpecHandler(ffs)), path.rstrip("/")


def _scan_local(path: str, recursive: bool) -> list[Entry]:
    out: list[Entry] = []
    try:
        with os.scandir(path) as entries:
            items = list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return out
    for item in items:
        if item.is_dir(follow_symlinks=True):
            out.append(Entry(item.path, item.name, False))
            if recursive:
                out.extend(_scan_local(item.path, True))
        else:
            try:
                st = item.stat()
            except FileNotFoundError:  # removed since the listing
                continue
            out.append(Entry(item.path, item.name, True, st.st_size, st.st_mtime_ns))
    return out


def _write_local(path: str, write: Callable[[Any], object]) -> None:
    parent, name = os.path.split(path)
    _makedirs_durable(parent)
    tmp = os.path.join(parent, f"{TMP_PREFIX}{name}.{secrets.token_hex(6)}")
    # O_EXCL with the process umask (mkstemp would make it private to the owner).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(parent)


def _makedirs_durable(path: str) -> None:
    """``os.makedirs``, with every parent of a new folder fsynced (the new entry survives)."""
    missing = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    if not missing:
        return
    os.makedirs(path, exist_ok=True)
    for folder in reversed(missing):
        _fsync_dir(os.path.dirname(folder))


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_local_dir(path: Path, writable: bool, what: str) -> None:
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        if existing == path:
            raise StoreUnusableError(
                f"{what} {path} is a file, not a folder: point KTRDR_DATA_DIR / --data-dir at "
                f"a folder, or move the file away")
        raise StoreUnusableError(
            f"{what} {path} cannot be created: {existing} is a file, not a folder; point "
            f"KTRDR_DATA_DIR / --data-dir elsewhere, or move the file away")
    if not os.access(existing, os.R_OK | os.X_OK):
        raise StoreUnusableError(
            f"{what} {existing} cannot be read (permission denied): fix its permissions or "
            f"use another data directory")
    if not writable:
        return
    problem = None
    if not os.access(existing, os.W_OK | os.X_OK):
        problem = "read-only"
    else:
        probe = existing / f"{TMP_PREFIX}probe.{secrets.token_hex(6)}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problem = "read-only" if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) \
                else os.strerror(exc.errno or 0) or str(exc)
    if problem is not None:
        where = path if existing == path else f"{path} (in {existing})"
        raise StoreUnusableError(
            f"{what} {where} is not writable ({problem}): point KTRDR_DATA_DIR / --data-dir at "
            f"a writable folder, or fix its permissions")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


__all__ = ["CONNECT_TIMEOUT", "Entry", "Location", "MAX_ATTEMPTS", "REQUEST_TIMEOUT", "TMP_PREFIX",
           "default_data_dir", "is_url", "open_location"]
