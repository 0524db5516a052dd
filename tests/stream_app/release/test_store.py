"""The artifact store on real artifacts: push, promote, rollback, pruning, failed pushes, fsspec URLs, canaries."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from devtools.artifact_versions import edit_manifest, renamed
from stream_app.inference.artifact_format import ArtifactError, verify_artifact
from stream_app.inference.scoring import Scorer
from stream_app.release import store as artifact_store
from stream_app.release.store import ArtifactStore, Canary, StoreError


@pytest.fixture
def versions(artifact: Path, tmp_path: Path) -> dict[str, Path]:
    """Four copies of the tiny artifact as versions v1..v4, created in that order."""
    return {f"v{n}": renamed(artifact, tmp_path / "built" / f"v{n}", f"v{n}") for n in range(1, 5)}


def local_store(tmp_path: Path, keep: int = 3) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store", tmp_path / "cache", keep)


def test_a_pushed_version_is_complete_immutable_and_current_only_once_promoted(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    store = local_store(tmp_path)
    assert store.push(versions["v1"]) == "v1"
    assert store.versions() == ["v1"] and store.current() is None
    copy = store.local_copy("v1")
    assert Scorer(copy).version == "v1"  # every sha256 checked again on load
    assert {p.name for p in copy.iterdir()} == {p.name for p in versions["v1"].iterdir()}
    with pytest.raises(StoreError, match="immutable"):
        store.push(versions["v1"])
    pointer = store.promote("v1")
    assert store.current() == pointer and pointer.version == "v1" and pointer.history == ("v1",)
    with pytest.raises(StoreError, match="no version"):
        store.promote("v9")


def test_a_corrupt_artifact_is_not_pushed(versions: dict[str, Path], tmp_path: Path) -> None:
    (versions["v1"] / "popularity.npy").write_bytes(b"not what the manifest says")
    store = local_store(tmp_path)
    with pytest.raises(ArtifactError, match="sha256"):
        store.push(versions["v1"])
    assert store.versions() == []


def test_a_push_that_dies_midway_leaves_no_visible_version(
    versions: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = local_store(tmp_path)
    real_put = artifact_store._LocalFiles.put
    copied: list[str] = []

    def put_then_die(files: object, local: Path, key: str) -> None:
        if len(copied) == 2:
            raise OSError("disk full")
        real_put(files, local, key)
        copied.append(key)

    monkeypatch.setattr(artifact_store._LocalFiles, "put", put_then_die)
    with pytest.raises(OSError, match="disk full"):
        store.push(versions["v1"])
    assert len(copied) == 2 and store.versions() == []
    with pytest.raises(StoreError):
        store.promote("v1")
    monkeypatch.undo()
    assert store.push(versions["v1"]) == "v1"  # a new attempt replaces what the failed one left
    assert Scorer(store.local_copy("v1")).version == "v1"


def test_a_copy_that_differs_from_the_manifest_is_not_published(
    versions: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = local_store(tmp_path)

    def put_damaged(files: artifact_store._LocalFiles, local: Path, key: str) -> None:
        (files.root / key).parent.mkdir(parents=True, exist_ok=True)
        (files.root / key).write_bytes(local.read_bytes()[:-1])  # one byte short, as a broken copy would be

    monkeypatch.setattr(artifact_store._LocalFiles, "put", put_damaged)
    with pytest.raises(StoreError, match="does not match its sha256"):
        store.push(versions["v1"])
    assert store.versions() == []


def test_rollback_returns_to_earlier_promotions(versions: dict[str, Path], tmp_path: Path) -> None:
    store = local_store(tmp_path, keep=4)
    for version, folder in versions.items():
        store.push(folder)
        store.promote(version)
    assert store.current().history == ("v1", "v2", "v3", "v4")
    pointer = store.rollback()
    assert (pointer.version, pointer.action, pointer.history) == ("v3", "rollback", ("v1", "v2", "v3"))
    assert store.rollback(to="v1").history == ("v1",)
    with pytest.raises(StoreError, match="nothing to roll back to"):
        store.rollback()
    store.promote("v2")
    with pytest.raises(StoreError, match="was not promoted before"):
        store.rollback(to="v4")


def test_pruning_keeps_the_newest_the_current_and_its_rollback_target(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    store = local_store(tmp_path, keep=2)
    for version in ("v1", "v2"):
        store.push(versions[version])
        store.promote(version)
    store.push(versions["v3"])
    store.push(versions["v4"])
    (Path(store.location) / "versions" / "v5").mkdir()  # what a push that died left
    assert store.prune() == []  # v1 is the rollback target of v2, v2 is current, v3 and v4 the newest
    assert store.versions() == ["v1", "v2", "v3", "v4"]
    assert not (Path(store.location) / "versions" / "v5").exists()
    store.promote("v4")
    assert store.prune() == ["v1"]
    assert store.versions() == ["v2", "v3", "v4"]


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_an_fsspec_store_works_alike_and_is_read_through_a_local_cache(
    scheme: str, versions: dict[str, Path], tmp_path: Path
) -> None:
    pytest.importorskip("fsspec")
    root = f"memory://nextclick-{uuid.uuid4().hex}" if scheme == "memory" else (tmp_path / "remote").as_uri()
    store = ArtifactStore(root, tmp_path / "cache", 2)
    assert not store.is_local
    for version in ("v1", "v2", "v3"):
        store.push(versions[version])
        store.promote(version)
    assert store.rollback().version == "v2"
    assert store.prune() == []  # v3 is among the newest two, v2 is current, v1 its rollback target
    copy = store.local_copy("v2")
    assert copy.parent == tmp_path / "cache" and Scorer(copy).version == "v2"
    (copy / "item_ids.json").write_text(json.dumps(["tampered"]))
    assert Scorer(store.local_copy("v2")).version == "v2"  # a damaged cached copy is fetched again
    store.promote("v3")
    assert store.prune() == ["v1"]
    store.local_copy("v3")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["v2", "v3"]


def test_an_unknown_url_scheme_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("fsspec")
    with pytest.raises(StoreError, match="no-such-fs"):
        ArtifactStore("no-such-fs://bucket/x", tmp_path / "cache", 2)


@pytest.mark.parametrize("where", ["local", "memory"])
def test_a_canary_starts_stops_and_runs_only_beside_the_current_version(
    where: str, versions: dict[str, Path], tmp_path: Path
) -> None:
    if where == "memory":
        pytest.importorskip("fsspec")
        store = ArtifactStore(f"memory://nextclick-{uuid.uuid4().hex}", tmp_path / "cache", 3)
    else:
        store = local_store(tmp_path)
    for version in ("v1", "v2", "v3"):
        store.push(versions[version])
    with pytest.raises(StoreError, match="nothing is current"):
        store.start_canary("v2", 0.1)
    store.promote("v1")
    assert store.canary() is None and store.stop_canary() is None
    for version, share, refusal in [
        ("v2", 0.0, "strictly between 0 and 1"),
        ("v2", 1.0, "strictly between 0 and 1"),
        ("v9", 0.1, "no version 'v9'"),
        ("v1", 0.1, "is the current version"),
    ]:
        with pytest.raises(StoreError, match=refusal):
            store.start_canary(version, share)
    assert store.canary() is None

    canary = store.start_canary("v2", 0.1)
    assert store.canary() == canary and (canary.version, canary.share) == ("v2", 0.1)
    with store._files.open(artifact_store.CANARY) as file:  # beside current.json, the format workers read
        assert json.load(file) == {"version": "v2", "share": 0.1, "updated_at": canary.updated_at}
    replaced = store.start_canary("v3", 0.25)  # one canary at a time: a new one replaces it
    assert store.canary() == replaced == Canary("v3", 0.25, replaced.updated_at)
    assert store.stop_canary() == replaced
    assert store.canary() is None and store.stop_canary() is None
    assert store.current().version == "v1"  # the current pointer never moved


def test_promotion_of_the_canary_ends_it_other_promotions_and_rollbacks_do_not(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    store = local_store(tmp_path, keep=4)
    for folder in versions.values():
        store.push(folder)
    store.promote("v1")
    store.promote("v2")
    canary = store.start_canary("v3", 0.1)
    store.promote("v4")
    assert store.canary() == canary
    store.rollback()
    assert store.current().version == "v2" and store.canary() == canary
    pointer = store.promote("v3")
    assert pointer.version == "v3" and store.canary() is None
    store.start_canary("v2", 0.5)  # the version a rollback returns to, as the canary
    assert store.rollback().version == "v2" and store.canary() is None  # current now, so no longer a canary


def test_pruning_keeps_the_canary(versions: dict[str, Path], tmp_path: Path) -> None:
    store = local_store(tmp_path, keep=2)
    for folder in versions.values():
        store.push(folder)
    store.promote("v3")
    store.promote("v4")
    store.start_canary("v1", 0.1)  # the oldest, neither among the newest two nor a rollback target
    assert store.prune() == ["v2"]
    assert store.versions() == ["v1", "v3", "v4"]
    store.stop_canary()
    assert store.prune() == ["v1"]


def damage_manifest(store: ArtifactStore, version: str) -> None:
    """The fault seen in the field: a manifest.json cut short."""
    (Path(store.location) / "versions" / version / "manifest.json").write_text('{"version": ')


def test_an_unreadable_manifest_is_skipped_reported_once_kept_and_never_made_current(
    versions: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = local_store(tmp_path, keep=2)
    for folder in versions.values():
        store.push(folder)
    damage_manifest(store, "v2")
    with caplog.at_level("WARNING", logger=artifact_store.__name__):
        assert store.versions() == ["v1", "v3", "v4"]
    [line] = caplog.messages
    assert "v2 (manifest.json: Expecting value" in line and "\n" not in line
    assert store.scan() == (["v1", "v3", "v4"], {"v2": "manifest.json: Expecting value: line 1 column 13 (char 12)"})
    for refused in (lambda: store.promote("v2"), lambda: store.start_canary("v2", 0.1), lambda: store.local_copy("v2")):
        with pytest.raises(artifact_store.UnreadableVersion, match=r"'v2' .* is unreadable: manifest.json: Expecting"):
            refused()
    assert store.current() is None and store.canary() is None
    store.promote("v3")
    store.promote("v4")
    caplog.clear()
    with caplog.at_level("WARNING", logger=artifact_store.__name__):
        assert store.prune() == ["v1"]  # v2 stays for a person to look at; it is not among the newest two
    assert len(caplog.messages) == 1 and "v2" in caplog.messages[0]
    assert (Path(store.location) / "versions" / "v2").is_dir() and store.versions() == ["v3", "v4"]


def test_a_rollback_to_a_version_damaged_since_it_served_is_refused(versions: dict[str, Path], tmp_path: Path) -> None:
    store = local_store(tmp_path)
    for version in ("v1", "v2"):
        store.push(versions[version])
        store.promote(version)
    damage_manifest(store, "v1")
    with pytest.raises(StoreError, match="'v1' .* is unreadable"):
        store.rollback()
    assert store.current().version == "v2"
    damage_manifest(store, "v2")  # the current version itself: prune keeps it, and its rollback target
    assert store.prune() == [] and sorted(p.name for p in (Path(store.location) / "versions").iterdir()) == ["v1", "v2"]


def test_an_unreadable_pointer_is_a_store_error(versions: dict[str, Path], tmp_path: Path) -> None:
    store = local_store(tmp_path)
    store.push(versions["v1"])
    store.promote("v1")
    (Path(store.location) / "current.json").write_text('{"version": "v1"')
    with pytest.raises(StoreError, match="current.json .* is unreadable"):
        store.current()
    (Path(store.location) / "canary.json").write_text('{"share": 0.1}')
    with pytest.raises(StoreError, match="canary.json .* is unreadable"):
        store.canary()


def test_verification_refuses_an_unreadable_manifest_and_a_wrong_item_count(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    folder = versions["v1"]
    manifest = verify_artifact(folder)
    n_items = len(json.loads((folder / "item_ids.json").read_text()))
    assert manifest["models"]["gru4rec"]["n_items"] == n_items  # what every artifact says today
    edit_manifest(folder, models={"gru4rec": manifest["models"]["gru4rec"] | {"n_items": n_items + 1}})
    with pytest.raises(ArtifactError, match=f"item_ids.json holds {n_items} items, the models say .*{n_items + 1}"):
        verify_artifact(folder)
    (folder / "manifest.json").write_text('{"version": ')
    with pytest.raises(ArtifactError, match="manifest.json is unreadable"):
        verify_artifact(folder)
