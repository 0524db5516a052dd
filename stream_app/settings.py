"""Every setting of nextclick in one typed place: environment variables prefixed `NEXTCLICK_`.

The trainer and the worker read the same object, so a deployment configures both with one
ConfigMap. The table of docs/configuration.md is generated from the field descriptions here:
`python -m stream_app.settings --markdown` (a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEXTCLICK_", extra="ignore")

    data_dir: Path = Field(
        default=REPO_ROOT.parent / "shared" / "data",
        description="Folder holding the session click logs (one sub-folder per data set).",
    )
    artifact_dir: Path = Field(
        default=REPO_ROOT / "artifacts",
        description="The artifact store (`versions/`, `current.json`) when no store URL is set; "
        "`training.retrain` also builds artifacts here (`staging/`) before pushing them.",
    )

    train_device: Literal["auto", "cpu", "cuda"] = Field(
        default="cpu",
        description="Where `training.retrain` trains (the default of its `--device`): `auto` takes the GPU "
        "when torch sees one; `cuda` fails at once without one (docs/training-on-a-gpu.md).",
    )

    # --- Artifact store, quality gate and hot swap (`stream_app.release.store`) -----------------
    artifact_store_url: str | None = Field(
        default=None,
        description="fsspec URL of a remote artifact store (`s3://bucket/nextclick`, `gs://...`; needs "
        "the `fsspec` extra and the filesystem's package) used instead of `artifact_dir`.",
    )
    artifact_cache_dir: Path = Field(
        default=REPO_ROOT / "runs" / "artifact-cache",
        description="Local copies of versions read from a remote store (workers, the quality gate).",
    )
    artifact_keep_versions: int = Field(
        default=5,
        ge=2,
        description="Versions the store keeps: the newest ones, plus always the current one and the "
        "one a rollback returns to.",
    )
    quality_gate_tolerance: float = Field(
        default=0.01,
        ge=0,
        description="A new version is promoted only if its Recall@20 and MRR@20 on the held-out data "
        "are each at most this much (absolute) below the current version's.",
    )
    model_updates_topic: str = Field(
        default="model-updates",
        description="Promotions are announced here and workers swap at once; empty: no announcements "
        "(workers rely on polling the store).",
    )
    model_poll_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between a worker's checks of the store's current version.",
    )

    # --- Continuous training (`training.follow`, docs/continuous-training.md) --------------------
    follow_interval_clicks: int = Field(
        default=50_000,
        ge=1,
        description="The follower starts an incremental update once this many clicks arrived after the "
        "current version's cut-off.",
    )
    follow_interval_seconds: float = Field(
        default=600.0,
        gt=0,
        description="... or once this long passed since its last update (or its start), with at least "
        "`follow_min_clicks` new clicks.",
    )
    follow_min_clicks: int = Field(
        default=1_000, ge=1, description="Fewer new clicks than this never make an update."
    )
    follow_max_clicks: int = Field(
        default=500_000,
        ge=1,
        description="The most new clicks the follower holds (one update's window at most); older ones "
        "beyond it are dropped untrained and counted (`nextclick_follow_clicks_dropped_total`).",
    )
    follow_holdout_share: float = Field(
        default=0.1,
        gt=0,
        lt=1,
        description="The most recent share of an update's clicks (per partition) is held out: the quality "
        "gate judges the new and the current version on them; the next update trains on them.",
    )
    follow_epochs: int = Field(default=1, ge=1, description="Passes over an update's sessions.")
    follow_replay_ratio: float = Field(
        default=1.0,
        ge=0,
        description="Older sessions (the artifact's replay sample) trained per new session, so that an "
        "update does not forget what the version knew.",
    )
    follow_dien: Literal["keep", "fine-tune"] = Field(
        default="keep",
        description="DIEN in an update: kept (grown by the new items, not trained) or fine-tuned on the new "
        "sessions, re-ranking the current version's retriever (docs/continuous-training.md).",
    )
    follow_poll_seconds: float = Field(
        default=5.0, gt=0, description="How long the follower waits for new clicks between checks."
    )
    follow_metrics_port: int = Field(
        default=9102, ge=0, le=65535, description="Port of the follower's Prometheus /metrics (0: none)."
    )

    # --- Streaming worker: Kafka connection -------------------------------------------------
    # Defaults suit a real Kafka cluster. The embedded test/demo broker (Tansu) wants shorter
    # group timings and fetch waits, and partition ends from a fetch:
    # `devtools.embedded_broker.TANSU_WORKER_TUNING` lists them and `EmbeddedBroker.worker_env()`
    # turns them into NEXTCLICK_* variables.
    bootstrap_servers: str = Field(
        default="localhost:9092", description="Comma-separated Kafka bootstrap host:port list."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How clients talk to the brokers: TLS (SSL), SASL, both or neither."
    )
    ssl_cafile: Path | None = Field(
        default=None, description="CA bundle that signed the brokers' certificates (SSL, SASL_SSL)."
    )
    ssl_certfile: Path | None = Field(default=None, description="Client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(default=None, description="Private key of `ssl_certfile`.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL mechanism (SASL_PLAINTEXT, SASL_SSL)."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: str | None = Field(default=None, description="SASL password (pass it from a secret).")

    # --- Streaming worker: topics and application ---------------------------------------------
    app_id: str = Field(
        default="nextclick", description="faust app id: the consumer group and table topic prefix."
    )
    clicks_topic: str = Field(
        default="clicks", description="Input click events, keyed by session id (UTF-8)."
    )
    recommendations_topic: str = Field(
        default="recommendations", description="Output suggestions (JSON), keyed by session id."
    )
    dead_letter_topic: str = Field(
        default="clicks-dlq", description="Malformed clicks and catalogue records, original bytes plus reason headers."
    )
    catalogue_topic: str = Field(
        default="catalogue",
        description="The compacted catalogue topic (key: item id; value: `stream_app/catalogue.schema.json`; a "
        "tombstone removes the item), which every worker reads whole; created with one partition when missing.",
    )
    partitions: int = Field(
        default=4, ge=1, description="Partitions of the clicks topic and of the session table."
    )
    topic_replication_factor: int = Field(
        default=1, ge=1, description="Replicas of the topics the worker creates; 3 on a production cluster."
    )
    table_store: str = Field(
        default="memory://",
        description="faust table store: `memory://` or `rocksdb://` (needs faust-streaming[rocksdict]).",
    )
    table_dir: Path = Field(
        default=REPO_ROOT / "runs" / "tables", description="Where a RocksDB table store keeps files."
    )
    serving_artifact_dir: Path | None = Field(
        default=None,
        description="Serve this fixed artifact directory (see `stream_app.inference.scoring`) and never swap; "
        "unset: serve the store's current version and follow its promotions.",
    )
    serving_model: Literal["gru4rec", "narm", "gru4rec+dien", "narm+dien", "vsknn", "stan", "artifact"] = Field(
        default="gru4rec",
        description="What serves: a retriever (GRU4Rec, NARM) or a retriever whose top N DIEN re-ranks; "
        "the artifact must hold the models it names. `vsknn`, `stan`: session-kNN (V-SKNN, STAN) over the sessions "
        "the worker has read from the clicks topic (docs/serving.md, Session-kNN); the artifact gives its version "
        "and popular items. "
        "`artifact`: the pipeline the artifact records, chosen on validation by `training.retrain "
        "--choose-pipeline` (a retriever, `vsknn`, or their blend: docs/serving.md, Blend) or `--dien-retriever "
        "auto` (DIEN on the retriever it chose); GRU4Rec where it records none.",
    )
    knn_sessions: int = Field(
        default=1_000_000, ge=1,
        description="Sessions the live kNN index holds (`vsknn`, `stan`, `artifact`): the most recent to start (a new "
        "one replaces the oldest).",
    )
    knn_window: float = Field(
        default=86_400.0, gt=0,
        description="Seconds of the clicks topic a `vsknn`, `stan` or `artifact` worker reads into its index when it "
        "starts, before it serves (records older than that are skipped; the index keeps at most "
        "`NEXTCLICK_KNN_SESSIONS`).",
    )
    knn_neighbours: int = Field(
        default=100, ge=1,
        description="Neighbour sessions V-SKNN scores with (k); with `artifact`, the artifact's own value serves.",
    )
    knn_sample_size: int = Field(
        default=1_000, ge=0,
        description="Most recent sessions sharing an item with the session that V-SKNN compares it with (0: all); "
        "with `artifact`, the artifact's own value serves.",
    )
    # STAN's parameters (`stream_app.inference.stan`): session-rec's defaults, its lambda_snh of 5 days in seconds
    stan_neighbours: int = Field(default=100, ge=1, description="Neighbour sessions STAN scores with (k).")
    stan_sample_size: int = Field(
        default=5_000, ge=0,
        description="Most recent sessions sharing an item with the session that STAN compares it with (0: all).",
    )
    stan_lambda_position: float = Field(
        default=1.02, gt=0,
        description="STAN's position decay in the session, in clicks (λ1): a click p clicks before the last weighs "
        "exp(-p / λ1) in the similarity.",
    )
    stan_lambda_time: float = Field(
        default=432_000.0, gt=0,
        description="STAN's recency decay of a neighbour session, in seconds (λ2): a session whose last click is t "
        "seconds before the index's latest weighs exp(-t / λ2).",
    )
    stan_lambda_item: float = Field(
        default=2.05, gt=0,
        description="STAN's decay within a neighbour session, in clicks (λ3): its item d clicks from its latest click "
        "on an item the session holds scores exp(-d / λ3).",
    )
    inference_threads: int = Field(
        default=0, ge=0, description="onnxruntime intra-op threads, the item index's for a batch of 64 or more "
        "queries, and how many of DIEN's calls (one thread each) run side by side; 0: every core."
    )
    inference_provider: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="Where onnxruntime scores: `auto` on the GPU when onnxruntime has CUDA (onnxruntime-gpu) and it "
        "starts, else on the CPU; `cpu` never on a GPU; `cuda` only on the GPU: the worker refuses to start where "
        "onnxruntime has no CUDA, and to load a version where CUDA does not start (docs/serving.md, Serving on a GPU).",
    )
    topk_index: Literal["auto", "exact", "ann"] = Field(
        default="auto",
        description="How a retriever's top K is found: `exact` scores the whole catalogue in its graph; `ann` "
        "searches the artifact's item index with the session's query vector (approximate, a cost that hardly "
        "grows with the catalogue); `auto`: the index from `topk_index_min_items` items on, when the artifact has "
        "one (docs/serving.md, Top-K through an index).",
    )
    topk_index_min_items: int = Field(
        default=20_000,
        ge=1,
        description="The catalogue size from which `auto` searches the index: from Diginetica's 43 k items on it "
        "serves more clicks at the same Recall@20; at Yoochoose's 17 k it was faster too but cost Recall@20 "
        "(BENCHMARKS.md, Big catalogues).",
    )
    model_retry_interval: float = Field(
        default=10.0, gt=0, description="Seconds between attempts to load a missing or bad artifact."
    )

    # --- Streaming worker: recommendation behaviour -------------------------------------------
    top_k: int = Field(default=20, ge=1, description="Items per suggestion.")
    catalogue_rules: bool = Field(
        default=True,
        description="Never suggest an item the catalogue topic marks unavailable or blocked, and honour clicks' "
        "`rules` (docs/serving.md, Catalogue and rules); a worker then serves only once it has read the catalogue "
        "to its end. Off: the worker does not read the catalogue, and suggestions are the model's own.",
    )
    new_items_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of each suggestion's `top_k` places (rounded down) kept for the available items the "
        "catalogue marks `new` among the pipeline's candidates: the best-scored of them take those places however "
        "they rank; places no new candidate takes go back to the ranking, and nothing the pipeline did not score is "
        "added. 0: off. Needs `NEXTCLICK_CATALOGUE_RULES` (docs/serving.md, Catalogue and rules).",
    )
    catalogue_fetch_max_wait: float = Field(
        default=0.1,
        gt=0,
        description="Longest a fetch of the catalogue topic may wait in the broker, seconds. The catalogue is quiet "
        "most of the time: a short wait makes the worker poll it many times a second for nothing, on the thread that "
        "serves clicks. Kafka answers as soon as a record is there; the embedded broker after up to half the wait, "
        "which bounds what this adds to a record's propagation.",
    )
    catalogue_max_record_bytes: int = Field(
        default=4_096, ge=64, description="Larger catalogue records go to the dead-letter topic."
    )
    exclude_seen: Literal["auto", "true", "false"] = Field(
        default="auto",
        description="Leave items already clicked in the session out of suggestions. `auto`: as the served "
        "artifact measured better on its test clicks (metrics.json's `served`; an artifact without that "
        "measurement keeps them, and the worker's log says so).",
    )
    live_quality_min_share: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="The NextclickLiveQualityLow alert fires when a version's live hit-rate@20 stays below "
        "this share of its offline Recall@20 (exported as nextclick_live_quality_min_share).",
    )
    session_ttl: float = Field(
        default=1800.0, gt=0, description="Seconds of inactivity after which a session is forgotten."
    )
    eviction_interval: float = Field(
        default=60.0, gt=0, description="Seconds between sweeps that evict idle sessions."
    )
    max_history: int = Field(
        default=50,
        ge=1,
        description="Clicked items kept per session: for exclusion, replay, and as NARM's and DIEN's "
        "input (they read the last 19 by default; keep this at least that).",
    )
    max_payload_bytes: int = Field(
        default=16_384, ge=64, description="Larger click messages go to the dead-letter topic."
    )
    batch_size: int = Field(
        default=256, ge=1, description="Most clicks scored in one model call (a batch is what has arrived, up to this)."
    )

    # --- Streaming worker: operations and broker tuning ---------------------------------------
    web_port: int = Field(
        default=6066, description="HTTP port of /metrics, /livez and /readyz (faust's web server)."
    )
    web_bind: str = Field(
        default="0.0.0.0",
        description="Address the web server binds to: `0.0.0.0` (all interfaces, what Kubernetes' probes and "
        "Prometheus need in a pod), `127.0.0.1` to serve this machine only.",
    )
    web_faust_views: bool = Field(
        default=False,
        description="Also serve faust's `/table/` (table names and per-key session state) and `/router/` (every "
        "worker's URL) views; off: they answer 404. nextclick needs neither.",
    )
    consumer_lag_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between measurements of the clicks partitions' consumer lag (a metric).",
    )
    broker_check_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between the worker's metadata requests to the broker, which tell whether it "
        "answers and whether the clicks, recommendations, dead-letter and changelog topics exist with "
        "`NEXTCLICK_PARTITIONS` partitions, and the catalogue topic with those it had at the worker's start "
        "(`/readyz`'s `broker_reachable` and `topics_present`).",
    )
    broker_ready_grace: float = Field(
        default=30.0,
        gt=0,
        description="`/readyz` turns 503 (`broker_reachable`) after this many seconds without a metadata "
        "answer from the broker, and 200 again at the next answer; `/livez` is unaffected.",
    )
    broker_session_timeout: float = Field(
        default=60.0, gt=0, description="Consumer group session timeout, seconds (faust default)."
    )
    broker_heartbeat_interval: float = Field(
        default=3.0, gt=0, description="Seconds between consumer group heartbeats (faust default)."
    )
    broker_rebalance_timeout: float = Field(
        default=60.0, gt=0, description="Longest a group rebalance may take, seconds (faust default)."
    )
    broker_commit_interval: float = Field(
        default=2.8, gt=0, description="Seconds between offset commits (faust default)."
    )
    producer_linger: float = Field(
        default=0.005,
        ge=0,
        description="Seconds the producer waits to fill a batch of suggestions and changelog records "
        "(faust's default 0 sends a request per few records: twice the CPU per click).",
    )
    producer_max_batch_size: int = Field(
        default=262_144,
        ge=1,
        description="Most bytes of records the producer gathers per partition in one batch (aiokafka's "
        "max_batch_size; a batch always takes its first record). aiokafka makes a send wait while its "
        "partition's batch is full and the previous request is in flight: with its default 16 KiB a "
        "micro-batch's suggestions and states filled them, and the worker waited for the broker several "
        "times per micro-batch (a fifth fewer clicks/s). At most one batch per partition is buffered, and "
        "it must stay below the producer's 1 MB request limit.",
    )
    consumer_fetch_max_wait: float = Field(
        default=1.5,
        gt=0,
        description="Longest a fetch may wait in the broker for data, seconds (faust's fixed 1.5 s).",
    )
    broker_end_offsets: Literal["list", "fetch"] = Field(
        default="list",
        description="How the worker learns where a partition ends (changelog recovery, consumer lag, the "
        "catalogue and clicks readers): `list` asks the broker (ListOffsets); `fetch` also fetches the last "
        "record batch and takes the fetch's high watermark, for brokers whose listing falls short of a last "
        "batch of several records (the embedded broker's tuning; `stream_app.partition_ends`).",
    )

    @model_validator(mode="after")
    def _new_items_share_reads_the_catalogue(self) -> Settings:
        """The `new` mark is in the catalogue's records, which a worker reads only with the rules on."""
        if self.new_items_share and not self.catalogue_rules:
            raise ValueError("NEXTCLICK_NEW_ITEMS_SHARE needs NEXTCLICK_CATALOGUE_RULES=true")
        return self

    @field_validator("exclude_seen", mode="before")
    @classmethod
    def _boolean_words(cls, value: object) -> object:
        """Booleans and the usual words for them (`1`, `yes`, `off`, ...) mean `true` or `false`."""
        words = {"1": "true", "yes": "true", "on": "true", "0": "false", "no": "false", "off": "false"}
        if isinstance(value, bool):
            return "true" if value else "false"
        return words.get(str(value).strip().lower(), str(value).strip().lower())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def _shown_default(value: object) -> str:
    if value is None:
        return "(none)"
    if isinstance(value, Path):
        return f"`{os.path.relpath(value, REPO_ROOT)}` (from the repo root)"
    return f"`{value}`"


def markdown_table() -> str:
    """docs/configuration.md's table: every setting's variable, default and description."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = field.description or ""
        if get_origin(field.annotation) is Literal:
            meaning += " One of " + ", ".join(f"`{choice}`" for choice in get_args(field.annotation)) + "."
        rows.append(f"| `NEXTCLICK_{name.upper()}` | {_shown_default(field.default)} | {meaning} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stream_app.settings", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true",
                        help="print every setting's variable, default and meaning (docs/configuration.md) "
                             "instead of the values in effect (JSON)")
    return parser


if __name__ == "__main__":
    if build_parser().parse_args().markdown:
        print(markdown_table())
    else:
        print(get_settings().model_dump_json(indent=2))
