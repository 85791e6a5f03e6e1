"""Index records of concurrent C-STOREs committed together (group commit)."""

from __future__ import annotations

import threading

from dicom_gateway.index import Index


class GroupCommit:
    """Index records of concurrent C-STOREs share one transaction (leader/follower).

    The first association to arrive commits its record and every record queued while it
    works, in one transaction; the others wait for that commit and then answer. One
    association alone commits its own record at once: no extra thread, no added wait. On
    SQLite this also keeps the listener's threads from queueing on the write lock (whose
    busy handler sleeps for milliseconds). Each caller still gets Success only after its
    own record is committed.
    """

    def __init__(self, index: Index, max_batch: int = 64):
        self.index = index
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[list] = []  # [record, done, new, error]
        self._leading = False

    def record(self, **record) -> bool:
        item = [record, False, False, None]
        with self._cond:
            self._pending.append(item)
            while not item[1]:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                self._cond.release()
                try:
                    self._commit(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    for it in batch:  # interrupted: no waiter may wait for ever
                        if not it[1]:
                            it[3], it[1] = RuntimeError("index commit interrupted"), True
                    self._cond.notify_all()
        if item[3] is not None:
            raise item[3]
        return item[2]

    def _commit(self, batch: list[list]) -> None:
        try:
            results = self.index.record_instances([it[0] for it in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which answers 0x0110
            if len(batch) > 1:  # one bad record must not fail the others: one by one
                for it in batch:
                    self._commit([it])
            else:
                batch[0][3], batch[0][1] = exc, True
            return
        for it, new in zip(batch, results, strict=True):
            it[2], it[1] = new, True
