"""The `stack` command. Catches StackError once: message to stderr, exit 1 (-v: traceback)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from stack import roles
from stack.config import Role, Settings, describe_settings, get_settings, redact_url
from stack.errors import ConfigError, StackError
from stack.logs import configure_for

log = logging.getLogger("stack.cli")


def _settings_epilog() -> str:
    rows = describe_settings()
    width = max(len(name) for name, _, _ in rows)
    lines = ["environment (also read from .env):"]
    for name, default, description in rows:
        shown = f"[{default}]" if default else ""
        lines.append(f"  {name:<{width}}  {shown} {description}".rstrip())
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stack",
        description="Run the roles of a FastAPI + Celery + Redis + PostgreSQL job system.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks and debug logs")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="start one role (api | worker | beat | flower | migrate | redis)",
        description="Start one role; without ROLE, SERVICE_TYPE picks it. Arguments after the "
        "options pass through to the underlying command (uvicorn, celery worker, ...).",
    )
    run.add_argument("role", nargs="?", choices=[r.value for r in Role])
    run.add_argument("--reload", action="store_true", help="restart on code change or crash (implies --name)")
    run.add_argument(
        "--name",
        help="run under a supervisor named NAME (default with --reload: the role): `stack ps` lists it, "
        "`stack restart NAME` restarts it; the dev Procfile passes each line's name",
    )
    # Set by the --reload supervisor for its api child: one SO_REUSEPORT socket even for one worker.
    run.add_argument("--handover", action="store_true", help=argparse.SUPPRESS)
    ps = commands.add_parser(
        "ps",
        help="list the running dev stack's processes: name, pid, state, uptime, restarts",
        description="Run in the project folder while `make dev` runs: the processes started with "
        "--reload or --name (every line of the dev Procfile).",
    )
    ps.add_argument("--json", action="store_true", help="machine-readable output")
    restart = commands.add_parser(
        "restart",
        help="restart one process of the running dev stack (`stack restart worker`)",
        description="Restart one Procfile line's process and nothing else; wait until it runs again.",
    )
    restart.add_argument("name", help="its name in the Procfile (web, worker, beat, ...)")
    commands.add_parser("config", help="print the effective settings, passwords hidden")
    doctor = commands.add_parser(
        "doctor",
        help="check the broker, database, workers, queues and beat; exit 1 if a check fails",
        description="Run every check against the configured environment (run it with the API's "
        "environment): one line per check, ok / warn / fail, each failure with its fix.",
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--no-canary", action="store_true", help="do not send a test job through each queue")
    doctor.add_argument(
        "--timeout", type=float, default=None, help="seconds per connection (default STACK_BROKER_TIMEOUT)"
    )
    doctor.add_argument("--canary-timeout", type=float, default=15.0, help="seconds to wait for the canaries")
    commands.add_parser(
        "sweep",
        help="run beat's sweep once now and print what it did",
        description="Send jobs that never reached the broker or that it lost, re-queue jobs whose "
        "worker was lost, purge old finished jobs: what beat runs every STACK_SWEEP_INTERVAL, for "
        "when beat is not running (or from cron). Exit 1 if the broker was unreachable.",
    )
    return parser


def _exec(argv: list[str], env: dict[str, str]) -> int:
    """Replace this process with the role, so signals and exit codes are the role's own."""
    environment = {**os.environ, **env}
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "nt":  # no exec on Windows
        return subprocess.call(argv, env=environment)
    os.execvpe(argv[0], argv, environment)
    return 0  # not reached


def _migrate(settings: Settings) -> None:
    from stack.db import engine_from_settings
    from stack.jobs.migrate import upgrade

    log.info("migrating %s", redact_url(settings.effective_database_url))
    engine = engine_from_settings(settings)
    try:
        upgrade(engine)
    finally:
        engine.dispose()


def run_role(role: Role, settings: Settings, extra: Sequence[str], *, handover: bool = False) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if role is Role.MIGRATE:
        _migrate(settings)
        return 0
    if role is Role.REDIS:
        from stack.embedded_redis import embedded_redis_plan, idle

        argv, why = embedded_redis_plan(settings)
        if argv is None:
            idle(why)
        log.info("starting %s", why)
        return _exec([*argv, *extra], {})
    from stack.jobs.celery_app import visibility_timeout
    from stack.jobs.registry import load_registry

    registry = load_registry(settings.kinds)
    visibility_timeout(settings, registry)  # a setting that would run a job twice stops us here
    if role is Role.API:
        from stack.api.auth import resolve_auth

        resolve_auth(settings, warn=False)  # an API open to anyone in production stops here, naming the fix
    if role is Role.API and handover:
        launch = roles.api(settings, extra, handover=True)
    else:
        launch = roles.launch_for(role, settings, extra, all_queues=registry.queues())
    for warning in launch.warnings:
        log.warning(warning)
    if launch.migrate_first:
        _migrate(settings)
    log.info("starting %s: %s", role.value, " ".join(launch.argv))
    return _exec(launch.argv, launch.env)


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    import time

    from stack.doctor import all_passed, run_doctor
    from stack.doctor.report import render_json, render_text

    started = time.monotonic()
    results = run_doctor(
        settings, canary=not args.no_canary, timeout=args.timeout, canary_timeout=args.canary_timeout
    )
    render = render_json if args.json else render_text
    print(render(results, seconds=time.monotonic() - started))
    return 0 if all_passed(results) else 1


def _sweep(settings: Settings) -> int:
    from dataclasses import asdict

    from stack.jobs.celery_app import create_celery
    from stack.jobs.sweep import sweep
    from stack.runtime import build_runtime

    runtime = build_runtime(settings)
    try:
        report = sweep(runtime, create_celery(settings, runtime.registry))
    finally:
        runtime.store.dispose()
    print("sweep: " + ", ".join(f"{name} {value}" for name, value in asdict(report).items()))
    return 1 if report.broker_down else 0


def _supervise(role: Role, settings: Settings, extra: Sequence[str], *, name: str, watch: bool) -> int:
    from stack.api.workers import supported
    from stack.dev.control import Registration
    from stack.dev.readiness import wait_for_broker
    from stack.reload import ApiLauncher, Launcher, ProcessLauncher, Supervisor

    argv = [sys.executable, "-m", "stack", "run", role.value]
    launcher: Launcher
    if role is Role.API and supported():
        launcher = ApiLauncher(
            [*argv, "--handover", *extra],
            reload_argv=roles.api(settings, extra, handover=True).argv,
            port=settings.port,
            workers=settings.web_concurrency,
        )
    else:
        launcher = ProcessLauncher([*argv, *extra])
    needs_broker = role in (Role.API, Role.WORKER, Role.BEAT, Role.FLOWER)
    supervisor = Supervisor(
        launcher,
        name=name,
        watch_dir=Path.cwd() if watch else None,
        registration=Registration(settings.data_dir, name=name, role=role.value),
        before_first_start=(lambda: wait_for_broker(settings, timeout=settings.broker_wait))
        if needs_broker
        else None,
    )
    supervisor.install_signal_handlers()
    return supervisor.run()


def _ps(settings: Settings, *, as_json: bool) -> int:
    import json
    from dataclasses import asdict

    from stack.dev.control import find, render, running

    states = running(settings.data_dir)
    if not states:
        find(settings.data_dir, "")  # raises the error that says how to start the stack
    print(json.dumps([asdict(s) for s in states]) if as_json else render(states))
    return 0


def _restart(settings: Settings, name: str) -> int:
    from stack.dev.control import restart

    before, after = restart(settings.data_dir, name)
    print(f"{name}: restarted (pid {before.pid or '-'} -> {after.pid})")
    return 0


def _resolve_role(name: str | None, settings: Settings) -> Role:
    if name:
        return Role(name)
    if settings.service_type:
        return settings.service_type
    raise ConfigError(
        "no role to run: pass one (`stack run api`) or set SERVICE_TYPE to one of "
        + ", ".join(r.value for r in Role)
    )


def _config_value(name: str, value: object) -> object:
    """A setting as `stack config` prints it: the output gets pasted into tickets and chats, so
    secrets are masked and URLs redacted (stack/config.py `_shown` hides the same in errors)."""
    if value is None or value == "" or value == []:
        return value
    if name == "secret_key":
        return "***"
    if name == "flower_basic_auth":
        user, colon, _password = str(value).partition(":")
        return f"{user}:***" if colon else "***"  # no colon: the whole value may be the password
    if name == "api_tokens" and isinstance(value, list):
        return f"*** ({len(value)} token{'' if len(value) == 1 else 's'})"
    if isinstance(value, str) and "://" in value:
        return redact_url(value)
    if isinstance(value, list):
        return [redact_url(v) if isinstance(v, str) and "://" in v else v for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra[:1] == ["--"]:
        extra = extra[1:]
    try:
        settings = get_settings()
        # Doctor's report is its output; library chatter at INFO would interleave with it.
        quiet = "warning" if args.command == "doctor" else settings.log_level
        configure_for(settings, level="debug" if args.verbose else quiet)
        if args.command == "doctor":
            return _doctor(args, settings)
        if args.command == "sweep":
            return _sweep(settings)
        if args.command == "config":
            for name, value in settings.model_dump(mode="json").items():
                print(f"{name} = {_config_value(name, value)}")
            return 0
        if args.command == "ps":
            return _ps(settings, as_json=args.json)
        if args.command == "restart":
            return _restart(settings, args.name)
        role = _resolve_role(args.role, settings)
        if args.reload or args.name:
            return _supervise(role, settings, extra, name=args.name or role.value, watch=args.reload)
        return run_role(role, settings, extra, handover=args.handover)
    except StackError as exc:
        if args.verbose:
            log.exception("stack failed")
        print(f"stack: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
