"""Group commit: store operations run in one thread, batched into one transaction.

Operations submitted while a batch is being committed wait and form the next
batch, so under load many SENDs and ACKs share one fsync. Each operation runs
in its own savepoint: a refused or failed one is undone alone, the others
commit. Results are handed back to the event loop after the commit, in
submission order, so answers never claim durability that has not happened
(relay.md "SEND": OK only after the message is durably stored).
"""

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from onionproto import Error, ErrorCode

from .mailbox import Refused
from .store import QueueStore

log = logging.getLogger(__name__)

Operation = Callable[[], Any]
Callback = Callable[[Any], None]

INTERNAL_DETAIL = "the node failed; nothing was applied"


def internal_error() -> Error:
    return Error(ErrorCode.INTERNAL.value, INTERNAL_DETAIL)


class Committer:
    def __init__(self, store: QueueStore, *, max_batch: int = 2048):
        self.store = store
        self.max_batch = max_batch
        self._pending: list[tuple[Operation, Callback]] = []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="node-store")
        self._drainer: asyncio.Task | None = None
        self._closed = False

    def submit(self, operation: Operation, callback: Callback) -> None:
        """Run ``operation`` in the store thread; call ``callback(result)`` in the loop after commit.

        ``result`` is what the operation returned, or an ``Error``: the
        ``Refused`` code, or INTERNAL for any other exception.
        """
        if self._closed:
            callback(internal_error())
            return
        self._pending.append((operation, callback))
        if self._drainer is None:
            # Started as a task, not run now: operations submitted later in this loop turn join the batch.
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def call(self, operation: Operation) -> Any:
        """Like ``submit``, awaiting the result."""
        future = asyncio.get_running_loop().create_future()
        self.submit(operation, lambda result: future.done() or future.set_result(result))
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                results = await loop.run_in_executor(self._executor, self.run_batch, [op for op, _ in batch])
                for (_, callback), result in zip(batch, results):
                    try:
                        callback(result)
                    except Exception as exc:  # a bug in a callback must not stop the other answers
                        log.error("answering a store operation failed: %s", type(exc).__name__)
        finally:
            self._drainer = None

    def run_batch(self, operations: list[Operation]) -> list[Any]:
        """Run operations in one transaction (store thread). Also usable directly in tests."""
        results: list[Any] = []
        try:
            with self.store.transaction():
                for operation in operations:
                    results.append(self._run_one(operation))
        except Exception as exc:
            log.error("store transaction failed, %d command(s) not applied: %s", len(operations), type(exc).__name__)
            return [internal_error()] * len(operations)
        return results

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
        """Run ``operation`` in the store thread outside any transaction (e.g. a WAL checkpoint)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, operation)

    async def close(self) -> None:
        """Finish the pending batches, then close the store."""
        self._closed = True
        while self._drainer is not None:
            await asyncio.shield(self._drainer)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.store.close)
        self._executor.shutdown(wait=True)
