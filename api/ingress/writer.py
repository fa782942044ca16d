"""Group commit: concurrent webhook requests share one transaction (one fsync) per flush.

Each request awaits its own future, so nobody is answered 202 before its row is committed. On
PostgreSQL a few flushes run at once (``PG_FLUSHES``): while one transaction waits for its
commit, the next batch is already being inserted. SQLite has one writer, so one flush at a time.
Only requests that were in flight together can commit out of arrival order, and those carry no
order from their sender anyway: an event sent after another's 202 always lands after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sqlalchemy.exc import DataError, IntegrityError

from store.db import Database
from store.events import NewEvent, accept_many

log = logging.getLogger("dealflow.ingress")
MAX_BATCH = 512
PG_FLUSHES = 4


class EventWriter:
    def __init__(self, db: Database, on_commit: Callable[[], None] | None = None) -> None:
        self.db = db
        self.on_commit = on_commit
        self._pending: list[tuple[NewEvent, asyncio.Future[tuple[str, bool]]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._slots = asyncio.Semaphore(PG_FLUSHES if db.dialect == "postgresql" else 1)
        self._flushing: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-writer")

    async def accept(self, event: NewEvent) -> tuple[str, bool]:
        """Commit the event; return (event id, duplicate). Raises if it could not be stored."""
        if self._closed:
            raise RuntimeError("the event writer is closed")
        future: asyncio.Future[tuple[str, bool]] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._slots.acquire()  # the batch grows while every slot is busy
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                task = asyncio.create_task(self._flush_in_slot(batch))
                self._flushing.add(task)
                task.add_done_callback(self._flushing.discard)
            if self._closed:
                await asyncio.gather(*self._flushing)
                return

    async def _flush_in_slot(
        self, batch: list[tuple[NewEvent, asyncio.Future[tuple[str, bool]]]]
    ) -> None:
        try:
            await self._flush(batch)
        finally:
            self._slots.release()

    async def _flush(self, batch: list[tuple[NewEvent, asyncio.Future[tuple[str, bool]]]]) -> None:
        events = [ev for ev, _ in batch]
        try:
            result = await asyncio.to_thread(accept_many, self.db, events)
        except (DataError, IntegrityError) as exc:
            if len(batch) == 1:
                event, future = batch[0]
                log.error("could not store event %s: %s", event.id, exc.orig)
                if not future.done():
                    future.set_exception(exc)
                return
            # One bad row must not fail the requests it shares a transaction with.
            for item in batch:
                await self._flush([item])
            return
        except Exception as exc:  # the database is down: every request in the batch gets a 503
            log.error("could not store %d events: %s", len(batch), exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for ev, future in batch:
            if not future.done():
                future.set_result(result[ev.id])
        if self.on_commit is not None:
            self.on_commit()

    async def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self._task is not None:
            await self._task
