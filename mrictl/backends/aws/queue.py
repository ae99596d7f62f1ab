"""The aws job queue: job records in DynamoDB, fenced by conditional writes; work delivered by SQS
and AWS Batch.

**Records.** One item per job in the job table (infra_templates/jobs.yaml), keyed by `job_id`,
with the local backend's fields: `stage`, `state`, `payload` and `result` (JSON text), `error`,
`attempts`, `max_attempts`, `parent_job_id` (absent rather than null: it keys the `by-parent`
index), `worker_id`, `lease_token`, `lease_expires_at`, `created_at` (fixed-width seconds text,
so the `by-parent` and `by-state` indexes sort by it, and `created_seconds`, the same number),
`updated_at`, the job's `logs` and `claims` (lists, appended with `list_append`; logs keep their
last MAX_LOG_LINES lines), `batch_job_id` for a job run by AWS Batch and, once the job is
final, `expires_at` (the table's TTL: records are kept RETENTION_DAYS). Every change of state
is a conditional write on the item: a claim requires `queued` (or `running` under an expired
lease, with its token), and heartbeat, complete and fail require the caller's lease token,
`running` and a live lease; a write whose condition fails reads the item back and raises
JobCancelledError or LeaseLostError.

**Idempotency keys** are items of the same table, `job_id = idempotency#<key>`, pointing at
their job; the pointer and the job are written in one transaction, each on condition that it
does not exist yet, so the same key twice, even at the same instant, is one job. A pointer
whose job expired (TTL) is replaced by a new job.

**Delivery.** A queued job has a message `{"job_id": ...}` on its stage's queue (preprocess;
every later stage shares the recon queue, the `stage` message attribute telling them apart).
`claim(stage)` long-polls the queue and conditionally claims the record a message names; the
record, not the message, decides: messages of finished or unknown jobs are deleted, messages
of a job under a live lease are hidden until the lease ends, messages of other stages go back
to the queue at once. The claimed copy's receipt handle stays in this process, keyed by its
lease token: a heartbeat also extends the message's visibility (to the lease, rounded down, so
that the message is back by the time the lease expires and the next claim can take over), and
completion, failure and a cancel noticed delete it; a retryable failure makes it visible again
(or sends a new one). Raw-upload events (S3 -> the preprocess queue) become the upload's one
preprocess job, under the same idempotency key the CLI uses; an event is given
UPLOAD_GRACE_SECONDS for the CLI's own enqueue (which carries the user's method) to land first.
`claim_job(id)` is the push path (a Batch container): no message is involved, and what the job
left on a queue is deleted when next received.

**Batch.** Where this process knows the Batch job queue and a stage's job definition (a
workstation from the provision outputs, the preprocess service from its variables), a job of
that stage (recon, train) gets no message: `enqueue` submits a Batch job that runs it
(`batch.py`) and records its id (`batch_job_id`), under a short lock on the record
(`dispatching_until`) so that two processes queueing the same job submit once. A retryable
failure sends nothing (the container runs the job again itself, or Batch retries a host
failure); `cancel` also stops the Batch job; `retry` of a failed or cancelled job submits a new
one, and so does `retry` of a job Batch will not run (queued while its Batch job ended).
`waiting_reason` and `batch_logs` say what Batch says: why a queued job is not running yet, and
what its containers wrote to CloudWatch Logs.

**Large volumes.** A recon job whose volume Batch should spread (`BatchService.plan_for`) gets
two Batch jobs: an array job over its slices and the assembler that depends on it. The record
keeps both (`batch_array_job_id` beside `batch_job_id`, the assembler's, which is the one that
claims the job); the plan goes into the payload (`shards`) before either is submitted. Cancel
stops both; retry, and a dispatch again of a job Batch will not run, submit both again; while
the array runs, `waiting_reason` says how many slices are done.

The queues' own dead-letter queues (`maxReceiveCount` in infra_templates/storage.yaml, 5 by
default) are a backstop above `max_attempts`: a job's attempts are counted on its record, and
each receive of its message (a claim, a failure given back, a worker of another stage handing
it back on the shared recon queue) counts towards the queue's limit. A message that reached a
dead-letter queue leaves its job queued without delivery: `mrictl recon retry` of a failed job,
or enqueueing the same idempotency key again, sends a new message.

Indexes are eventually consistent in DynamoDB (`children`, `list(state=...)` may miss a job
written a moment ago); `get` reads strongly.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import BotoCoreError, ClientError

from mrictl import keys
from mrictl.backends.aws.batch import BatchService
from mrictl.backends.aws.errors import aws_error, error_code, translated
from mrictl.backends.aws.records import (
    FINAL_STATES,
    JOB_FIELDS,
    ConditionFailed,
    Update,
    created_text,
    job_from_item,
    list_entry,
    number_value,
    plain_item,
    text_value,
)
from mrictl.backends.aws.resources import PREPROCESS_STAGE, AwsResources
from mrictl.backends.base import (
    DEFAULT_MAX_ATTEMPTS,
    BackendError,
    Claim,
    ConflictError,
    Job,
    JobCancelledError,
    JobState,
    LeaseLostError,
    LogEntry,
    NotFoundError,
    new_job_id,
)

IDEMPOTENCY_PREFIX = "idempotency#"
RETENTION_DAYS = 90
MAX_LOG_LINES = 500
MAX_LOG_CHARS = 1000  # an item holds at most 400 KB, logs and all
RECEIVE_WAIT_SECONDS = 1
RECEIVE_BATCH = 10
DECIDE_SECONDS = 30  # a received message stays hidden while this process decides about it
MAX_VISIBILITY_SECONDS = 43200  # SQS's limit
UPLOAD_GRACE_SECONDS = 30.0
DISPATCH_LOCK_SECONDS = 60.0  # one process submits a job's Batch job; a crashed one's lock ends
ARRAY_FIELD = "batch_array_job_id"  # a split recon job's array job, beside its assembler's id
STAGE_ATTRIBUTE = "stage"


def upload_job_payload(scan_id: str) -> dict[str, Any]:
    """The payload of an upload's preprocess job queued by its S3 event: what `mrictl upload`
    queues when no method is named (mrictl.pipeline.requests: enqueue_preprocess with
    recon_request(None, None); the default method is raki.method_names.DEFAULT_METHOD). Built
    here because a backend imports neither the pipeline nor the science (the layer contracts);
    tests/mrictl/backends/test_aws_delivery.py checks the two agree."""
    return {
        "scan_id": scan_id,
        "next_stage": "recon",
        "method": "auto",
        "options": {},
        "default_method": True,
    }



class AwsJobQueue:
    """Job records in DynamoDB, delivered through SQS; see the module docstring."""

    def __init__(
        self,
        dynamodb_client: Any,
        sqs_client: Any,
        resources: AwsResources,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        clock: Callable[[], float] = time.time,
        *,
        receive_wait_seconds: int = RECEIVE_WAIT_SECONDS,
        upload_grace_seconds: float = UPLOAD_GRACE_SECONDS,
        retention_days: float = RETENTION_DAYS,
        batch: BatchService | None = None,
    ) -> None:
        self.dynamodb = dynamodb_client
        self.batch = batch
        self.sqs = sqs_client
        self.resources = resources
        self.table = resources.job_table
        self.max_attempts = max_attempts
        self.clock = clock
        self.receive_wait_seconds = receive_wait_seconds
        self.upload_grace_seconds = upload_grace_seconds
        self.retention_seconds = retention_days * 86400.0
        # lease token -> (queue URL, receipt handle) of the message a claim in this process got
        self._deliveries: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    # Enqueue -----------------------------------------------------------------------------------

    def enqueue(
        self,
        stage: str,
        payload: Mapping[str, Any],
        *,
        parent_id: str | None = None,
        idempotency_key: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        by_batch = self._runs_on_batch(stage)
        queue_url = None if by_batch else self.resources.require_queue(stage)
        job_id, created, state = self._create(
            stage, payload, parent_id, idempotency_key, max_attempts
        )
        # A job found under its key that is still queued is delivered again: its message may
        # have been lost (a failed send, a dead-letter queue; claims deduplicate); its Batch
        # job is submitted if it has none (a submission that failed half-way).
        if created or state == JobState.QUEUED.value:
            if queue_url is None:
                self._dispatch(job_id, stage)
            else:
                self._send(queue_url, job_id, stage)
        return job_id

    def _runs_on_batch(self, stage: str) -> bool:
        return self.batch is not None and self.batch.runs(stage)

    def _dispatch(self, job_id: str, stage: str) -> None:
        """Submit the Batch job of a queued job that has none, once: a short lock on the record
        keeps two processes queueing the same job (a preprocess delivered twice) from both
        submitting; a submission that fails releases it, so the next delivery submits."""
        assert self.batch is not None
        now = self.clock()
        lock = Update().set("dispatching_until", now + DISPATCH_LOCK_SECONDS)
        until = lock.name("dispatching_until")
        condition = (
            f"{lock.name('state')} = {lock.value(JobState.QUEUED.value)}"
            f" AND attribute_not_exists({lock.name('batch_job_id')})"
            f" AND (attribute_not_exists({until}) OR {until} < {lock.value(now)})"
        )
        try:
            locked = self._write(job_id, lock, condition, returning="ALL_NEW")
        except ConditionFailed:
            return  # it has its Batch job, one is being submitted, or it is no longer queued
        array_id = None
        try:
            plan = self._planned(job_id, stage, locked)
            if plan is None:
                batch_job_id = self.batch.submit(stage, job_id)
            else:
                array_id, batch_job_id = self.batch.submit_array(stage, job_id, plan)
        except BackendError:
            release = Update().remove("dispatching_until")
            with contextlib.suppress(ConditionFailed, BackendError):
                self._write(job_id, release, f"attribute_exists({release.name('state')})")
            raise
        record = Update().set("batch_job_id", batch_job_id).remove("dispatching_until")
        if array_id is None:
            record.remove(ARRAY_FIELD)
        else:
            record.set(ARRAY_FIELD, array_id)
        self._write(job_id, record, f"attribute_exists({record.name('state')})")
        if plan is None:
            self.append_log(job_id, f"submitted to AWS Batch as {batch_job_id}")
        else:
            self.append_log(
                job_id,
                f"submitted to AWS Batch as array job {array_id} ({plan.count} shards of at "
                f"most {plan.per_shard} of {plan.slices} slices) and its assembler "
                f"{batch_job_id}",
            )

    def _planned(self, job_id: str, stage: str, locked: Mapping[str, Any]) -> keys.ShardPlan | None:
        """The job's array plan (None: one Batch job), written into its payload while this
        process holds the dispatch lock, before any container can read it."""
        assert self.batch is not None
        payload = json.loads(locked["payload"])
        plan = self.batch.plan_for(stage, payload)
        wanted = None if plan is None else plan.as_payload()
        if payload.get(keys.SHARDS_PAYLOAD) != wanted:
            payload.pop(keys.SHARDS_PAYLOAD, None)
            if wanted is not None:
                payload[keys.SHARDS_PAYLOAD] = wanted
            update = Update().set("payload", json.dumps(payload, sort_keys=True))
            until = locked["dispatching_until"]
            held = f"{update.name('dispatching_until')} = {update.value(until)}"
            try:
                self._write(job_id, update, held)
            except ConditionFailed:
                raise BackendError(f"{job_id}: its dispatch lock ran out: try again") from None
        return plan

    def _create(
        self,
        stage: str,
        payload: Mapping[str, Any],
        parent_id: str | None,
        idempotency_key: str | None,
        max_attempts: int | None,
    ) -> tuple[str, bool, str]:
        """Write a queued record (and its key's pointer); (job id, created, state)."""
        now = self.clock()
        job_id = new_job_id()
        item: dict[str, Any] = {
            "job_id": text_value(job_id),
            "stage": text_value(stage),
            "state": text_value(JobState.QUEUED.value),
            "payload": text_value(json.dumps(dict(payload), sort_keys=True)),
            "result": text_value("{}"),
            "attempts": number_value(0),
            "max_attempts": number_value(max_attempts or self.max_attempts),
            "created_at": text_value(created_text(now)),
            "created_seconds": number_value(now),
            "updated_at": number_value(now),
            "logs": {"L": []},
            "claims": {"L": []},
        }
        if parent_id is not None:
            item["parent_job_id"] = text_value(parent_id)
        new_job = {
            "Put": {
                "TableName": self.table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(job_id)",
            }
        }
        if idempotency_key is None:
            with translated(f"queueing a {stage} job"):
                self.dynamodb.put_item(**new_job["Put"])
            return job_id, True, JobState.QUEUED.value
        item["idempotency_key"] = text_value(idempotency_key)
        pointer_id = IDEMPOTENCY_PREFIX + idempotency_key
        for _ in range(3):
            existing = self._item(pointer_id, ("job_id", "target_job_id"))
            if existing is not None:
                target = str(existing["target_job_id"])
                found = self._item(target, ("job_id", "state"))
                if found is not None:
                    return target, False, str(found["state"])
                # The job's retention ran out: the key may make a new one.
                condition = "target_job_id = :old"
                values = {":old": text_value(target)}
            else:
                condition = "attribute_not_exists(job_id)"
                values = {}
            pointer = {
                "Put": {
                    "TableName": self.table,
                    "Item": {"job_id": text_value(pointer_id), "target_job_id": text_value(job_id)},
                    "ConditionExpression": condition,
                    **({"ExpressionAttributeValues": values} if values else {}),
                }
            }
            try:
                self.dynamodb.transact_write_items(TransactItems=[pointer, new_job])
                return job_id, True, JobState.QUEUED.value
            except ClientError as error:
                if error_code(error) != "TransactionCanceledException":
                    raise aws_error(f"queueing a {stage} job", error) from None
                # Another writer of the same key won: read its pointer again.
            except BotoCoreError as error:
                raise aws_error(f"queueing a {stage} job", error) from None
        raise BackendError(f"queueing a {stage} job: its idempotency key keeps changing")

    # Claims ------------------------------------------------------------------------------------

    def claim(self, stage: str, worker_id: str, lease_seconds: float) -> Job | None:
        queue_url = self.resources.require_queue(stage)
        with translated(f"receiving {stage} work"):
            response = self.sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=RECEIVE_BATCH,
                WaitTimeSeconds=self.receive_wait_seconds,
                VisibilityTimeout=DECIDE_SECONDS,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["SentTimestamp"],
            )
        messages = response.get("Messages", [])
        undecided = list(messages)
        try:
            deliveries = []
            for message in messages:
                job_id = self._job_of_message(stage, queue_url, message)
                if job_id is None:
                    undecided.remove(message)
                else:
                    deliveries.append((job_id, message))
            items = self._items([job_id for job_id, _ in deliveries])
            # The oldest job first, whatever order the messages came in.
            deliveries.sort(key=lambda pair: self._age_key(items.get(pair[0]), pair[0]))
            claimed: Job | None = None
            for job_id, message in deliveries:
                if claimed is None:
                    claimed = self._deliver(
                        stage, queue_url, message, items.get(job_id), worker_id, lease_seconds
                    )
                elif job_id == claimed.job_id:  # a duplicate of the message in hand
                    self._delete(queue_url, message["ReceiptHandle"])
                else:
                    self._show(queue_url, message, 0)
                undecided.remove(message)
            return claimed
        finally:
            for message in undecided:  # an error on the way: give the rest back now
                self._show(queue_url, message, 0)

    @staticmethod
    def _age_key(item: Mapping[str, Any] | None, job_id: str) -> tuple[str, str]:
        return ("" if item is None else str(item["created_at"]), job_id)

    def _job_of_message(self, stage: str, queue_url: str, message: Mapping[str, Any]) -> str | None:
        """The job a message delivers; None when the message was dealt with here (deleted: an
        S3 test event, a malformed body; given back: another stage's, an upload event in its
        grace period)."""
        try:
            body = json.loads(message.get("Body", ""))
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("Event") == "s3:TestEvent":
            self._delete(queue_url, message["ReceiptHandle"])
            return None
        attributes = message.get("MessageAttributes", {})
        sent_for = attributes.get(STAGE_ATTRIBUTE, {}).get("StringValue")
        if "Records" in body:  # an S3 event: raw uploads become preprocess jobs
            sent_for = PREPROCESS_STAGE
        if sent_for is not None and sent_for != stage:
            self._show(queue_url, message, 0)
            return None
        if "Records" in body:
            return self._job_of_upload_event(body, queue_url, message)
        if keys.is_job_id(body.get("job_id")):
            return str(body["job_id"])
        self._delete(queue_url, message["ReceiptHandle"])
        return None

    def _deliver(
        self,
        stage: str,
        queue_url: str,
        message: Mapping[str, Any],
        item: dict[str, Any] | None,
        worker_id: str,
        lease_seconds: float,
    ) -> Job | None:
        """Claim the job of one message; or delete, hide or give back the message."""
        for _ in range(2):
            if item is None or item["state"] in FINAL_STATES:
                self._delete(queue_url, message["ReceiptHandle"])
                return None
            if item["stage"] != stage:
                self._show(queue_url, message, 0)
                return None
            now = self.clock()
            if item["state"] == JobState.RUNNING.value and item["lease_expires_at"] >= now:
                # Back when the lease ends: then it is either finished or free to take over.
                self._show(queue_url, message, math.ceil(item["lease_expires_at"] - now))
                return None
            try:
                job = self._claim_item(item, worker_id, lease_seconds, now)
            except ConditionFailed as lost:
                item = lost.item  # another claim won; decide again on what it left
                continue
            if job is None:  # dead-lettered: its lease expired on the last attempt
                self._delete(queue_url, message["ReceiptHandle"])
                return None
            self._hold(job, queue_url, message["ReceiptHandle"], lease_seconds)
            return job
        return None

    def _job_of_upload_event(
        self, body: Mapping[str, Any], queue_url: str, message: Mapping[str, Any]
    ) -> str | None:
        """The upload's one preprocess job, queued now if the CLI has not (after the grace
        period); None when the message was deleted or put back for later."""
        scan_ids = []
        for record in body.get("Records") or []:
            try:
                name = str(record["eventName"])
                bucket = record["s3"]["bucket"]["name"]
                key = unquote_plus(record["s3"]["object"]["key"])
            except (KeyError, TypeError):
                continue
            scan_id = keys.scan_id_of_upload(key)
            if name.startswith("ObjectCreated") and scan_id and bucket == self.resources.raw_bucket:
                scan_ids.append(scan_id)
        if not scan_ids:
            self._delete(queue_url, message["ReceiptHandle"])
            return None
        # S3 puts one record in each message; any further one gets a message of its own.
        for scan_id in scan_ids[1:]:
            self.enqueue(
                PREPROCESS_STAGE,
                upload_job_payload(scan_id),
                idempotency_key=keys.idempotency_of_upload(scan_id),
            )
        scan_id = scan_ids[0]
        key = keys.idempotency_of_upload(scan_id)
        if self._item(IDEMPOTENCY_PREFIX + key, ("job_id",)) is None:
            sent = int(message.get("Attributes", {}).get("SentTimestamp", 0)) / 1000.0
            wait = self.upload_grace_seconds - (self.clock() - sent)
            if wait > 0:
                self._show(queue_url, message, math.ceil(wait))
                return None
        job_id, _, _ = self._create(PREPROCESS_STAGE, upload_job_payload(scan_id), None, key, None)
        return job_id

    def claim_job(self, job_id: str, worker_id: str, lease_seconds: float) -> Job:
        item = self._item(job_id, JOB_FIELDS)
        if item is None:
            raise NotFoundError(f"{job_id}: no such job")
        now = self.clock()
        if item["state"] == JobState.RUNNING.value and item["lease_expires_at"] >= now:
            raise ConflictError(f"{job_id} is running on {item['worker_id']} (its lease is live)")
        if item["state"] in FINAL_STATES:
            raise self._not_claimable(item)
        try:
            job = self._claim_item(item, worker_id, lease_seconds, now)
        except ConditionFailed as lost:
            if lost.item is None:
                raise NotFoundError(f"{job_id}: no such job") from None
            if lost.item["state"] == JobState.RUNNING.value:
                raise ConflictError(f"{job_id} is running on {lost.item['worker_id']}") from None
            raise self._not_claimable(lost.item) from None
        if job is None:
            dead = self._item(job_id, JOB_FIELDS) or item
            raise self._not_claimable(dead)
        return job

    @staticmethod
    def _not_claimable(item: Mapping[str, Any]) -> ConflictError:
        detail = f": {item['error']}" if item.get("error") else ""
        return ConflictError(f"{item['job_id']} already {item['state']}{detail}")

    def _claim_item(
        self, item: Mapping[str, Any], worker_id: str, lease_seconds: float, now: float
    ) -> Job | None:
        """Lease a queued job, or take over (or dead-letter: None) one whose lease expired.

        ConditionFailed if the record changed since `item` was read."""
        job_id, attempts = item["job_id"], int(item["attempts"])
        update = Update()
        condition = f"{update.name('state')} = {update.value(item['state'])} AND "
        condition += f"{update.name('attempts')} = {update.value(attempts)}"
        takeover = item["state"] == JobState.RUNNING.value
        reason = None
        if takeover:
            condition += (
                f" AND {update.name('lease_token')} = {update.value(item['lease_token'])}"
                f" AND {update.name('lease_expires_at')} < {update.value(now)}"
            )
            reason = (
                f"worker {item.get('worker_id')} stopped renewing its lease (attempt {attempts})"
            )
            if attempts >= int(item["max_attempts"]):
                error = f"{reason}; gave up after {attempts} attempts"
                update.set("state", JobState.FAILED.value).set("error", error)
                update.set("updated_at", now).set("expires_at", int(now + self.retention_seconds))
                update.remove("lease_token", "lease_expires_at")
                self._write(job_id, update, condition)
                self.append_log(job_id, f"lease expired: {error}")
                return None
        elif item["state"] != JobState.QUEUED.value:
            raise ConditionFailed(dict(item))
        token = uuid.uuid4().hex
        update.set("state", JobState.RUNNING.value).set("attempts", attempts + 1)
        update.set("worker_id", worker_id).set("lease_token", token)
        update.set("lease_expires_at", now + lease_seconds).set("updated_at", now)
        update.append(
            "claims", list_entry(attempt=attempts + 1, worker_id=worker_id, claimed_at=now)
        )
        if reason is not None:
            update.set("error", reason)
        new = self._write(job_id, update, condition, returning="UPDATED_NEW")
        if reason is not None:
            self.append_log(job_id, f"lease expired: {reason}")
        claimed = {**item, **new}
        claimed.pop("claims", None)
        return job_from_item(claimed, with_lease=True)

    # The fence ---------------------------------------------------------------------------------

    def _fenced(self, job: Job, update: Update, now: float) -> None:
        """Write `update` only while `job`'s lease is current; else JobCancelledError (the
        message of a cancelled job is deleted) or LeaseLostError."""
        if job.lease_token is not None:
            condition = (
                f"{update.name('lease_token')} = {update.value(job.lease_token)}"
                f" AND {update.name('state')} = {update.value(JobState.RUNNING.value)}"
                f" AND {update.name('lease_expires_at')} >= {update.value(now)}"
            )
            try:
                self._write(job.job_id, update, condition)
                return
            except ConditionFailed as lost:
                item = lost.item
        else:
            item = self._item(job.job_id, JOB_FIELDS)
        if item is None:
            raise NotFoundError(f"{job.job_id}: no such job")
        delivery = self._forget(job.lease_token)
        if item["state"] == JobState.CANCELLED.value:
            if delivery is not None:
                self._delete(*delivery)
            raise JobCancelledError(f"{job.job_id} was cancelled")
        raise LeaseLostError(f"{job.job_id}: the lease of attempt {job.attempts} was lost")

    def heartbeat(self, job: Job, lease_seconds: float) -> Job:
        now = self.clock()
        expires = now + lease_seconds
        self._fenced(job, Update().set("lease_expires_at", expires).set("updated_at", now), now)
        with self._lock:
            delivery = self._deliveries.get(str(job.lease_token))
        if delivery is not None and not self._change_visibility(
            *delivery, self._visibility_of(lease_seconds)
        ):
            self._forget(job.lease_token)
        return replace(job, state=JobState.RUNNING, lease_expires_at=expires, updated_at=now)

    def complete(self, job: Job, result: Mapping[str, Any]) -> None:
        now = self.clock()
        update = Update().set("state", JobState.SUCCEEDED.value)
        update.set("result", json.dumps(dict(result))).set("updated_at", now)
        update.set("expires_at", int(now + self.retention_seconds))
        update.remove("error", "lease_token", "lease_expires_at")
        self._fenced(job, update, now)
        delivery = self._forget(job.lease_token)
        if delivery is not None:
            self._delete(*delivery)

    def fail(self, job: Job, reason: str, *, retryable: bool = True) -> JobState:
        now = self.clock()
        exhausted = job.attempts >= job.max_attempts  # the record's, while the token is ours
        state = JobState.QUEUED if retryable and not exhausted else JobState.FAILED
        error = reason
        if retryable and exhausted:
            error = f"{reason} (gave up after {job.attempts} attempts)"
        update = Update().set("state", state.value).set("error", error).set("updated_at", now)
        if state is JobState.FAILED:
            update.set("expires_at", int(now + self.retention_seconds))
        update.remove("lease_token", "lease_expires_at")
        self._fenced(job, update, now)
        delivery = self._forget(job.lease_token)
        if state is JobState.FAILED:
            if delivery is not None:
                self._delete(*delivery)
        elif delivery is None or not self._change_visibility(*delivery, 0):
            # Pushed (no message in hand) or the message was taken back: send a new one where
            # this process knows the queue. A job run by Batch gets none: the container that
            # held it runs it again (mrictl.worker.run_job), or Batch retries it after a host
            # failure, or `recon retry` submits it again.
            queue_url = self.resources.queue_for(job.stage)
            if queue_url is not None and job.batch_job_id is None:
                self._send(queue_url, job.job_id, job.stage)
        return state

    # Cancel and retry --------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        item = self._item(job_id, (*JOB_FIELDS, ARRAY_FIELD))
        if item is None:
            raise NotFoundError(f"{job_id}: no such job")
        before = item["state"]
        if before in FINAL_STATES:
            raise ConflictError(f"{job_id} already {before}: nothing to cancel")
        now = self.clock()
        update = Update().set("state", JobState.CANCELLED.value)
        update.set("error", f"cancelled while {before}").set("updated_at", now)
        update.set("expires_at", int(now + self.retention_seconds))
        update.remove("lease_token", "lease_expires_at")
        state = update.name("state")
        condition = (
            f"{state} IN ({update.value(JobState.QUEUED.value)}, "
            f"{update.value(JobState.RUNNING.value)})"
        )
        try:
            self._write(job_id, update, condition)
        except ConditionFailed as lost:
            now_state = lost.item["state"] if lost.item else "gone"
            raise ConflictError(f"{job_id} already {now_state}: nothing to cancel") from None
        self.append_log(job_id, f"cancelled while {before}")
        for batch_job_id in (item.get(ARRAY_FIELD), item.get("batch_job_id")):
            if not batch_job_id or self.batch is None:
                continue
            # The record is the fence already: a container that still starts finds the job
            # cancelled; stopping the Batch jobs saves their instances (an array job's
            # children with it).
            try:
                self.batch.terminate(batch_job_id)
                self.append_log(job_id, f"stopped AWS Batch job {batch_job_id}")
            except BackendError as error:
                self.append_log(job_id, f"AWS Batch job {batch_job_id} not stopped: {error}")
        return self.get(job_id)

    def retry(self, job_id: str) -> Job:
        item = self._item(job_id, (*JOB_FIELDS, "dispatching_until"))
        if item is None:
            raise NotFoundError(f"{job_id}: no such job")
        before = item["state"]
        retryable = (JobState.FAILED.value, JobState.CANCELLED.value)
        by_batch = self._runs_on_batch(item["stage"])
        if before not in retryable:
            if by_batch and self._stalled(item):
                return self._dispatch_again(item)
            raise ConflictError(f"{job_id} is {before}: only failed or cancelled jobs retry")
        queue_url = None if by_batch else self.resources.require_queue(item["stage"])
        update = Update().set("state", JobState.QUEUED.value).set("attempts", 0)
        update.set("updated_at", self.clock()).remove("error", "worker_id", "expires_at")
        update.remove("batch_job_id", "dispatching_until", ARRAY_FIELD)
        state = update.name("state")
        condition = f"{state} IN ({update.value(retryable[0])}, {update.value(retryable[1])})"
        try:
            self._write(job_id, update, condition)
        except ConditionFailed as lost:
            now_state = lost.item["state"] if lost.item else "gone"
            raise ConflictError(
                f"{job_id} is {now_state}: only failed or cancelled jobs retry"
            ) from None
        self.append_log(job_id, f"queued again after {before}")
        if queue_url is None:
            self._dispatch(job_id, item["stage"])
        else:
            self._send(queue_url, job_id, item["stage"])
        return self.get(job_id)

    def _stalled(self, item: Mapping[str, Any]) -> bool:
        """A job that Batch will not run: queued (or running under an expired lease) while its
        Batch job ended or is gone (a container that could not start, one stopped by a timeout
        after handing the job back), or with no Batch job and no submission under way."""
        now = self.clock()
        waiting = item["state"] == JobState.QUEUED.value or (
            item["state"] == JobState.RUNNING.value and item["lease_expires_at"] < now
        )
        if not waiting or self.batch is None:
            return False
        if item.get("batch_job_id"):
            return self.batch.is_over(item["batch_job_id"])
        return item["state"] == JobState.QUEUED.value and (item.get("dispatching_until") or 0) < now

    def _dispatch_again(self, item: Mapping[str, Any]) -> Job:
        """Submit a new Batch job for a stalled job, its record otherwise unchanged (its
        attempts go on; the container takes over an expired lease)."""
        job_id = item["job_id"]
        update = Update().set("state", JobState.QUEUED.value).set("updated_at", self.clock())
        update.remove("batch_job_id", "dispatching_until", "lease_token", "lease_expires_at")
        update.remove(ARRAY_FIELD)
        condition = f"{update.name('state')} = {update.value(item['state'])}"
        if item.get("batch_job_id"):
            condition += (
                f" AND {update.name('batch_job_id')} = {update.value(item['batch_job_id'])}"
            )
        if item["state"] == JobState.RUNNING.value:
            condition += f" AND {update.name('lease_token')} = {update.value(item['lease_token'])}"
        try:
            self._write(job_id, update, condition)
        except ConditionFailed as lost:
            now_state = lost.item["state"] if lost.item else "gone"
            raise ConflictError(
                f"{job_id} changed meanwhile (now {now_state}): try again"
            ) from None
        old = item.get("batch_job_id")
        said = f"its AWS Batch job {old} ran nothing" if old else "it had no AWS Batch job"
        self.append_log(job_id, f"{said}: submitting another")
        self._dispatch(job_id, item["stage"])
        return self.get(job_id)

    # What Batch says ---------------------------------------------------------------------------

    def waiting_reason(self, job: Job) -> str | None:
        if job.state is not JobState.QUEUED or not self._runs_on_batch(job.stage):
            return None
        try:
            if job.batch_job_id is None:
                item = self._item(job.job_id, ("job_id", "state", "dispatching_until"))
                if item and (item.get("dispatching_until") or 0) >= self.clock():
                    return "being submitted to AWS Batch"
                return (
                    "not submitted to AWS Batch (the submission failed): `mrictl recon retry` "
                    "submits it"
                )
            plan = keys.ShardPlan.from_payload(job.payload)
            if plan is not None:
                item = self._item(job.job_id, ("job_id", "state", ARRAY_FIELD))
                array_id = (item or {}).get(ARRAY_FIELD)
                if array_id:
                    return self.batch.array_waiting_reason(array_id, job.batch_job_id, plan)
            return self.batch.waiting_reason(job.batch_job_id)
        except BackendError as error:
            return f"AWS Batch could not be asked why: {error}"

    def batch_logs(self, job: Job) -> list[LogEntry]:
        if self.batch is None or job.batch_job_id is None:
            return []
        try:
            entries = []
            plan = keys.ShardPlan.from_payload(job.payload)
            if plan is not None:  # the array children's lines first, child by child
                item = self._item(job.job_id, ("job_id", "state", ARRAY_FIELD))
                array_id = (item or {}).get(ARRAY_FIELD)
                for index in range(plan.count if array_id else 0):
                    child = f"{array_id}:{index}"  # how Batch names an array job's children
                    entries += self.batch.log_entries(job.job_id, job.stage, child)
            return entries + self.batch.log_entries(job.job_id, job.stage, job.batch_job_id)
        except BackendError as error:
            message = f"the container logs could not be read: {error}"
            return [LogEntry(job.job_id, self.clock(), job.attempts, job.batch_job_id, message)]

    # Reading -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        item = self._item(job_id, JOB_FIELDS)
        if item is None:
            raise NotFoundError(f"{job_id}: no such job")
        return job_from_item(item)

    def children(self, job_id: str) -> list[Job]:
        items = self._query(
            "by-parent", "parent_job_id", job_id, stage=None, what=f"children of {job_id}"
        )
        return [job_from_item(item) for item in items]

    def list(self, *, state: JobState | str | None = None, stage: str | None = None) -> list[Job]:
        if state is not None:
            value = JobState(state).value
            items = self._query("by-state", "state", value, stage=stage, what=f"{value} jobs")
        else:
            items = self._scan(stage)
        return [job_from_item(item) for item in items]

    def append_log(self, job_id: str, message: str, *, worker_id: str | None = None) -> None:
        item = self._item(job_id, ("job_id", "state", "attempts"))
        if item is None:
            raise NotFoundError(f"{job_id}: no such job")
        entry = list_entry(
            at=self.clock(),
            attempt=int(item.get("attempts", 0)),
            worker_id=worker_id,
            message=message[:MAX_LOG_CHARS],
        )
        update = Update().append("logs", entry)
        try:
            new = self._write(
                job_id, update, f"attribute_exists({update.name('state')})", returning="UPDATED_NEW"
            )
        except ConditionFailed:
            raise NotFoundError(f"{job_id}: no such job") from None
        excess = len(new.get("logs", [])) - MAX_LOG_LINES
        if excess > 0:
            trim = Update()
            logs = trim.name("logs")
            trim.removes.extend(f"{logs}[{index}]" for index in range(excess))
            # Only the list we saw: a concurrent writer's trim would cut twice.
            size = f"size({logs}) = {trim.value(MAX_LOG_LINES + excess)}"
            with contextlib.suppress(ConditionFailed):
                self._write(job_id, trim, size)

    def logs(self, job_id: str) -> list[LogEntry]:
        item = self._item(job_id, ("job_id", "state", "logs"))
        if item is None:
            raise NotFoundError(f"{job_id}: no such job")
        return [
            LogEntry(
                job_id,
                float(line["at"]),
                int(line["attempt"]),
                line.get("worker_id"),
                line["message"],
            )
            for line in item.get("logs") or []
        ]

    def claims(self, job_id: str | None = None) -> list[Claim]:
        if job_id is not None:
            item = self._item(job_id, ("job_id", "claims"))
            items = [item] if item is not None else []
        else:
            items = self._scan(None, projection=("job_id", "state", "claims"))
        found = [
            Claim(
                item["job_id"],
                int(entry["attempt"]),
                entry["worker_id"],
                float(entry["claimed_at"]),
            )
            for item in items
            for entry in item.get("claims") or []
        ]
        return sorted(found, key=lambda claim: claim.claimed_at)

    # DynamoDB ----------------------------------------------------------------------------------

    @staticmethod
    def _projection(fields: tuple[str, ...]) -> tuple[str, dict[str, str]]:
        names = {f"#{name}": name for name in fields}
        return ", ".join(names), names

    def _item(self, job_id: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
        projection, names = self._projection(fields)
        with translated(f"reading {job_id}"):
            response = self.dynamodb.get_item(
                TableName=self.table,
                Key={"job_id": text_value(job_id)},
                ConsistentRead=True,
                ProjectionExpression=projection,
                ExpressionAttributeNames=names,
            )
        item = response.get("Item")
        if item is None:
            return None
        plain = plain_item(item)
        if "state" in fields and "state" not in plain:
            return None  # an idempotency pointer, not a job
        return plain

    def _items(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Several job records in one strongly consistent read; absent ones are left out."""
        wanted = sorted(set(job_ids))
        found: dict[str, dict[str, Any]] = {}
        projection, names = self._projection(JOB_FIELDS)
        while wanted:
            request = {
                self.table: {
                    "Keys": [{"job_id": text_value(job_id)} for job_id in wanted[:100]],
                    "ConsistentRead": True,
                    "ProjectionExpression": projection,
                    "ExpressionAttributeNames": names,
                }
            }
            wanted = wanted[100:]
            for _ in range(8):
                with translated("reading jobs"):
                    response = self.dynamodb.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table, []):
                    plain = plain_item(item)
                    if "state" in plain:
                        found[plain["job_id"]] = plain
                request = response.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(0.05)
            if request:
                raise BackendError("reading jobs: DynamoDB kept keys unprocessed")
        return found

    def _write(
        self, job_id: str, update: Update, condition: str, *, returning: str = "NONE"
    ) -> dict[str, Any]:
        """A conditional update; ConditionFailed carries the record as it was."""
        try:
            response = self.dynamodb.update_item(
                TableName=self.table,
                Key={"job_id": text_value(job_id)},
                UpdateExpression=update.expression(),
                ConditionExpression=f"attribute_exists(job_id) AND ({condition})",
                ExpressionAttributeNames=update.names,
                **({"ExpressionAttributeValues": update.values} if update.values else {}),
                ReturnValues=returning,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if error_code(error) == "ConditionalCheckFailedException":
                item = error.response.get("Item")
                raise ConditionFailed(plain_item(item) if item else None) from None
            raise aws_error(f"updating {job_id}", error) from None
        except BotoCoreError as error:
            raise aws_error(f"updating {job_id}", error) from None
        return plain_item(response.get("Attributes") or {})

    def _query(
        self, index: str, key: str, value: str, *, stage: str | None, what: str
    ) -> list[dict[str, Any]]:
        projection, names = self._projection(JOB_FIELDS)
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "IndexName": index,
            "KeyConditionExpression": f"#{key} = :key",
            "ProjectionExpression": projection,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":key": text_value(value)},
        }
        if stage is not None:
            arguments["FilterExpression"] = "#stage = :stage"
            arguments["ExpressionAttributeValues"][":stage"] = text_value(stage)
        items = []
        with translated(f"listing {what}"):
            for page in self.dynamodb.get_paginator("query").paginate(**arguments):
                items.extend(plain_item(item) for item in page.get("Items", []))
        return sorted(items, key=lambda item: (item["created_at"], item["job_id"]))

    def _scan(
        self, stage: str | None, *, projection: tuple[str, ...] = JOB_FIELDS
    ) -> list[dict[str, Any]]:
        expression, names = self._projection(tuple({*projection, "state", "stage"}))
        arguments: dict[str, Any] = {
            "TableName": self.table,
            "ProjectionExpression": expression,
            "ExpressionAttributeNames": names,
            # Idempotency pointers have no state: they are not jobs.
            "FilterExpression": "attribute_exists(#state)",
        }
        if stage is not None:
            arguments["FilterExpression"] += " AND #stage = :stage"
            arguments["ExpressionAttributeValues"] = {":stage": text_value(stage)}
        items = []
        with translated("listing jobs"):
            for page in self.dynamodb.get_paginator("scan").paginate(**arguments):
                items.extend(plain_item(item) for item in page.get("Items", []))
        return sorted(items, key=lambda item: (item.get("created_at", ""), item["job_id"]))

    # SQS ---------------------------------------------------------------------------------------

    def _send(self, queue_url: str, job_id: str, stage: str) -> None:
        with translated(f"sending {job_id} to its queue"):
            self.sqs.send_message(
                QueueUrl=queue_url,
                MessageBody=json.dumps({"job_id": job_id}),
                MessageAttributes={STAGE_ATTRIBUTE: {"DataType": "String", "StringValue": stage}},
            )

    @staticmethod
    def _visibility_of(lease_seconds: float) -> int:
        """A claimed job's message returns when its lease ends (rounded down: never after)."""
        return max(0, min(MAX_VISIBILITY_SECONDS, math.floor(lease_seconds)))

    def _hold(self, job: Job, queue_url: str, receipt: str, lease_seconds: float) -> None:
        with self._lock:
            self._deliveries[str(job.lease_token)] = (queue_url, receipt)
        if not self._change_visibility(queue_url, receipt, self._visibility_of(lease_seconds)):
            self._forget(job.lease_token)

    def _forget(self, token: str | None) -> tuple[str, str] | None:
        with self._lock:
            return self._deliveries.pop(str(token), None)

    def _show(self, queue_url: str, message: Mapping[str, Any], seconds: int) -> None:
        """Make a received message visible again after `seconds` (0: now)."""
        seconds = max(0, min(MAX_VISIBILITY_SECONDS, seconds))
        self._change_visibility(queue_url, message["ReceiptHandle"], seconds)

    def _change_visibility(self, queue_url: str, receipt: str, seconds: int) -> bool:
        """False when the handle no longer holds the message (received again elsewhere)."""
        try:
            self.sqs.change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds
            )
        except (ClientError, BotoCoreError):
            return False
        return True

    def _delete(self, queue_url: str, receipt: str) -> None:
        # Best effort: a message left behind is deleted when next received (its job is final).
        with contextlib.suppress(ClientError, BotoCoreError):
            self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=receipt)
