"""``python -m benchmarks``: every scenario on every broker, celeriac beside its peers.

    python -m benchmarks [--brokers amqp,redis,sqs,memory] [--tiny] [--out results]
                         [--scenarios noop,results,io,latency,mixed,eta]
                         [--families celeriac,celery,aio-celery,taskiq,floor]
                         [--compare OLD.json [--tolerance 0.1]]

Writes ``<out>/<UTC time>/results.json``, ``results.md``, ``throughput.png`` and
``latency.png``, and prints the tables; with ``--compare``, then each ratio's change from an
earlier run's ``results.json`` (:mod:`benchmarks.compare`). ``--tiny`` runs every scenario at
a token size: it proves the harness, it measures nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import redis.asyncio

from . import brokers as broker_kinds
from . import compare, report, sqs_server
from .scenarios import SCENARIOS, TINY, Context, Scale
from .suite import default_plan, machine, run, steps, version_of


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--brokers", default=",".join(broker_kinds.default_kinds()),
                        help="amqp, redis, sqs, memory (comma-separated; default: all, sqs "
                        "where aiobotocore and moto are installed)")  # fmt: skip
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="default: all")
    parser.add_argument(
        "--families", help="only these: celeriac, celery, aio-celery, taskiq, floor"
    )
    parser.add_argument("--tiny", action="store_true", help="token sizes: proves the harness")
    parser.add_argument("--out", type=Path, default=Path("results"), help="default: results/")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="OLD.json",
        help="afterwards, print each ratio's change from this earlier run",
    )
    parser.add_argument("--tolerance", type=float, default=compare.DEFAULT_TOLERANCE,
                        help="with --compare: mark ratios that moved by more than this "
                        "fraction (default 0.1)")  # fmt: skip
    return parser


async def _broker_versions(brokers: dict[str, str]) -> dict[str, str]:
    found = {}
    if "amqp" in brokers:
        async with await aio_pika.connect(brokers["amqp"]) as connection:
            properties = connection.transport.connection.server_properties  # type: ignore[union-attr]
            found["rabbitmq"] = str(properties.get("version"))
    if "redis" in brokers:
        async with redis.asyncio.Redis.from_url(brokers["redis"]) as client:
            found["redis"] = str((await client.info("server"))["redis_version"])
    if "sqs" in brokers:
        given = os.environ.get(sqs_server.ENV_URL)
        found["sqs"] = f"{sqs_server.ENV_URL}" if given else f"moto {version_of('moto')}"
    return found


async def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; exit status 1 if any row failed."""
    args = _parser().parse_args(argv)
    kinds = [kind.strip() for kind in args.brokers.split(",") if kind.strip()]
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [k for k in kinds if k not in broker_kinds.KINDS] + [
        s for s in scenarios if s not in SCENARIOS
    ]
    if unknown:
        print(
            f"python -m benchmarks: unknown broker or scenario: {', '.join(unknown)}",
            file=sys.stderr,
        )
        return 2
    if "sqs" in kinds and not sqs_server.available():
        print("python -m benchmarks: sqs needs aiobotocore and moto[server] (pip install -e "
              f"'.[dev]'), or {sqs_server.ENV_URL}", file=sys.stderr)  # fmt: skip
        return 2
    old_rows = None
    if args.compare is not None:  # read it first: a typo should not cost a whole run
        try:
            old_rows = compare.load_rows(args.compare)
        except (OSError, ValueError) as exc:
            print(f"python -m benchmarks: --compare: {exc}", file=sys.stderr)
            return 2
    scale = TINY if args.tiny else Scale()
    plan = default_plan((20,) if args.tiny else (100, 1_000, 10_000))
    families = args.families.split(",") if args.families else None
    todo = steps(plan, scenarios, kinds, families)
    started = datetime.now(UTC)
    async with broker_kinds.urls(kinds) as brokers:
        ctx = Context(brokers=brokers, redis=broker_kinds.REDIS_URL, scale=scale)
        rows = await run(ctx, todo, show=not args.quiet)
        versions = await _broker_versions(brokers)
    report.add_ratios(rows)
    notes = {kind: broker_kinds.NOTES[kind] for kind in kinds if kind in broker_kinds.NOTES}
    folder = args.out / started.strftime("%Y%m%dT%H%M%SZ")
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)]),
        "started": started.isoformat(), "scale": dataclasses.asdict(scale),
        "machine": {**machine(), "brokers": versions}, "notes": notes,
    }  # fmt: skip
    report.write_json(folder / "results.json", rows, meta)
    (folder / "results.md").write_text(report.markdown(rows, notes))
    charts = report.charts(rows, folder)
    report.tables(rows, notes)
    print(f"\nwritten: {folder / 'results.json'}, {folder / 'results.md'}, "
          f"{', '.join(str(chart) for chart in charts)}")  # fmt: skip
    if old_rows is not None:
        compare.show(compare.changes(old_rows, rows), args.tolerance)
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
