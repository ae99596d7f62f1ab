"""The results share's cache refreshed after a job's outputs land, so the hospital sees them.

A Storage Gateway file share lists what its cache knows; objects put in S3 by anyone but the
gateway (a recon job) appear only after RefreshCache. `CacheRefresher` asks for one job's folder
(`FolderList=["/<job_id>/"]`, recursive) and:

- coalesces: requests that arrive within `debounce_s` of the first go out as one RefreshCache
  naming all their folders, and each caller gets that call's outcome;
- keeps at most `in_flight` (2, the gateway's own limit per share) of its refreshes running; a
  third waits for a slot. Other processes' refreshes count against the gateway's limit too: its
  InvalidGatewayRequestException "too many" is retried with exponential backoff;
- waits: RefreshCache is asynchronous and has no describe call (its completion is only an
  EventBridge event carrying the NotificationId), so "waited on" here means that a refresh holds
  its slot, and its callers, for `settle_s` after the gateway accepted it: a bound on how long a
  refresh of one job's folder (tens of files) takes, not a proof that it finished. A refresh
  still running after that can make a later one meet "too many", which is retried.

Failures are BackendError; the caller (the recon stage) logs them and the job still succeeds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mrictl.backends.base import BackendError
from mrictl.config import outputs_path

IN_FLIGHT = 2  # RefreshCache operations the gateway runs at once per file share
DEBOUNCE_S = 2.0
SETTLE_S = 30.0
TRIES = 6
BACKOFF_S = 1.0
GATEWAY_RESULTS = "gateway_results"  # where `mrictl provision gateway --results` records it


def recorded_results_share(stack_prefix: str) -> str | None:
    """The results share's ARN from the stack prefix's settings file; None if none recorded."""
    path: Path = outputs_path(stack_prefix)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    record = document.get(GATEWAY_RESULTS) if isinstance(document, dict) else None
    arn = record.get("share_arn") if isinstance(record, dict) else None
    return arn if isinstance(arn, str) and arn else None


def _too_many(error: ClientError) -> bool:
    response = error.response
    code = response.get("Error", {}).get("Code", "")
    message = str(response.get("Error", {}).get("Message", "")).lower()
    return code == "InvalidGatewayRequestException" and "too many" in message


@dataclass
class _Batch:
    folders: set[str] = field(default_factory=set)
    done: threading.Event = field(default_factory=threading.Event)
    notification_id: str | None = None
    error: BackendError | None = None


class CacheRefresher:
    """RefreshCache of one file share, debounced, bounded in flight, waited on (module
    docstring)."""

    def __init__(
        self,
        client: Any,
        share_arn: str,
        *,
        debounce_s: float = DEBOUNCE_S,
        in_flight: int = IN_FLIGHT,
        settle_s: float = SETTLE_S,
        tries: int = TRIES,
        backoff_s: float = BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.share_arn = share_arn
        self.debounce_s = debounce_s
        self.settle_s = settle_s
        self.tries = tries
        self.backoff_s = backoff_s
        self._sleep = sleep
        self._slots = threading.BoundedSemaphore(in_flight)
        self._lock = threading.Lock()
        self._open: _Batch | None = None

    def refresh(self, folder: str) -> str:
        """Refresh `folder` (`/<job_id>/`) with whatever else arrives within the debounce
        window; returns the NotificationId once the refresh was waited on."""
        with self._lock:
            batch, leader = self._open, False
            if batch is None:
                batch, leader = _Batch(), True
                self._open = batch
            batch.folders.add(folder)
        if leader:
            self._sleep(self.debounce_s)
            with self._lock:
                self._open = None  # later requests start the next batch
            try:
                batch.notification_id = self._send(sorted(batch.folders))
            except BackendError as error:
                batch.error = error
            finally:
                batch.done.set()
        batch.done.wait()
        if batch.error is not None:
            raise batch.error
        assert batch.notification_id is not None
        return batch.notification_id

    def _send(self, folders: list[str]) -> str:
        with self._slots:
            for attempt in range(self.tries):
                try:
                    answer = self.client.refresh_cache(
                        FileShareARN=self.share_arn, FolderList=folders, Recursive=True
                    )
                    break
                except ClientError as error:
                    if not _too_many(error) or attempt == self.tries - 1:
                        code = error.response.get("Error", {}).get("Code", "error")
                        what = ", ".join(folders)
                        raise BackendError(f"RefreshCache of {what}: {code}") from None
                    self._sleep(self.backoff_s * 2**attempt)
                except BotoCoreError as error:
                    name = type(error).__name__
                    raise BackendError(f"RefreshCache failed ({name})") from None
            self._sleep(self.settle_s)  # the slot stays taken while the refresh runs
        return str(answer.get("NotificationId", ""))
