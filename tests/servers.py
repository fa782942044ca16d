"""The real API under a real uvicorn server in a background thread (real HTTP), for tests."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn


class ServerThread:
    """A uvicorn server in a background thread with its own event loop."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.port = port
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="on",
            # longer than any pause between a test's requests: no reuse of a closing connection
            timeout_keep_alive=300,
            timeout_graceful_shutdown=5,
            proxy_headers=False,  # as `dealflow api` runs it: the app decides whom to trust
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{port}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            if time.monotonic() > deadline:
                raise RuntimeError("the API server did not start within 60 s")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
