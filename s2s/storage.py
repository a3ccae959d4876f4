"""Storage: local paths and URIs (s3://, gs://) through pyarrow, plus what pyarrow cannot do on S3.

Every module that reads or writes a file by path or URI goes through here: training runs, model
directories, the translate job's inputs and output folder. Three things need more than pyarrow's
filesystems give, and use boto3 on S3 (endpoint and credentials the standard AWS way, `AWS_ENDPOINT_URL`
included, or a URI's `?endpoint_override=`):

- **A file's identity**, to pin an input at planning: size and modification time everywhere, and on S3
  the ETag and, where the bucket keeps versions, the version id (`file_identity`).
- **Reading exactly that identity** (`open_pinned`): a local file is opened and checked by its handle
  (a file replaced by a rename keeps reading the old one; one rewritten in place is caught by its
  modification time); an S3 object is read by range requests that each carry the version id or
  `If-Match: <ETag>`, so no byte of another version can be read without an error.
- **Conditional writes** (`put_object_if`): S3's `If-None-Match: *` (create only) and `If-Match` on
  PutObject and DeleteObject, the primitives the output folder's lease and commits are built on
  (s2s/lease.py, s2s/commit.py). Locally the same comes from O_EXCL and hard links.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

TMP_PREFIX = "_tmp-"  # a write in progress: a name readers skip, and a resumed run deletes


class InputChanged(OSError):
    """A pinned input file is not the version the run planned from: it was rewritten, replaced or removed."""


class PreconditionFailed(OSError):
    """A conditional write found the object in another state than the condition asked (S3 HTTP 412)."""


def is_uri(path: str | Path) -> bool:
    """A URI (s3://, gs://) rather than a local path."""
    return "://" in str(path)


def is_s3(path: str | Path) -> bool:
    return str(path).startswith("s3://")


def absolute(path: str | Path) -> str:
    """A URI as it is, a local path made absolute: how a run or model is named in what we record."""
    return str(path) if is_uri(path) else str(Path(path).resolve())


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for a local path or a URI (s3://, gs://), and the path within it."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def build_folder_once(target: Path, fill: Callable[[Path], None]) -> Path:
    """`target`, filled by `fill(folder)` under a temporary name and renamed, unless it is there already.

    Processes on one machine that build the same folder at once (the actors or training workers of a
    node fetching a model or a run) never see half of it: the first rename wins, the others' copies go.
    """
    if target.exists():
        return target
    tmp = target.parent / f".{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    fill(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fsync_dir(folder: str | Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_local(path: str | Path, data: bytes, tmp_dir: str | Path | None = None) -> None:
    """A local file written whole or not at all: a temporary file (in `tmp_dir`, else beside it) is filled,
    fsynced and renamed to `path`, and the folder fsynced, so that the file survives a power cut."""
    path = Path(path)
    tmp = Path(tmp_dir or path.parent) / f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_durably(fs: pafs.FileSystem, path: str, write: Callable[[Any], None]) -> None:
    """Write a file whole or not at all: `write(sink)` fills a `_tmp-` file that is then renamed to `path`.

    On a local disk the data is flushed and fsynced before the rename and the folder after it. An object
    store publishes an object only once its upload is complete; the temporary name keeps a failed upload
    out of a listing there too.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        buf = io.BytesIO()
        write(buf)
        write_local(path, buf.getvalue())
        return
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/{TMP_PREFIX}{uuid.uuid4().hex}-{name}.tmp"
    with fs.open_output_stream(tmp) as sink:
        write(sink)
    fs.move(tmp, path)


def write_json(fs: pafs.FileSystem, path: str, value: dict) -> None:
    write_durably(fs, path, lambda f: f.write(json.dumps(value, indent=2).encode()))


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    """The JSON object at `path`, or None where there is no such file."""
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return json.loads(f.read())


def delete_if_present(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


# ---------------------------------------------------------------- S3 through boto3


def s3_parts(uri: str) -> tuple[str, str, str | None]:
    """(bucket, key, endpoint) of an s3:// URI; the endpoint from its `?endpoint_override=` if any, else None
    (boto3 then takes AWS_ENDPOINT_URL or AWS's own)."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    endpoint = query.get("endpoint_override", [None])[0]
    if endpoint and "://" not in endpoint:
        endpoint = f"{query.get('scheme', ['https'])[0]}://{endpoint}"
    return parts.netloc, parts.path.lstrip("/"), endpoint


def with_key(uri: str, key: str) -> str:
    """The URI of another key in the same bucket, keeping the URI's query (its endpoint)."""
    parts = urlsplit(uri)
    return f"s3://{parts.netloc}/{key}" + (f"?{parts.query}" if parts.query else "")


@functools.lru_cache(maxsize=8)
def s3_client(endpoint: str | None = None):
    """One boto3 S3 client per endpoint and process (boto3 clients are thread-safe)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def _s3_error(e: Exception) -> str:
    return getattr(e, "response", {}).get("Error", {}).get("Code", "") if hasattr(e, "response") else ""


def put_object_if(uri: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str:
    """Put an S3 object on a condition, return its ETag; PreconditionFailed where the condition does not hold.

    `if_none_match`: only if no object has that key (a create). `if_match`: only if the object's ETag is this.
    """
    from botocore.exceptions import ClientError

    bucket, key, endpoint = s3_parts(uri)
    extra: dict = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
    try:
        return s3_client(endpoint).put_object(Bucket=bucket, Key=key, Body=data, **extra)["ETag"]
    except ClientError as e:
        if _s3_error(e) in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise PreconditionFailed(f"{uri}: {_s3_error(e)}") from e
        raise


def delete_object_if(uri: str, etag: str | None = None) -> bool:
    """Delete an S3 object, only where its ETag is `etag` when one is given; False where it was not deleted."""
    from botocore.exceptions import ClientError

    bucket, key, endpoint = s3_parts(uri)
    try:
        s3_client(endpoint).delete_object(Bucket=bucket, Key=key, **({"IfMatch": etag} if etag else {}))
    except ClientError as e:
        if _s3_error(e) in ("PreconditionFailed", "NoSuchKey", "404"):
            return False
        raise
    return True


def s3_list(uri: str) -> dict[str, dict]:
    """Every object under an s3:// prefix: {key relative to the prefix: {"size", "etag", "mtime_ns"}}."""
    bucket, prefix, endpoint = s3_parts(uri.rstrip("/") + "/")
    found = {}
    for page in s3_client(endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            found[obj["Key"][len(prefix):]] = {"size": obj["Size"], "etag": obj["ETag"],
                                               "mtime_ns": int(obj["LastModified"].timestamp() * 1e9)}
    return found


def s3_read(uri: str, etag: str | None = None) -> tuple[bytes, str] | None:
    """An S3 object's bytes and ETag (None where it does not exist); with `etag`, only that version."""
    from botocore.exceptions import ClientError

    bucket, key, endpoint = s3_parts(uri)
    try:
        r = s3_client(endpoint).get_object(Bucket=bucket, Key=key, **({"IfMatch": etag} if etag else {}))
    except ClientError as e:
        if _s3_error(e) in ("NoSuchKey", "404"):
            return None
        if _s3_error(e) == "PreconditionFailed":
            raise PreconditionFailed(f"{uri}: changed") from e
        raise
    return r["Body"].read(), r["ETag"]


# ---------------------------------------------------------------- pinned inputs


def file_identity(uri: str) -> dict:
    """What identifies this version of a file: size and modification time; locally also the inode and change
    time; on S3 the ETag and, in a versioned bucket, the version id."""
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key, endpoint = s3_parts(uri)
        try:
            h = s3_client(endpoint).head_object(Bucket=bucket, Key=key)
        except ClientError as e:
            raise InputChanged(f"{uri}: cannot be read ({_s3_error(e) or e})") from e
        ident = {"size": h["ContentLength"], "mtime_ns": int(h["LastModified"].timestamp() * 1e9), "etag": h["ETag"]}
        if h.get("VersionId") and h["VersionId"] != "null":
            ident["version"] = h["VersionId"]
        return ident
    if is_uri(uri):  # other object stores: what pyarrow tells
        fs, path = filesystem(uri)
        info = fs.get_file_info(path)
        return {"size": info.size, "mtime_ns": info.mtime_ns}
    st = os.stat(uri)
    return _local_identity(st)


def _local_identity(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def describe_change(pinned: dict, now: dict | None) -> str:
    """How a file's identity moved, in words."""
    if now is None:
        return "it is gone"
    moved = [f"{k} {pinned.get(k)} -> {now.get(k)}" for k in ("size", "mtime_ns", "etag", "version", "inode") if pinned.get(k) != now.get(k)]
    return ", ".join(moved) or "its identity changed"


class _PinnedS3(io.RawIOBase):
    """One version of an S3 object as a seekable file: every range request names the version (or the ETag)."""

    def __init__(self, uri: str, pin: dict):
        self.uri, self.pin, self.pos = uri, pin, 0
        self.bucket, self.key, endpoint = s3_parts(uri)
        self.client = s3_client(endpoint)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.pin["size"]}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buf) -> int:
        from botocore.exceptions import ClientError

        n = min(len(buf), self.pin["size"] - self.pos)
        if n <= 0:
            return 0
        cond = {"VersionId": self.pin["version"]} if self.pin.get("version") else {"IfMatch": self.pin["etag"]}
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key, Range=f"bytes={self.pos}-{self.pos + n - 1}", **cond)["Body"].read()
        except ClientError as e:
            if _s3_error(e) in ("PreconditionFailed", "NoSuchKey", "NoSuchVersion", "404"):
                raise InputChanged(f"{self.uri}: changed since the run planned it ({_s3_error(e)}: not the version pinned, "
                                   f"ETag {self.pin['etag']})") from e
            raise
        buf[: len(body)] = body
        self.pos += len(body)
        return len(body)


class _PinnedLocal(io.FileIO):
    """A local file opened by path and checked against its pin by its handle: at open and at `check()`."""

    def __init__(self, path: str, pin: dict):
        super().__init__(path, "rb")
        self.path, self.pin = path, pin
        self.check()

    def check(self) -> None:
        now = _local_identity(os.fstat(self.fileno()))
        if any(now[k] != self.pin[k] for k in ("size", "mtime_ns", "inode") if k in self.pin):
            raise InputChanged(f"{self.path}: changed since the run planned it ({describe_change(self.pin, now)})")


def open_pinned(uri: str, pin: dict):
    """A binary file of exactly the version `pin` describes (see `file_identity`); InputChanged where the file
    is no longer that version, raised at open or at any read (S3), or by `check_pinned` after reading (local)."""
    if is_s3(uri):
        return io.BufferedReader(_PinnedS3(uri, pin), buffer_size=1 << 20)
    if is_uri(uri):
        fs, path = filesystem(uri)
        now = file_identity(uri)
        if (now["size"], now["mtime_ns"]) != (pin["size"], pin["mtime_ns"]):
            raise InputChanged(f"{uri}: changed since the run planned it ({describe_change(pin, now)})")
        return fs.open_input_file(path)
    try:
        return _PinnedLocal(uri, pin)
    except FileNotFoundError as e:
        raise InputChanged(f"{uri}: changed since the run planned it (it is gone)") from e


def check_pinned(handle) -> None:
    """After reading from `open_pinned`'s handle: raise InputChanged where a local file was rewritten in place
    meanwhile (S3 reads check every request themselves)."""
    if isinstance(handle, _PinnedLocal):
        handle.check()
