"""The store's writer thread: every write, and so every fsync, of the running daemon happens here.

A commit with ``synchronous=FULL`` waits for fsync: milliseconds on an SD card, tens of
milliseconds under load. On the event loop that time would stall everything else (the dispenser
link's timers and ACKs, the MQTT link). So the daemon hands each write job (one engine step's
transaction, a batch of delivered-marks) to ONE thread that owns the store's connection:

- jobs run one at a time, in the order they were submitted (a single-thread executor), so step
  N+1's commit always follows step N's;
- a job that fails (the store refused a write) poisons the writer: every later job fails with the
  same error without touching the store, so nothing that follows a lost commit is ever committed
  (a step queued behind a lost one carries state that assumed it; the daemon fails safe on the
  first failure anyway). Only a job submitted as `independent` (it assumes no earlier job: the
  MQTT session counter, delivered-marks) still runs, as it would have without the writer;
- the caller decides what waits for the commit: the daemon resolves a step's future only after
  the commit (and acknowledges a dispenser frame or an MQTT command only then).

Before the thread first runs (start-up before the event loop, tools, tests without a loop),
`call` runs the job right here, on the thread that owns the store.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable
from typing import TypeVar

from agent.store.db import Store
from agent.store.errors import StoreError

log = logging.getLogger(__name__)

T = TypeVar("T")

THREAD_NAME = "store-writer"


class WriterPoisonedError(StoreError):
    """An earlier write job failed: nothing after it is written."""


class StoreWriter:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._failure: BaseException | None = None

    @property
    def started(self) -> bool:
        """The writer thread owns the store (from the first `submit` on)."""
        return self._executor is not None

    def submit(
        self, job: Callable[[Store], T], *, independent: bool = False
    ) -> concurrent.futures.Future[T]:
        """Run `job(store)` on the writer thread, after every job submitted before it (and not
        after a failed one unless `independent`)."""
        if self._executor is None:
            if self.store.owned_here and self.store.in_transaction:
                raise StoreError("the writer cannot take over a store inside a transaction")
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=THREAD_NAME
            )
            # waited for: until the thread owns the store, this thread would still read and
            # write through the very connection the thread is about to use
            self._executor.submit(self.store.claim_for_this_thread).result()
        return self._executor.submit(self._run, job, independent)

    def call(self, job: Callable[[Store], T], *, independent: bool = False) -> T:
        """Run `job(store)` and wait for it: on the writer thread behind every job submitted
        before it, or here while the writer thread has not started. Blocks the caller (use it
        off the loop, or for rare writes)."""
        if self._executor is None:
            return self._run(job, independent)
        return self.submit(job, independent=independent).result()

    def close(self) -> None:
        """Let every submitted job finish (they are commits the daemon promised), then stop the
        thread and give the store back to the calling thread."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        executor.shutdown(wait=True)
        if self.store.is_open:
            self.store.claim_for_this_thread()

    def _run(self, job: Callable[[Store], T], independent: bool) -> T:
        if self._failure is not None and not independent:
            raise WriterPoisonedError(f"an earlier write failed: {self._failure!r}")
        try:
            return job(self.store)
        except BaseException as exc:  # recorded so that nothing after it commits; re-raised
            if self._failure is None:
                self._failure = exc
            raise
