"""Group commit: store operations run in one thread, batched into one transaction.

Operations submitted while a batch is being committed wait and form the next
batch, so under load many SENDs and ACKs share one fsync. A refused or failed
operation is undone alone, the others commit: operations first run without
savepoints (a refused one has written nothing, see ``Mailbox``; the store's
change counter checks it), and if one fails after writing, or unexpectedly,
the transaction is rolled back and the batch runs again with one savepoint
per operation. Results are handed back to the event loop after the commit, in
submission order, so answers never claim durability that has not happened
(relay.md "SEND": OK only after the message is durably stored).

Small batches (``inline_batch`` operations or fewer: light load) run in the
event loop itself, between two turns, as long as commits are fast (a slow
disk sends every batch to the thread): handing them to the store thread costs
more CPU than it saves (a thread round trip per batch, and GIL hand-offs around
every SQLite and libsodium call), and their answers come sooner. Large batches
(heavy load) run in the store thread, where their signature checks and SQLite
work, which release the GIL, overlap with the loop's I/O. One job runs at a
time either way. The store thread is the committer's own (no executor): one
queue put to wake it, one ``call_soon_threadsafe`` to hand the results back,
about 40 % less CPU per round trip than ``run_in_executor``.

Sessions stop reading commands while ``max_waiting`` operations wait for the
store (``room``), so a burst of commands from many sessions is held as
unread socket data, not as Python objects (which would leave the process's
memory fragmented and its RSS high after the burst).
"""

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from onionpost.proto import Error, ErrorCode

from .mailbox import Refused
from .store import QueueStore, StoreError

log = logging.getLogger(__name__)

Operation = Callable[[], Any]
Callback = Callable[[Any], None]
Done = Callable[[Any, BaseException | None], None]

INTERNAL_DETAIL = "the node failed; nothing was applied"

INLINE_BATCH = 32
"""Batches of at most this many operations run in the event loop (see the module docstring)."""
INLINE_MAX_SECONDS = 0.002
"""...but only while the last batch committed this fast: on a disk whose fsync takes milliseconds
every batch goes to the store thread, so the loop never waits for the disk."""


def internal_error() -> Error:
    return Error(ErrorCode.INTERNAL.value, INTERNAL_DETAIL)


class _Undo(Exception):
    """An operation failed after writing, or unexpectedly: run the batch again with savepoints."""


class Committer:
    def __init__(self, store: QueueStore, *, max_batch: int = 256, max_waiting: int = 256, inline_batch: int = INLINE_BATCH):
        self.store = store
        self.max_batch = max_batch
        self.max_waiting = max_waiting
        self.inline_batch = inline_batch
        self._last_batch_seconds = 0.0
        self._pending: list[tuple[Operation, Callback]] = []
        self._alone: deque[tuple[Operation, Done]] = deque()
        """``run_alone`` jobs not started yet; they go before the next batch."""
        self._running: list[tuple[Operation, Callback]] | None = None
        """The batch being run (empty for a ``run_alone`` job); None when the store is idle."""
        self._scheduled = False
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._room: asyncio.Future | None = None
        self._idle: asyncio.Future | None = None
        self._closing: asyncio.Future | None = None
        """Set by the first ``close()``; from then on nothing new is accepted."""

    @property
    def _closed(self) -> bool:
        return self._closing is not None

    @property
    def closing(self) -> bool:
        return self._closed

    @property
    def full(self) -> bool:
        """True while ``max_waiting`` or more operations wait for the store thread."""
        return len(self._pending) >= self.max_waiting

    async def room(self) -> None:
        """Wait until the committer is no longer ``full``."""
        while self.full and not self._closed:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)

    def _make_room(self) -> None:
        if self._room is not None and (not self.full or self._closed):
            self._room.set_result(None)
            self._room = None

    def submit(self, operation: Operation, callback: Callback) -> None:
        """Run ``operation`` on the store; call ``callback(result)`` in the loop after commit.

        ``result`` is what the operation returned, or an ``Error``: the
        ``Refused`` code, or INTERNAL for any other exception.
        """
        if self._closed:
            callback(internal_error())
            return
        self._pending.append((operation, callback))
        self._schedule()

    async def call(self, operation: Operation) -> Any:
        """Like ``submit``, awaiting the result."""
        future = asyncio.get_running_loop().create_future()
        self.submit(operation, lambda result: future.done() or future.set_result(result))
        return await future

    def _schedule(self) -> None:
        if self._running is None and not self._scheduled:
            # At the end of this loop turn, not now: operations submitted later in the turn join the batch.
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_next)

    def _start_next(self) -> None:
        """Start the next job if the store is idle: a ``run_alone`` job, else a batch."""
        self._scheduled = False
        if self._running is not None:
            return
        if self._alone:
            operation, done = self._alone.popleft()
            self._running = []
            self._in_thread(operation, partial(self._alone_finished, done))
        elif self._pending:
            self._running = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._make_room()
            operations = [op for op, _ in self._running]
            if len(operations) <= self.inline_batch and self._last_batch_seconds < INLINE_MAX_SECONDS:
                asyncio.get_running_loop().call_soon(self._finished, self.run_batch(operations), None)
            else:
                self._in_thread(partial(self.run_batch, operations), self._finished)
        elif self._idle is not None:
            self._idle.set_result(None)
            self._idle = None

    def _finished(self, results: Any, error: BaseException | None) -> None:
        batch, self._running = self._running, None
        if error is not None:
            results = [internal_error()] * len(batch)
        for (_, callback), result in zip(batch, results):
            try:
                callback(result)
            except Exception as exc:  # a bug in a callback must not stop the other answers
                log.error("answering a store operation failed: %s", type(exc).__name__)
        self._start_next()

    def _alone_finished(self, done: Done, result: Any, error: BaseException | None) -> None:
        self._running = None
        done(result, error)
        self._start_next()

    def run_batch(self, operations: list[Operation]) -> list[Any]:
        """Run operations in one transaction (store thread, or the loop for a small batch). Also usable directly in tests."""
        started = time.perf_counter()
        try:
            return self._run_batch(operations)
        finally:
            self._last_batch_seconds = time.perf_counter() - started

    def _run_batch(self, operations: list[Operation]) -> list[Any]:
        try:
            return self._transaction(operations, self._run_plain)
        except _Undo:
            pass
        except Exception as exc:
            return self._failed(operations, exc)
        try:
            return self._transaction(operations, self._run_one)
        except Exception as exc:
            return self._failed(operations, exc)

    def _transaction(self, operations: list[Operation], run: Callable[[Operation], Any]) -> list[Any]:
        with self.store.transaction():
            return [run(operation) for operation in operations]

    @staticmethod
    def _failed(operations: list[Operation], exc: Exception) -> list[Error]:
        reason = str(exc) if isinstance(exc, StoreError) else type(exc).__name__  # a StoreError names no client data
        log.error("store transaction failed, %d command(s) not applied: %s", len(operations), reason)
        return [internal_error()] * len(operations)

    def _run_plain(self, operation: Operation) -> Any:
        """Run without a savepoint; raise ``_Undo`` if that would leave a failed operation's writes."""
        before = self.store.changes()
        try:
            return operation()
        except Refused as exc:
            if self.store.changes() != before:
                raise _Undo from None
            return Error(exc.code.value, exc.detail)
        except Exception:
            raise _Undo from None

    def _run_one(self, operation: Operation) -> Any:
        try:
            with self.store.savepoint():
                return operation()
        except Refused as exc:
            return Error(exc.code.value, exc.detail)
        except Exception as exc:
            log.error("store operation failed, not applied: %s", type(exc).__name__)
            log.debug("store operation failure", exc_info=True)
            return internal_error()

    async def run_alone(self, operation: Operation) -> Any:
        """Run ``operation`` in the store thread, outside any transaction and between batches (e.g. a WAL checkpoint)."""
        future = asyncio.get_running_loop().create_future()

        def done(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self._alone.append((operation, done))
        self._schedule()
        return await future

    async def close(self) -> None:
        """Finish the pending batches, then close the store and stop the store thread.

        Safe to call more than once, also concurrently: every call returns
        once the store is closed.
        """
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        self._make_room()
        while self._running is not None or self._pending or self._alone:
            if self._idle is None:
                self._idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._idle)
        await self.run_alone(self.store.close)
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()

    # --- the store thread -----------------------------------------------------------------

    def _in_thread(self, function: Callable[[], Any], done: Done) -> None:
        """Run ``function`` in the store thread, then ``done(result, exception)`` in the loop."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._serve, name="node-store", daemon=True)
            self._thread.start()
        self._jobs.put((function, done))

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            function, done = job
            try:
                result, error = function(), None
            except BaseException as exc:
                result, error = None, exc
            try:
                self._loop.call_soon_threadsafe(done, result, error)
            except RuntimeError:  # the loop is closed: nobody waits for this any more
                return
