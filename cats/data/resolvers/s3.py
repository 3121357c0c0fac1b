"""`s3://bucket/key` through boto3: ranged GetObject, HeadObject for stat, PutObject for write.

The endpoint is `CATS_S3_ENDPOINT` when set (MinIO, moto, Ceph), else AWS's; credentials and region
come from the usual AWS environment and config files. Pre-signed URLs are plain https:// reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, ReadTimeoutError

from cats.data.resolvers import Info, Resolver
from cats.data.resolvers.http import retries, timeout
from cats.data.uri import split_key
from cats.errors import DataError, DataForbidden, DataNotFound, DataTimeout, DataUnavailable

_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_FORBIDDEN = {"403", "AccessDenied", "Forbidden"}


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


@contextmanager
def _mapped(uri: str) -> Iterator[None]:
    """Turn botocore's errors into the typed data errors, each naming the URI."""
    try:
        yield
    except ClientError as e:
        code = _code(e)
        if code in _NOT_FOUND:
            raise DataNotFound(f"{uri} not found ({code})", uri) from None
        if code in _FORBIDDEN:
            raise DataForbidden(f"{uri}: access denied ({code})", uri) from None
        raise DataError(f"{uri}: S3 error {code}: {e}", uri) from None
    except (ConnectTimeoutError, ReadTimeoutError):
        raise DataTimeout(f"{uri} did not answer within {timeout():g} s (CATS_DATA_TIMEOUT)", uri) from None
    except BotoCoreError as e:
        raise DataUnavailable(f"{uri}: {e}", uri) from None


class S3Resolver(Resolver):
    def __init__(self) -> None:
        endpoint = os.environ.get("CATS_S3_ENDPOINT") or None
        config = Config(connect_timeout=timeout(), read_timeout=timeout(),
                        retries={"max_attempts": retries() + 1, "mode": "standard"},
                        s3={"addressing_style": "path"} if endpoint else None)
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)

    def stat(self, uri: str) -> Info:
        bucket, key = split_key(uri, "bucket/key")
        with _mapped(uri):
            head = self.client.head_object(Bucket=bucket, Key=key)
        return Info(uri, int(head["ContentLength"]), head.get("ETag"))

    def _fetch(self, uri: str, offset: int, n: int) -> tuple[bytes, str | None]:
        bucket, key = split_key(uri, "bucket/key")
        with _mapped(uri):
            try:
                response = self.client.get_object(Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + n - 1}")
            except ClientError as e:
                if _code(e) == "InvalidRange":  # offset at or past the end; the version is asked for if needed
                    return b"", None
                raise
            body = response["Body"]
            try:
                data = body.read(n)
            finally:
                body.close()
        if offset and "ContentRange" not in response:
            raise DataError(f"{uri}: the endpoint ignored the byte range", uri)
        return data, response.get("ETag")

    def write(self, uri: str, data: bytes) -> Info:
        bucket, key = split_key(uri, "bucket/key")
        with _mapped(uri):
            response = self.client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        return Info(uri, len(data), response.get("ETag"))
