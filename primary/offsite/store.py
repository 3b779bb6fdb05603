"""The object store: ``BROADSHEET_BACKUP_URL=s3://bucket/prefix`` with the
endpoint, region and credentials boto3 reads itself (``AWS_ENDPOINT_URL_S3``
or ``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``, or a profile). Every object is sealed before it
is sent (crypto.py) and opened as it arrives."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping
from urllib.parse import urlparse

from broadsheet.config import ConfigError, Env

from . import crypto
from .objects import SUFFIX, BaseMark, ObjectName


class StoreError(Exception):
    """The store did not answer, or refused: the message says which object."""


@dataclass(frozen=True)
class Location:
    bucket: str
    prefix: str  # "" or ending in "/"

    @classmethod
    def parse(cls, url: str, what: str = "BROADSHEET_BACKUP_URL") -> "Location":
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(f"{what} must be s3://bucket/prefix, not {url!r}")
        prefix = parsed.path.strip("/")
        return cls(parsed.netloc, f"{prefix}/" if prefix else "")

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class Store:
    """One bucket and prefix, sealed with ``key``. Names handed in and out
    are relative to the prefix (what each object's seal is bound to, so
    that a whole prefix can be copied elsewhere and still restores)."""

    def __init__(self, url: str, key: bytes, environ: Mapping[str, str] | None = None, timeout: float = 10.0):
        import boto3
        from botocore.config import Config

        env = Env(environ)
        self.location = Location.parse(url)
        self.key = key
        endpoint = env.optional("AWS_ENDPOINT_URL_S3") or env.optional("AWS_ENDPOINT_URL")
        config = Config(
            connect_timeout=min(timeout, 3.0), read_timeout=timeout, retries={"max_attempts": 2, "mode": "standard"},
            # Self-hosted stores (and most S3-compatible ones) take path-style requests.
            s3={"addressing_style": "path" if endpoint else "auto"},
            request_checksum_calculation="when_required", response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=env.optional("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=env.optional("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=env.optional("AWS_SESSION_TOKEN"),
            profile_name=env.optional("AWS_PROFILE"),
            region_name=env.optional("AWS_REGION") or env.optional("AWS_DEFAULT_REGION") or "us-east-1",
        )
        self.client = session.client("s3", endpoint_url=endpoint, config=config)

    def _full(self, name: str) -> str:
        return self.location.prefix + name

    def _fail(self, doing: str, name: str, exc: Exception) -> StoreError:
        return StoreError(f"{doing} {self.location}{name}: {exc}")

    def put(self, name: str, plaintext: Iterable[bytes], small: bool = True) -> int:
        """Seal ``plaintext`` as object ``name`` and upload it; the bytes
        sent. Large objects go as a stream (multipart), never whole in memory."""
        from botocore.exceptions import BotoCoreError, ClientError

        sealed = crypto.seal(self.key, name, plaintext)
        try:
            if small:
                body = b"".join(sealed)
                self.client.put_object(Bucket=self.location.bucket, Key=self._full(name), Body=body)
                return len(body)
            return self._put_stream(name, sealed)
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._fail("uploading", name, exc) from None

    def _put_stream(self, name: str, sealed: Iterator[bytes]) -> int:
        from boto3.s3.transfer import TransferConfig

        read_fd, write_fd = os.pipe()
        sent = [0]
        failure: list[BaseException] = []

        def produce():
            try:
                with os.fdopen(write_fd, "wb") as out:
                    for piece in sealed:
                        out.write(piece)
                        sent[0] += len(piece)
            except BaseException as exc:  # the reader then sees the pipe end early
                failure.append(exc)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            with os.fdopen(read_fd, "rb") as source:
                self.client.upload_fileobj(
                    source, self.location.bucket, self._full(name),
                    Config=TransferConfig(multipart_chunksize=16 << 20, max_concurrency=2, use_threads=True),
                )
        finally:
            thread.join()
        if failure:
            # Whatever arrived is cut short: an object that fails to open.
            self.delete([name])
            raise failure[0]
        return sent[0]

    def get(self, name: str) -> Iterator[bytes]:
        """The plaintext of object ``name``, a chunk at a time (ObjectError
        if it does not open; StoreError if it cannot be read)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.client.get_object(Bucket=self.location.bucket, Key=self._full(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise crypto.ObjectError(f"{name}: missing from {self.location}") from None
            raise self._fail("reading", name, exc) from None
        except BotoCoreError as exc:
            raise self._fail("reading", name, exc) from None

        def pieces():
            try:
                yield from response["Body"].iter_chunks(1 << 20)
            except (BotoCoreError, ClientError, OSError) as exc:
                raise self._fail("reading", name, exc) from None

        return crypto.open_sealed(self.key, name, pieces())

    def get_bytes(self, name: str) -> bytes:
        return b"".join(self.get(name))

    def raw(self, name: str) -> bytes:
        """An object's bytes as stored (tests, the bench)."""
        return self.client.get_object(Bucket=self.location.bucket, Key=self._full(name))["Body"].read()

    def list(self) -> tuple[list[ObjectName], list[BaseMark], list[str]]:
        """Every object under the prefix: the stream's, epoch bases, and
        the names of anything else there."""
        from botocore.exceptions import BotoCoreError, ClientError

        found, bases, other = [], [], []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self.location.prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(self.location.prefix):]
                    if (parsed := ObjectName.parse(name, item.get("Size", 0))) is not None:
                        found.append(parsed)
                    elif (base := BaseMark.parse(name)) is not None:
                        bases.append(base)
                    elif name.endswith(SUFFIX):
                        other.append(name)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("listing", "", exc) from None
        return sorted(found), bases, other

    def delete(self, names: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for start in range(0, len(names), 1000):
            batch = names[start:start + 1000]
            try:
                self.client.delete_objects(
                    Bucket=self.location.bucket,
                    Delete={"Objects": [{"Key": self._full(n)} for n in batch], "Quiet": True},
                )
            except (BotoCoreError, ClientError) as exc:
                raise self._fail("deleting", batch[0], exc) from None

    def ensure_bucket(self) -> None:
        """Create the bucket if it is not there (tests, a self-hosted store)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.location.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.location.bucket)
