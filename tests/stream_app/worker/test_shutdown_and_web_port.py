"""A worker that served clicks stops cleanly on SIGTERM (exit code 0, no ERROR and no traceback in its log), and its
web port serves what nextclick documents: /metrics, /livez, /readyz; faust's /table/ and /router/ views are off
unless NEXTCLICK_WEB_FAUST_VIEWS turns them on."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def click_message(session_id: str, item_id: str) -> tuple[bytes, bytes]:
    value = {"session_id": session_id, "item_id": item_id, "timestamp": time.time()}
    return session_id.encode(), json.dumps(value).encode()


def test_sigterm_after_serving_clicks_exits_0_with_no_error_in_the_log(
    artifact: Path, start_worker: Callable[..., Any], scorer: Any
) -> None:
    items = scorer.item_ids[:5]
    clicks = [click_message(f"stop-{n % 4}", items[n % len(items)]) for n in range(20)] + [(b"bad", b"{oops")]
    with start_worker("sigterm-worker", require_model=True, serving_artifact_dir=artifact) as worker:
        # the web port, on the same worker: nextclick's endpoints answer, faust's table and router views do not
        assert worker.get("/livez")[0] == 200
        assert worker.get("/readyz")[0] == 200
        status, body = worker.get("/metrics")
        assert status == 200 and b"nextclick_events_consumed_total" in body
        for path in ("/table/", "/table/sessions/", "/router/"):
            assert worker.get(path)[0] == 404, path

        worker.produce(worker.settings.clicks_topic, clicks)
        assert len(worker.consume(worker.settings.recommendations_topic, 20)) == 20
        worker.wait_until(lambda: worker.metric("nextclick_events_consumed_total") == len(clicks), what="the clicks")

        worker.process.send_signal(signal.SIGTERM)
        returncode = worker.process.wait(timeout=30)
    log = worker.log.read_text(errors="replace")
    assert returncode == 0, log[-3000:]
    bad = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
    assert not bad, "\n".join(bad)


def test_faust_views_are_served_when_the_setting_turns_them_on(start_worker: Callable[..., Any]) -> None:
    """NEXTCLICK_WEB_FAUST_VIEWS=true serves them; NEXTCLICK_WEB_BIND=127.0.0.1 still answers on loopback."""
    with start_worker("web-views-worker", web_faust_views=True, web_bind="127.0.0.1") as worker:
        assert worker.get("/table/")[0] == 200
        assert worker.get("/router/")[0] == 200
        assert worker.get("/livez")[0] == 200
