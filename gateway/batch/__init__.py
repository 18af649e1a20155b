"""Batch jobs: OpenAI files and batches, Anthropic message batches, and the durable worker that runs them.

    files.py    the file store (bytes on disk, rows in ``files``), owned by virtual keys
    lines.py    validation of a job's requests at submission (pure): each bad line named
    store.py    the job and item tables: submission, claims with leases, state changes
    upstream.py the providers' batch APIs (OpenAI files + batches, Anthropic message batches)
    results.py  items → result lines in each API's own format
    worker.py   the worker loop: dedup, cache, route, then provider batch API / fan-out; expiry,
                cancellation, crash recovery
    uploads.py  the worker's upstream batches: submitted, polled, results recorded and accounted
    finals.py   the end of a job: duplicates resolved, output and error files written
    cli.py      ``thriftgate batch ...`` through a running gateway

Item states::

    queued ──claim──► claimed ──► sending (fan-out: recorded before the send) ──► succeeded | failed
                         │    └──► submitted (in an upstream batch, recorded before it is created) ──► …
                         └─(lease expired: nothing was sent)──► queued
    duplicate (another item of the job has the same request: shares its answer at the end)
    cancelled | expired (never sent, or the upstream batch ended without it)

Errors: ``BatchNotCancellable`` (409) beside the gateway's own (``gateway.errors``).
"""

from gateway.errors import InvalidRequest


class BatchNotCancellable(InvalidRequest):
    """The job already ended: cancel has nothing to do."""

    status_code = 409
    code = "batch_not_cancellable"
