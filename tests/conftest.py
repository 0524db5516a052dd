"""Shared fixtures: the embedded broker, and nextclick workers run as real subprocesses.

The test folders mirror the packages (stream_app/, training/, models/, devtools/, and deploy/ for the
deployment files); helpers shared between them live here, beside this file. Every test that needs the
embedded broker carries the `broker` marker, every test that trains a model the `training` marker:
`pytest -m "not broker and not training"` is the fast lane (seconds).

A worker runs exactly as in production (`python -m stream_app worker`), configured only through
NEXTCLICK_* variables; tests talk to it through Kafka and its HTTP endpoints.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord, RecordMetadata
from prometheus_client.parser import text_string_to_metric_families

from devtools.click_replay import WorkerProcess, unique_worker_settings
from devtools.embedded_broker import EmbeddedBroker
from stream_app.inference.scoring import Scorer
from stream_app.kafka_security import aiokafka_client_kwargs
from stream_app.release.store import ArtifactStore
from stream_app.settings import REPO_ROOT, Settings

WORKER_START_TIMEOUT = 60.0
SERVED_TOP_K = Settings.model_fields["top_k"].default  # test workers get no NEXTCLICK_TOP_K


# A model small enough to train in seconds on two busy cores; its quality is irrelevant here.
TINY_TRAINING = [
    "--dataset",
    "yoochoose_rsc15_100k",
    "--models",
    "gru4rec",
    "--epochs",
    "1",
    "--gru4rec-layers",
    "32",
    "--gru4rec-batch-size",
    "64",
    "--gru4rec-n-sample",
    "256",
    "--max-train-sessions",
    "2000",
    "--max-test-sessions",
    "100",
    "--threads",
    "1",
    "--no-progress",
]


def retrain_tiny(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m training.retrain` with TINY_TRAINING, then `flags` (which win); needs torch."""
    pytest.importorskip("torch")
    return subprocess.run(
        ["nice", "-n", "15", sys.executable, "-m", "training.retrain", *TINY_TRAINING, *flags],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="session")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real artifact from `python -m training.retrain` (needs the `train` extra: torch)."""
    out = tmp_path_factory.mktemp("artifact") / "tiny"
    retrain_tiny("--out", str(out))
    return out


@pytest.fixture(scope="session")
def three_model_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real artifact holding GRU4Rec, NARM and DIEN (re-ranking GRU4Rec's top 50), all tiny; NARM and DIEN
    read the last 6 clicks (L), so that real sessions outgrow it."""
    out = tmp_path_factory.mktemp("artifact") / "three"
    retrain_tiny("--models", "gru4rec", "narm", "dien", "--narm-hidden-size", "16", "--narm-embedding-dim", "16",
                 "--narm-max-len", "6", "--dien-item-dim", "8", "--dien-mlp", "16,8", "--dien-n-candidates", "50",
                 "--dien-max-len", "6", "--out", str(out))
    return out


@pytest.fixture(scope="session")
def tiny_retrain() -> Callable[..., subprocess.CompletedProcess[str]]:
    """`retrain_tiny(*flags, env=...)` for tests that need another real artifact or a real retrain run."""
    return retrain_tiny


@pytest.fixture(scope="session")
def scorer(artifact: Path) -> Scorer:
    return Scorer(artifact)


def offline_suggestion(scorer: Scorer, clicked: list[str]) -> list[str]:
    """The offline reference: the suggestion after a session's clicks, from a zero hidden state.

    Steps the ONNX model through every click of the prefix one at a time (batch 1), as if the
    session had never been seen, so it shares nothing with the worker's incremental state.
    """
    hidden, last = scorer.zero_hidden(1), None
    for item in clicked:
        if (index := scorer.index_of(item)) is not None:
            last = scorer.step(np.array([index]), hidden)
            hidden = last.next_hidden
    seen = {index for item in clicked if (index := scorer.index_of(item)) is not None}
    if last is None or scorer.index_of(clicked[-1]) is None:
        chosen, _ = scorer.popular(SERVED_TOP_K, seen)
    else:
        chosen, _ = scorer.select(last.top_items[0], last.top_scores[0], SERVED_TOP_K, seen)
    return [scorer.item_ids[i] for i in chosen]


@pytest.fixture(scope="session")
def offline_items(scorer: Scorer) -> Callable[[list[str]], list[str]]:
    """`offline_suggestion` of the session's tiny artifact."""
    return functools.partial(offline_suggestion, scorer)


@pytest.fixture(scope="session")
def offline_items_of() -> Callable[[Scorer], Callable[[list[str]], list[str]]]:
    """`offline_suggestion` of any artifact: `offline_items_of(scorer)(clicked)`."""
    return lambda scorer: functools.partial(offline_suggestion, scorer)


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """One in-memory Tansu for the whole test session; tests isolate by unique topic names."""
    with EmbeddedBroker() as running:
        yield running


class KafkaClient:
    """Blocking produce/consume helpers with the connection settings a worker uses."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def produce(
        self, topic: str, messages: list[tuple[bytes | None, bytes | None]], partition: int | None = None
    ) -> list[RecordMetadata]:
        async def send_all() -> list[RecordMetadata]:
            producer = AIOKafkaProducer(acks="all", **aiokafka_client_kwargs(self.settings))
            await producer.start()
            try:
                return [
                    await producer.send_and_wait(topic, value, key=key, partition=partition)
                    for key, value in messages
                ]
            finally:
                await producer.stop()

        return asyncio.run(send_all())

    def consume(self, topic: str, count: int, timeout: float = 20.0) -> list[ConsumerRecord]:
        """The first `count` records of `topic` (all partitions); fewer if `timeout` passes first."""

        async def read() -> list[ConsumerRecord]:
            consumer = AIOKafkaConsumer(
                topic, auto_offset_reset="earliest", **aiokafka_client_kwargs(self.settings)
            )
            await consumer.start()
            records: list[ConsumerRecord] = []
            deadline = time.monotonic() + timeout
            try:
                while len(records) < count and time.monotonic() < deadline:
                    batches = await consumer.getmany(timeout_ms=200)
                    records += [record for batch in batches.values() for record in batch]
            finally:
                await consumer.stop()
            return records

        return asyncio.run(read())

    def committed(self, group: str, topic: str, partition: int) -> int:
        """The offset `group` committed on a partition, as the broker holds it (the next one to read; -1: none)."""

        async def fetch() -> int:
            consumer = AIOKafkaConsumer(
                group_id=group, enable_auto_commit=False, **aiokafka_client_kwargs(self.settings)
            )
            await consumer.start()  # not subscribed: it never joins the group, it only asks its coordinator
            try:
                offset = await consumer.committed(TopicPartition(topic, partition))
                return -1 if offset is None else offset
            finally:
                await consumer.stop()

        return asyncio.run(fetch())


class Worker(KafkaClient):
    """A running `python -m stream_app worker` and what a test needs to reach it."""

    def __init__(self, settings: Settings, process: subprocess.Popen[bytes], log: Path) -> None:
        super().__init__(settings)
        self.process = process
        self.log = log
        self.web_url = f"http://127.0.0.1:{settings.web_port}"

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.web_url + path, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def readiness(self) -> dict[str, Any]:
        return json.loads(self.get("/readyz")[1])

    def metric(self, sample_name: str, /, **labels: str) -> float:
        """One sample of the worker's /metrics (0.0 when absent, like an untouched counter)."""
        for family in text_string_to_metric_families(self.get("/metrics")[1].decode()):
            for sample in family.samples:
                if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return sample.value
        return 0.0

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_until(
        self, condition: Callable[[], bool], timeout: float = 20.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"worker exited ({self.process.returncode}) waiting for {what}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker: no {what} after {timeout} s:\n{self.log_tail()}")
            time.sleep(0.1)


@contextmanager
def running_worker(fields: dict[str, Any], log: Path, require_model: bool = False) -> Iterator[Worker]:
    """Start a worker subprocess with `fields` as NEXTCLICK_* variables (and no other NEXTCLICK_* from
    the developer's environment); stop it on exit."""
    clean_env = {key: value for key, value in os.environ.items() if not key.startswith("NEXTCLICK_")}
    with WorkerProcess(fields, log, base_env=clean_env) as process:
        checks = ["partitions_assigned", "tables_recovered", "catalogue_loaded"]
        checks += ["model_loaded"] if require_model else []
        process.wait_ready(timeout=WORKER_START_TIMEOUT, checks=checks)
        yield Worker(process.settings, process.process, log)


@pytest.fixture(scope="session")
def launch_worker() -> Callable[..., Any]:
    """`running_worker` for tests: `with launch_worker(fields, log) as worker: ...`."""
    return running_worker


@pytest.fixture(scope="session")
def worker_fields() -> Callable[..., dict[str, Any]]:
    """`unique_worker_settings` for tests."""
    return unique_worker_settings


@pytest.fixture(scope="session")
def start_worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Any]:
    """`with start_worker(name, require_model=..., **fields) as worker:` a worker on the test broker with its
    own app id, topics and folder (`name`), for module-scoped fixtures."""

    @contextmanager
    def start(name: str, require_model: bool = False, **overrides: Any) -> Iterator[Worker]:
        tmp = tmp_path_factory.mktemp(name)
        fields = unique_worker_settings(broker.bootstrap_servers, tmp, **overrides)
        with running_worker(fields, tmp / "worker.log", require_model=require_model) as running:
            yield running

    return start


@pytest.fixture(scope="session")
def store_worker(broker: EmbeddedBroker) -> Callable[..., Any]:
    """`with store_worker(tmp, current, *others) as (worker, store):` a worker following a local store in `tmp`
    whose current version is the artifact folder `current` (`others` pushed, not promoted); announcements on,
    polling too slow to matter."""

    @contextmanager
    def start(tmp: Path, current: Path, *others: Path, **overrides: Any) -> Iterator[tuple[Worker, ArtifactStore]]:
        store = ArtifactStore(tmp / "store", tmp / "cache", keep_versions=10)
        versions = [store.push(folder) for folder in (current, *others)]
        store.promote(versions[0])
        fields = unique_worker_settings(
            broker.bootstrap_servers, tmp, serving_artifact_dir=None, artifact_dir=tmp / "store",
            artifact_cache_dir=tmp / "worker-cache", model_updates_topic=f"model-updates-{uuid.uuid4().hex[:8]}",
            model_poll_interval=600.0, **overrides,
        )
        with running_worker(fields, tmp / "worker.log", require_model=True) as worker:
            yield worker, store

    return start


@pytest.fixture(scope="session")
def kafka_client() -> type[KafkaClient]:
    """`KafkaClient(settings)` for tests that talk to a broker without a worker."""
    return KafkaClient


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two busy cores: torch's second thread only waits for the first (20x slower here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TRAINED_ARTIFACTS = {"artifact", "three_model_artifact", "tiny_retrain"}  # fixtures that run training.retrain


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use the broker (directly or through a worker fixture) `broker`, and those that train
    a model through a fixture `training` (modules that train in their tests mark themselves)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if "broker" in fixtures:
            item.add_marker(pytest.mark.broker)
        if fixtures & TRAINED_ARTIFACTS:
            item.add_marker(pytest.mark.training)
