"""The versioned artifact store: what `training.retrain` pushes and what workers serve.

Layout under the store's root (a local folder, or any fsspec URL such as `s3://bucket/nextclick`):

    versions/<version>/     one immutable artifact per version (the `stream_app.inference.scoring` layout:
                            ONNX graphs, item map, popularity, config, metrics, manifest.json)
    current.json            the pointer: {"version", "action", "updated_at", "history"}
    canary.json             the canary, while one runs: {"version", "share", "updated_at"}

A version exists once its manifest.json does. `push` copies every other file first, reads each copy
back and checks its sha256 against the manifest, and writes the manifest last, in one atomic write:
a reader never sees a half-written version, and a push that dies midway leaves only files without a
manifest, which nothing lists and the next push or prune clears. A version whose manifest cannot be read
(damaged by hand or by a broken copy) is skipped: `versions()` (and so listing, `prune`) leaves it out, keeps
it in place and logs one line naming it (`scan()` returns it, for callers that count); promoting it, making it
the canary or rolling back to it is a `StoreError`. The pointer is replaced the same
way (write aside, then rename; one object write on object stores), so a worker reads the old pointer
or the new one, never a torn one. `history` is the stack of promoted versions, the newest last:
promote pushes onto it, rollback pops. One publisher at a time is assumed (no locking).

A canary is a second version that serves a deterministic share of sessions next to the current one,
so the two are compared on live traffic; its pointer is written the same atomic way, and removed when
it stops. It is never the current version: promotion of the canary ends the canary (so does a
rollback to its version), and sessions it served are replayed lazily through the new current version,
as after any promotion. Promoting another version or a rollback leaves it running; prune keeps it.

Local folders need no extra package; other URLs need the `fsspec` extra plus the filesystem's own
package (s3fs, gcsfs, adlfs). Workers serve a local path: a local store's version folder as it is,
a remote version copied first into a cache folder. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from stream_app.inference.artifact_format import MANIFEST, ArtifactError, verify_artifact
from stream_app.settings import Settings

logger = logging.getLogger(__name__)

VERSIONS = "versions"
POINTER = "current.json"
CANARY = "canary.json"


class StoreError(RuntimeError):
    """The store cannot do what was asked: unknown version, version already there, nothing to roll back to."""


class UnreadableVersion(StoreError):
    """A version whose manifest.json is there but cannot be read (not JSON, not an object)."""


@dataclass(frozen=True)
class Pointer:
    """Which version is current, how it got there, and the promotions before it (oldest first)."""

    version: str
    action: str  # "promote" or "rollback"
    updated_at: float  # Unix seconds of the pointer write: (version, updated_at) identifies one promotion
    history: tuple[str, ...] = field(default=())  # promoted versions, oldest first; the last is `version`

    @property
    def previous(self) -> str | None:
        """The version a rollback returns to."""
        return self.history[-2] if len(self.history) > 1 else None


@dataclass(frozen=True)
class Canary:
    """A version serving `share` of the sessions next to the current one."""

    version: str
    share: float  # strictly between 0 and 1
    updated_at: float  # Unix seconds of the canary write: (version, updated_at) identifies one canary


class _Files(Protocol):
    """The few file operations the store needs, on '/'-separated keys under its root."""

    def open(self, key: str) -> BinaryIO: ...

    def write_atomic(self, key: str, data: bytes) -> None: ...

    def put(self, local: Path, key: str) -> None: ...

    def get(self, key: str, local: Path) -> None: ...

    def exists(self, key: str) -> bool: ...

    def children(self, key: str) -> list[str]: ...

    def remove(self, key: str) -> None:
        """Remove a file, or a folder and everything under it; nothing there is fine."""


class _LocalFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, key: str) -> BinaryIO:
        return (self.root / key).open("rb")

    def write_atomic(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        with aside.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(aside, path)

    def put(self, local: Path, key: str) -> None:
        (self.root / key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, self.root / key)

    def get(self, key: str, local: Path) -> None:
        shutil.copyfile(self.root / key, local)

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def children(self, key: str) -> list[str]:
        folder = self.root / key
        return sorted(child.name for child in folder.iterdir()) if folder.is_dir() else []

    def remove(self, key: str) -> None:
        path = self.root / key
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


class _FsspecFiles:
    def __init__(self, url: str) -> None:
        try:
            from fsspec.core import url_to_fs
        except ImportError as error:
            raise StoreError(
                f"the artifact store {url} needs the fsspec extra: pip install 'nextclick[fsspec]'"
            ) from error
        try:
            self.fs, self.root = url_to_fs(url)
        except (ImportError, ValueError) as error:  # no such protocol, or its package is missing
            raise StoreError(f"cannot open the artifact store {url}: {error}") from error

    def _path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def open(self, key: str) -> BinaryIO:
        return self.fs.open(self._path(key), "rb")

    def _parent_made(self, key: str) -> str:
        """The path of `key`, its parent created where the filesystem has folders (local, memory)."""
        path = self._path(key)
        self.fs.makedirs(self.fs._parent(path), exist_ok=True)
        return path

    def write_atomic(self, key: str, data: bytes) -> None:
        aside = self._parent_made(f"{key}.{uuid.uuid4().hex}.partial")
        self.fs.pipe_file(aside, data)
        self.fs.mv(aside, self._path(key))

    def put(self, local: Path, key: str) -> None:
        self.fs.put_file(str(local), self._parent_made(key))

    def get(self, key: str, local: Path) -> None:
        self.fs.get_file(self._path(key), str(local))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def children(self, key: str) -> list[str]:
        try:
            return sorted(
                path.rstrip("/").rsplit("/", 1)[-1] for path in self.fs.ls(self._path(key), detail=False)
            )
        except FileNotFoundError:
            return []

    def remove(self, key: str) -> None:
        if self.fs.exists(self._path(key)):
            self.fs.rm(self._path(key), recursive=True)


class ArtifactStore:
    """Versions, the current pointer, and the operations on them (see the module docstring)."""

    def __init__(self, location: str | Path, cache_dir: Path, keep_versions: int) -> None:
        if keep_versions < 2:
            raise ValueError("keep at least 2 versions: the current one and the one a rollback returns to")
        self.location = str(location)
        self.is_local = isinstance(location, Path) or "://" not in self.location
        self._files: _Files = _LocalFiles(Path(location)) if self.is_local else _FsspecFiles(self.location)
        self.cache_dir = cache_dir
        self.keep_versions = keep_versions

    @classmethod
    def from_settings(cls, settings: Settings) -> ArtifactStore:
        return cls(
            settings.artifact_store_url or settings.artifact_dir,
            settings.artifact_cache_dir,
            settings.artifact_keep_versions,
        )

    # --- reading --------------------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Complete versions (manifest present and readable), oldest first (by the manifest's `created_at`);
        unreadable ones are left out, with one warning naming them."""
        complete, unreadable = self.scan()
        if unreadable:
            logger.warning("skipped %d unreadable version(s) in %s: %s", len(unreadable), self.location,
                           "; ".join(f"{version} ({why})" for version, why in unreadable.items()))
        return complete

    def scan(self) -> tuple[list[str], dict[str, str]]:
        """The complete versions, oldest first, and the unreadable ones ({version: why}); logs nothing."""
        created: dict[str, str] = {}
        unreadable: dict[str, str] = {}
        for version in self._files.children(VERSIONS):
            if not self._files.exists(_manifest_key(version)):
                continue  # what a push that died left
            try:
                created[version] = str(self._read_manifest(version).get("created_at", ""))
            except ValueError as error:
                unreadable[version] = f"manifest.json: {error}"
        return sorted(created, key=lambda v: (created[v], v)), unreadable

    def holds(self, version: str) -> bool:
        return self._files.exists(_manifest_key(version))

    def manifest(self, version: str) -> dict:
        """The version's manifest: StoreError when the store lacks it, UnreadableVersion when it is damaged."""
        try:
            return self._read_manifest(version)
        except FileNotFoundError:
            raise StoreError(f"no version {version!r} in the store {self.location}") from None
        except ValueError as error:
            raise UnreadableVersion(
                f"version {version!r} in the store {self.location} is unreadable: manifest.json: {error}"
            ) from None

    def _read_manifest(self, version: str) -> dict:
        """The parsed manifest; ValueError (JSONDecodeError, UnicodeDecodeError among them) when damaged."""
        with self._files.open(_manifest_key(version)) as file:
            manifest = json.load(file)
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
        return manifest

    def current(self) -> Pointer | None:
        """The pointer, or None before the first promotion (StoreError when it cannot be read)."""
        try:
            with self._files.open(POINTER) as file:
                document = json.load(file)
            return Pointer(**document | {"history": tuple(document.get("history", ()))})
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as error:
            raise StoreError(f"the pointer {POINTER} in {self.location} is unreadable: {error}") from None

    def canary(self) -> Canary | None:
        """The running canary, or None (StoreError when its pointer cannot be read)."""
        try:
            with self._files.open(CANARY) as file:
                return Canary(**json.load(file))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as error:
            raise StoreError(f"the canary pointer {CANARY} in {self.location} is unreadable: {error}") from None

    def local_copy(self, version: str) -> Path:
        """A local folder holding `version`, for the Scorer (which checks every sha256 on load).

        A local store's own folder; a remote version is copied into the cache folder (aside, then
        renamed) unless an intact copy is already there. Copies of versions the store no longer
        holds are removed from the cache.
        """
        manifest = self.manifest(version)  # raises StoreError for a version the store lacks or cannot read
        if self.is_local:
            return Path(self.location) / VERSIONS / version
        cached = self.cache_dir / version
        try:
            verify_artifact(cached)
            return cached
        except ArtifactError:
            pass
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        aside = self.cache_dir / f".{version}.{uuid.uuid4().hex}"
        aside.mkdir()
        try:
            for name in manifest.get("files", {}):
                self._files.get(f"{VERSIONS}/{version}/{name}", aside / name)
            self._files.get(_manifest_key(version), aside / MANIFEST)
            shutil.rmtree(cached, ignore_errors=True)
            aside.rename(cached)
        finally:
            shutil.rmtree(aside, ignore_errors=True)
        held = set(self.versions())
        for stale in self.cache_dir.iterdir():
            if stale.is_dir() and not stale.name.startswith(".") and stale.name not in held:
                shutil.rmtree(stale, ignore_errors=True)
        return cached

    # --- writing --------------------------------------------------------------------------------
    def push(self, directory: Path) -> str:
        """Publish the artifact in `directory` as a new version (not current yet); return the version.

        The local artifact is verified first; every file listed in its manifest is copied, read back
        and checked; the manifest comes last, and with it the version.
        """
        manifest = verify_artifact(directory)
        version = str(manifest["version"])
        if "/" in version or version.startswith("."):
            raise ArtifactError(f"{directory}: version {version!r} cannot name a folder")
        if self.holds(version):
            raise StoreError(
                f"version {version} is already in the store {self.location}; versions are immutable"
            )
        self._files.remove(f"{VERSIONS}/{version}")  # what a failed push of this version left
        for name, digest in manifest.get("files", {}).items():
            key = f"{VERSIONS}/{version}/{name}"
            self._files.put(directory / name, key)
            with self._files.open(key) as copy:
                if hashlib.file_digest(copy, "sha256").hexdigest() != digest:
                    raise StoreError(
                        f"the store's copy of {name} does not match its sha256; {version} not published"
                    )
        self._files.write_atomic(_manifest_key(version), (directory / MANIFEST).read_bytes())
        logger.info("pushed artifact %s to %s", version, self.location)
        return version

    def promote(self, version: str) -> Pointer:
        """Make `version` current (no quality gate here: see `stream_app.release.publish.gate_and_push`).

        Promotion of the canary ends the canary."""
        self.manifest(version)  # StoreError for a version the store lacks or cannot read
        pointer = self.current()
        history = pointer.history if pointer else ()
        return self._point(version, "promote", history + (version,))

    def start_canary(self, version: str, share: float) -> Canary:
        """Serve `version` to `share` of the sessions next to the current one (replacing a running canary)."""
        if not 0 < share < 1:
            raise StoreError(f"a canary's share must be strictly between 0 and 1, not {share}")
        self.manifest(version)  # StoreError for a version the store lacks or cannot read
        pointer = self.current()
        if pointer is None:
            raise StoreError(f"nothing is current in {self.location}: a canary needs a version to compare with")
        if pointer.version == version:
            raise StoreError(f"{version} is the current version; a canary is another one")
        canary = Canary(version=version, share=share, updated_at=time.time())
        self._files.write_atomic(CANARY, (json.dumps(asdict(canary), indent=2) + "\n").encode())
        logger.info("canary: %s serves %g of the sessions in %s", version, share, self.location)
        return canary

    def stop_canary(self) -> Canary | None:
        """End the running canary; return it (None if none ran)."""
        canary = self.canary()
        if canary is not None:
            self._files.remove(CANARY)
            logger.info("canary %s stopped in %s", canary.version, self.location)
        return canary

    def rollback(self, to: str | None = None) -> Pointer:
        """Pop promotions off the history until `to` (default: the previous version) is current."""
        target, history = self.rollback_target(to)
        return self._point(target, "rollback", history)

    def rollback_target(self, to: str | None = None) -> tuple[str, tuple[str, ...]]:
        """The version `rollback(to)` would make current, and the history it would leave; StoreError if none."""
        pointer = self.current()
        if pointer is None or pointer.previous is None:
            raise StoreError(f"nothing to roll back to in {self.location}: fewer than two promotions")
        target = to or pointer.previous
        earlier = pointer.history[:-1]
        if target not in earlier:
            raise StoreError(f"{target} was not promoted before {pointer.version}; promote it instead")
        history = earlier[: len(earlier) - earlier[::-1].index(target)]
        if not self.holds(target):
            raise StoreError(f"version {target} is no longer in the store (pruned)")
        self.manifest(target)  # UnreadableVersion when damaged
        return target, history

    def prune(self) -> list[str]:
        """Remove what failed pushes left and all but the newest `keep_versions` versions (never the
        current one, its rollback target nor the canary); return the versions removed. Unreadable versions
        are left in place (logged by `versions()`) and do not count among the newest."""
        pointer, canary = self.current(), self.canary()
        complete = self.versions()
        unreadable = {v for v in self._files.children(VERSIONS) if v not in complete and self.holds(v)}
        kept = set(complete[-self.keep_versions :]) | unreadable
        if pointer is not None:
            kept |= {pointer.version, pointer.previous} - {None}
        if canary is not None:
            kept.add(canary.version)
        removed = [v for v in self._files.children(VERSIONS) if v not in kept]
        for version in removed:
            self._files.remove(f"{VERSIONS}/{version}")
        if removed:
            logger.info("pruned %s from %s", ", ".join(removed), self.location)
        return [v for v in removed if v in complete]

    def _point(self, version: str, action: str, history: tuple[str, ...]) -> Pointer:
        """Write the pointer, then end a canary of `version`: in between, a worker that reads both sees
        the canary's sessions already on their new current version."""
        pointer = Pointer(version=version, action=action, updated_at=time.time(), history=history)
        self._files.write_atomic(POINTER, (json.dumps(asdict(pointer), indent=2) + "\n").encode())
        logger.info("%s: %s is now current in %s", action, version, self.location)
        if (canary := self.canary()) is not None and canary.version == version:
            self.stop_canary()
        return pointer


def _manifest_key(version: str) -> str:
    return f"{VERSIONS}/{version}/{MANIFEST}"
