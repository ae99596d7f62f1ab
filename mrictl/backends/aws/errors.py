"""AWS failures as the backend contract's error: one line naming the operation and AWS's code.

Never the message AWS sent: it may quote a key or an item, and keys carry scan ids only, but
items and requests can carry more. One place, so every client of the aws backend agrees.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from botocore.exceptions import BotoCoreError, ClientError

from mrictl.backends.base import BackendError


def error_code(error: ClientError) -> str:
    """AWS's error code ("NoSuchKey", "ConditionalCheckFailedException"), or ""."""
    return str(error.response.get("Error", {}).get("Code", ""))


def aws_error(what: str, error: BaseException, service: str = "AWS") -> BackendError:
    """`what` failed, with AWS's code (a ClientError) or the exception's type (botocore's);
    `service` "S3" for the object store, "AWS" for the rest (the two texts troubleshooting.md
    quotes)."""
    detail = error_code(error) if isinstance(error, ClientError) else type(error).__name__
    if service == "S3":
        return BackendError(f"{what}: S3 error ({detail})")
    return BackendError(f"{what}: AWS error ({detail})")


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """AWS failures (after botocore's own retries) inside the block as `aws_error`."""
    try:
        yield
    except (ClientError, BotoCoreError) as error:
        raise aws_error(what, error) from None
