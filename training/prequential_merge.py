"""`python -m training.prequential_merge A B ... --out DIR`: one replay's result from replays run side by side.

    python -m training.prequential ... --threads 1 --policies frozen retrain --out runs/a &
    python -m training.prequential ... --threads 1 --policies frozen incremental popularity vsknn live-vsknn blend \\
        --out runs/b
    python -m training.prequential_merge runs/a runs/b --out runs/all

Once the first version is trained, a replay's policies are independent of each other. On two cores, two processes
of one torch thread each, each replaying some of the policies, finish sooner than one process replaying them all
(two torch threads stall when anything else takes a core), and one thread trains the same first version in both.
The merge refuses results that are not of the same replay (data, stream, slices, the flags other than `--policies`
and `--out`), and a policy replayed in several of them whose served figures differ: a frozen policy in each proves
that they served the same first version. Not the same replay: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stream_app.cli_help import HelpFormatter
from training.evaluation.plots import plot_prequential
from training.prequential import PLOT, POLICIES, RESULT, format_result

ONE_PROCESS_FLAGS = ("policies", "out", "no_progress")  # what may differ between the replays of one stream
SAME_REPLAY = ("data", "protocol", "cutoff", "exclude_seen", "pipeline", "stream", "slices", "threads")
INITIAL = ("sessions", "clicks", "items")  # the first part (its training's time differs from run to run)


class NotOneReplay(ValueError):
    """The results are not of the same replay: the figures would not be of the same clicks."""


def _replay_identity(result: dict) -> dict:
    flags = {key: value for key, value in result["flags"]["prequential"].items() if key not in ONE_PROCESS_FLAGS}
    return {"flags": flags, "retrain": result["flags"]["retrain"], "initial": {key: result["initial"][key]
            for key in INITIAL}} | {key: result[key] for key in SAME_REPLAY}


def _served(policy: dict) -> dict:
    """What a policy served, without the seconds it took."""
    return {"overall": policy["overall"], "new_items": policy["new_items"],
            "slices": [{key: value for key, value in entry.items() if "seconds" not in key}
                       for entry in policy["slices"]]}


def merged(results: dict[Path, dict]) -> dict:
    (first_path, first), *others = results.items()
    identity = _replay_identity(first)
    policies: dict[str, dict] = {}
    found_in: dict[str, Path] = {}
    for path, result in results.items():
        if path != first_path and _replay_identity(result) != identity:
            difference = sorted(key for key, value in _replay_identity(result).items() if identity[key] != value)
            raise NotOneReplay(f"{path} is not the replay of {first_path}: {', '.join(difference)} differ")
        for name, policy in result["policies"].items():
            if name in policies and _served(policies[name]) != _served(policy):
                raise NotOneReplay(f"{name} served other figures in {path} than in {found_in[name]}: "
                                   "not the same first version")
            policies.setdefault(name, policy)
            found_in.setdefault(name, path)
    ordered = {name: policies[name] for name in POLICIES if name in policies}
    record = dict(first, policies=ordered)
    record["flags"] = dict(first["flags"], prequential=dict(first["flags"]["prequential"], policies=list(ordered)))
    record["merged_from"] = {name: str(path) for name, path in found_in.items()}
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.prequential_merge", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, metavar="DIR",
                        help=f"the --out folders of `training.prequential` runs (each holds {RESULT})")
    parser.add_argument("--out", type=Path, required=True, help=f"where the merged {RESULT} and {PLOT} go")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        results = {folder: json.loads((folder / RESULT).read_text()) for folder in args.results}
        record = merged(results)
    except (OSError, json.JSONDecodeError, KeyError, NotOneReplay) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / RESULT).write_text(json.dumps(record, indent=1))
    plot_prequential(record, args.out / PLOT, f"prequential replay of {record['data']}")
    print(format_result(record))
    print(f"\n{args.out / RESULT}\n{args.out / PLOT}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
