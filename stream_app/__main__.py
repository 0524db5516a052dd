"""nextclick: a streaming, session-based next-item recommender. Clicks (JSON on the clicks topic, keyed by
session id) come in; every click is answered on the recommendations topic with the items that session most
likely wants next, scored by ONNX models (onnxruntime).

\b
    python -m stream_app worker -l info     # the worker (this command line is faust's; its options below)
    python -m stream_app.artifacts --help   # the artifact store: list, show, promote, rollback, canary
    python -m stream_app.catalogue --help   # what may be suggested: set, load, show, remove items
    python -m training.retrain --help       # train, evaluate, gate and publish a new version
    python -m devtools.demo --help          # the whole loop live on one machine (from a checkout)

Settings are NEXTCLICK_* environment variables, listed with their defaults and meanings by
`python -m stream_app.settings --markdown` (docs/configuration.md).
"""

import sys

from faust.cli.faust import cli

from stream_app.inference.providers import ProviderUnavailable, requested_providers

WORKER_HELP = """Run a nextclick worker: read clicks, keep each session's state in the `sessions` table (its
changelog lets a restarted worker carry on), publish suggestions, follow the artifact store's promotions
(or serve NEXTCLICK_SERVING_ARTIFACT_DIR), and serve /metrics, /livez and /readyz on NEXTCLICK_WEB_PORT.
Configured by NEXTCLICK_* variables (`python -m stream_app.settings --markdown`); the options below are faust's."""


def main() -> None:
    """faust's command line with nextclick's help; a worker that can never score as configured (no CUDA for
    NEXTCLICK_INFERENCE_PROVIDER=cuda) stops at once, and its table folder is made when it starts."""
    cli.help = __doc__.replace("\n\n    python", "\n\n\b\n    python", 1)  # \b: click keeps those lines as written
    cli.commands["worker"].help = WORKER_HELP
    from stream_app.worker.app import app, settings

    if "worker" in sys.argv[1:]:
        try:
            requested_providers(settings.inference_provider)
        except ProviderUnavailable as error:
            sys.exit(f"nextclick worker: {error}")
        settings.table_dir.mkdir(parents=True, exist_ok=True)  # faust creates only the last level of it
    app.main()


if __name__ == "__main__":
    main()
