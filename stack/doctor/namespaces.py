"""Whether other Celery apps share this app's Redis database, judged from kombu's binding tables
(probe.celery_bindings): every app's keys start with its `global_keyprefix`, ours with the
namespace (STACK_NAMESPACE). Apps with different prefixes never see each other's messages; apps
with none mix every queue they have in common (`default`, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

from stack.doctor.result import CheckResult, ok, warn

NAME = "namespace"
OWN_DB = "or give this app a Redis database of its own (REDIS_URL=redis://host:6379/<n>)"


def check_namespace(
    bindings: Mapping[str, Set[str]], *, namespace: str, queues: Iterable[str]
) -> CheckResult:
    """`queues`: this app's own (every kind's, and `default`)."""
    own = f"{namespace}:" if namespace else ""
    others = {prefix: found for prefix, found in bindings.items() if prefix != own}
    strangers = sorted(bindings.get(own, set()) - set(queues))
    data = {
        "namespace": namespace,
        "others": {p: sorted(q) for p, q in sorted(others.items())},
        "strangers": strangers,
    }
    if strangers:
        return warn(
            NAME,
            f"queues {', '.join(strangers)} are bound under {_describe(own, set())}, yet none of this "
            "app's kinds uses them: another Celery app (or an older version of this one) shares "
            "this app's keys, and queues of the same name would mix",
            f"give each app its own STACK_NAMESPACE, {OWN_DB}",
            **data,
        )
    if not others:
        return ok(NAME, f"namespace {namespace!r}: no other Celery app in this Redis database", **data)
    found = "; ".join(_describe(prefix, queues) for prefix, queues in sorted(others.items()))
    if not namespace:
        return warn(
            NAME,
            f"other Celery apps share this Redis database ({found}) and STACK_NAMESPACE is empty: "
            "queues of the same name mix, so either app may run the other's jobs",
            f"set STACK_NAMESPACE=<this app's name> for the API and every worker, {OWN_DB}",
            **data,
        )
    return warn(
        NAME,
        f"other Celery apps share this Redis database ({found}); namespace {namespace!r} keeps "
        "their messages apart from ours",
        "nothing to do if they are other apps; if one is this app under another STACK_NAMESPACE, its "
        f"API and workers disagree: set one STACK_NAMESPACE everywhere ({OWN_DB})",
        **data,
    )


def _describe(prefix: str, queues: Set[str]) -> str:
    who = f"prefix {prefix!r}" if prefix else "no prefix"
    return f"{who}: queues {', '.join(sorted(queues))}" if queues else who
