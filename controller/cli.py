"""The ``celeriac`` console script: the runtime's commands plus the controller's.

``celeriac controller -A module:app`` runs the controller (today: the scheduler);
``celeriac beat -A module:app`` runs the scheduler alone, for those who run beat as its own
container. Both read ``-A``'s ``beat_schedule`` (a Celery app's, unchanged, or a celeriac
app's) and ``--schedule-file``, and keep their state in Redis. ``celeriac topology check``
lists the queues no worker group consumes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime import cli as runtime_cli
from runtime.serve import (
    UsageError,
    configure_logging,
    configure_monitor,
    first_env,
    import_target,
    loop_factory,
)

from . import process, topology, views, watch
from .project import ConfigError, load_project
from .reconciler import DEFAULT_INTERVAL, DEFAULT_STALE_AFTER
from .scheduler import DEFAULT_GRACE, DEFAULT_LEASE_TTL
from .schedules import ScheduleError, parse_interval

__all__ = ["main"]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _add_scheduler_command(commands: Any, name: str, help_text: str) -> None:
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.add_argument(
        "-A", "--app", help="a celeriac App or a Celery app, as module:attribute (CELERIAC_APP)"
    )
    command.add_argument(
        "--schedule-file", type=Path, help="a TOML file of [schedules.<name>] tables"
    )
    command.add_argument(
        "--redis",
        metavar="URL",
        help="the Redis holding the controller's state (CELERIAC_CONTROLLER_REDIS; default: "
        "the app's Redis result backend, else its Redis broker)",
    )
    command.add_argument("-b", "--broker", help="broker URL to publish to (CELERIAC_BROKER_URL)")
    command.add_argument(
        "--lease-ttl", type=_positive, default=DEFAULT_LEASE_TTL,
        help=f"seconds a leader's lease lasts unrenewed (default {DEFAULT_LEASE_TTL:g})",
    )  # fmt: skip
    command.add_argument(
        "--grace", type=_positive, default=DEFAULT_GRACE,
        help="seconds overdue a tick still fires whatever its catch-up policy "
        f"(default {DEFAULT_GRACE:g})",
    )  # fmt: skip
    command.add_argument("--no-task-check", action="store_true",
                         help="fire tasks the app does not register")  # fmt: skip
    command.add_argument("--id", help="this controller's id (default: controller@host.pid)")
    command.add_argument(
        "--http-port", type=int, metavar="PORT",
        help="serve /metrics, /healthz and /readyz on this port (default: off)",
    )  # fmt: skip
    command.add_argument("--prefix", default="celeriac:", help="Redis key prefix")
    command.add_argument("-l", "--loglevel", default="info")
    command.add_argument("--log-format", choices=["json", "console"])
    command.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto")
    if name == "controller":
        _add_reconciler_arguments(command)
    command.set_defaults(run=_cmd_scheduler, loops=_LOOPS[name])


#: The loops each command runs.
_LOOPS = {"controller": ("scheduler", "reconciler"), "beat": ("scheduler",)}


def _duration(text: str) -> float:
    try:
        seconds = parse_interval(text, "duration")
    except ScheduleError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (say 45m, 90s, 2h)")
    return seconds


def _queue_duration(text: str) -> tuple[str, float]:
    queue, _, duration = text.partition("=")
    if not queue or not duration:
        raise argparse.ArgumentTypeError(f"give QUEUE=DURATION, not {text!r}")
    return queue, _duration(duration)


def _add_reconciler_arguments(command: Any) -> None:
    command.add_argument(
        "--run-registry", metavar="URL",
        help="the Redis where workers and producers record runs (CELERIAC_RUN_REGISTRY; "
        "default: the app's run_registry, else the controller's Redis)",
    )  # fmt: skip
    command.add_argument(
        "--stale-after", type=_duration, default=DEFAULT_STALE_AFTER,
        help="how long a run may stay queued before it is skipped (default 45m)",
    )  # fmt: skip
    command.add_argument(
        "--stale-after-queue", type=_queue_duration, action="append", default=[],
        metavar="QUEUE=DURATION", help="the same for one queue (repeatable)",
    )  # fmt: skip
    command.add_argument(
        "--reconcile-interval", type=_duration, default=DEFAULT_INTERVAL,
        help="seconds between two reconciliation passes (default 60)",
    )  # fmt: skip
    command.add_argument(
        "--watch-queues", default="",
        help="more queues to watch, comma-separated (the app's and the workers' are watched)",
    )  # fmt: skip
    command.add_argument(
        "--watch-grace", type=_duration, default=watch.DEFAULT_GRACE,
        help="how long a queue may hold messages with no consumer before the alert (60s)",
    )  # fmt: skip
    command.add_argument(
        "--watch-interval", type=_duration, default=watch.DEFAULT_INTERVAL,
        help="seconds between two looks at the queues (default 10)",
    )  # fmt: skip


def _cmd_scheduler(args: argparse.Namespace) -> int:
    environ = os.environ
    configure_logging(
        args.loglevel, args.log_format or ("console" if sys.stderr.isatty() else "json")
    )
    try:
        project = load_project(
            args.app or first_env(environ, "CELERIAC_APP"),
            broker=args.broker
            or first_env(environ, "CELERIAC_BROKER_URL", "CELERY_BROKER_URL", "BROKER_URL"),
            schedule_file=args.schedule_file,
            check_tasks=not args.no_task_check,
        )
        configure_monitor(project.app, environ)  # fires copied to the monitor queue too
        redis_url = args.redis or first_env(environ, "CELERIAC_CONTROLLER_REDIS")
        redis_url = redis_url or project.redis_url
        if not redis_url:
            raise ConfigError(
                "the controller keeps its state in Redis: give --redis URL (or "
                "CELERIAC_CONTROLLER_REDIS); the app has no Redis result backend or broker"
            )
        if not project.schedules and args.loops == ("scheduler",):
            raise ConfigError("no schedules: the app's beat_schedule and --schedule-file are empty")
    except ConfigError as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 2
    reconciling = "reconciler" in args.loops
    options = process.ControllerOptions(
        redis_url=redis_url,
        controller_id=args.id or process.default_controller_id(),
        loops=args.loops,
        lease_ttl=args.lease_ttl,
        grace=args.grace,
        prefix=args.prefix,
        http_port=args.http_port,
        run_registry_url=(args.run_registry or first_env(environ, "CELERIAC_RUN_REGISTRY")
                          or project.app.run_registry_url) if reconciling else None,
        stale_after=args.stale_after if reconciling else DEFAULT_STALE_AFTER,
        stale_after_by_queue=dict(args.stale_after_queue) if reconciling else {},
        reconcile_interval=args.reconcile_interval if reconciling else DEFAULT_INTERVAL,
        watch_queues=tuple(topology.parse_queues(args.watch_queues)) if reconciling else (),
        watch_grace=args.watch_grace if reconciling else watch.DEFAULT_GRACE,
        watch_interval=args.watch_interval if reconciling else watch.DEFAULT_INTERVAL,
    )  # fmt: skip
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        return runner.run(process.run(project, options))


def _cmd_topology_check(args: argparse.Namespace) -> int:
    try:
        in_use = set(topology.parse_queues(args.queues or ""))
        if args.app:
            target = import_target(args.app)
            if target is None:
                raise ConfigError(f"-A {args.app}: no such app")
            in_use |= topology.queues_of_app(target)
        groups = []
        for path in args.compose or []:
            groups += topology.groups_in_compose(_yaml(path))
        for path in args.values or []:
            groups += topology.groups_in_values(_yaml(path))
        from_env = first_env(os.environ, "WORKER_QUEUES")
        if from_env:
            groups.append(topology.WorkerGroup("environment", topology.parse_queues(from_env)))
        if not in_use:
            raise ConfigError("no queues to check: give --queues and/or --app")
        if not groups:
            raise ConfigError("no worker groups: give --compose, --values or WORKER_QUEUES")
    except (ConfigError, UsageError) as exc:
        print(f"celeriac: {exc}", file=sys.stderr)
        return 2
    result = topology.coverage(in_use, groups)
    for group in groups:
        print(f"group {group.name}: {', '.join(sorted(group.queues)) or '(no queues)'}")
    for name, queues in result.idle.items():
        print(f"warning: group {name} consumes {', '.join(queues)}, which no task uses")
    for queue in result.unconsumed:
        print(f"error: no worker group consumes queue {queue}: its tasks never run")
    if result.ok:
        print(f"ok: all {len(in_use)} queues in use have a consumer")
    return 0 if result.ok else 1


def _yaml(path: Path) -> Any:
    import yaml  # noqa: PLC0415 - only the topology check reads YAML

    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _add_topology_command(commands: Any) -> None:
    topology_command = commands.add_parser(
        "topology", help="check that every queue in use has a worker group consuming it"
    )
    checks = topology_command.add_subparsers(dest="check", required=True, metavar="CHECK")
    check = checks.add_parser(
        "check",
        help="list every queue no worker group consumes (exit 1 if any)",
        description="Compare the queues in use (--queues, the app's routes) with the queues "
        "each worker group consumes (compose services, Helm-style values, WORKER_QUEUES); "
        "print every queue no group consumes and exit 1 if there is one; warn about queues a "
        "group consumes that no task uses.",
    )
    check.add_argument("--queues", help="queues in use, comma-separated")
    check.add_argument("-A", "--app", help="a celeriac App or Celery app whose routes count")
    check.add_argument("--compose", type=Path, action="append", help="a compose file")
    check.add_argument("--values", type=Path, action="append", help="a Helm-style values file")
    check.set_defaults(run=_cmd_topology_check)


def add_commands(commands: Any) -> None:
    """The controller's sub-commands, added to ``celeriac``'s."""
    _add_scheduler_command(
        commands, "controller",
        "run the controller: fire periodic tasks (exactly one of any number of controllers "
        "fires each tick) and skip runs queued too long",
    )  # fmt: skip
    _add_scheduler_command(
        commands, "beat", "fire periodic tasks only (celery beat's place, highly available)"
    )
    _add_topology_command(commands)
    views.add_commands(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """``celeriac``: the runtime's commands and the controller's; the exit status."""
    return runtime_cli.main(argv, extend=add_commands)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
