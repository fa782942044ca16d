"""Every metric a dealflow process exports is named ``dealflow_…`` (the contract): the client
library's default ``python_gc_*``, ``python_info`` and ``process_*`` series are replaced by
the process metrics under the ``dealflow_`` prefix (``dealflow_process_cpu_seconds_total``,
``dealflow_process_resident_memory_bytes``, …)."""

from __future__ import annotations

import threading

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    ProcessCollector,
)

_done = False
_lock = threading.Lock()


def use_dealflow_names() -> None:
    """Idempotent: the API and a worker may share one process (tests, ``make dev`` does not)."""
    global _done
    with _lock:
        if _done:
            return
        for collector in (GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR):
            try:
                REGISTRY.unregister(collector)
            except KeyError:
                pass
        ProcessCollector(namespace="dealflow")
        _done = True
