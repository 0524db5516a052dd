"""A TLS-terminating TCP proxy, so client TLS settings can be tested against Tansu (no native TLS).

The proxy runs its own event loop in a daemon thread: it must outlive any one test's loop.
The broker behind it must advertise the proxy's port, or clients would follow the metadata
straight to the plaintext listener.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
from pathlib import Path
from types import TracebackType


def make_self_signed_cert(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throwaway certificate for `ip` (subjectAltName=IP) and its key; the cert is its own CA."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={ip}",
            "-addext",
            f"subjectAltName=IP:{ip}",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


class TlsProxy:
    """Accept TLS on `listen_port`, forward plaintext to `upstream_port` (all on `host`)."""

    def __init__(
        self, listen_port: int, upstream_port: int, cert: Path, key: Path, host: str = "127.0.0.1"
    ) -> None:
        self.host, self.listen_port, self.upstream_port = host, listen_port, upstream_port
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    def start(self) -> TlsProxy:
        self._thread.start()
        serve = asyncio.start_server(self._handle, self.host, self.listen_port, ssl=self._context)
        self._server = asyncio.run_coroutine_threadsafe(serve, self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
