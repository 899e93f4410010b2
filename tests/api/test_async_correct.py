"""The API process is async-correct: no `async def` runs database, session or object-store
code on the event loop (one such call stalls every request of the process while it waits).

Two checks. Statically, every `async def` in `cadenza_api` (routes, dependencies, helpers)
is read and any call it makes itself (not one it hands to a worker thread) is refused when it
is a method of a session or a store, or a sync function that takes a session or a store. At
run time, tests/api/conftest.py fails any SQL statement issued on a thread that runs an event
loop, for every request of this directory's tests. Each check is shown to fail on an example.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import pkgutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.routing import APIRoute
from sqlalchemy import text

import cadenza_api
from cadenza.config import Settings
from cadenza.db.session import session_factory
from cadenza_api.app import create_app
from tests.api.conftest import BlockingCallOnEventLoop

# Annotations that make a parameter a session or a store (their `Annotated` aliases included).
BLOCKING_TYPES = ("Session", "SessionDep", "ObjectStore", "StoreDep")
# Parameter names of sync functions that do database or store work with what they are given.
BLOCKING_PARAMS = ("session", "store")
# Session methods that only look at the session's own state: no connection, no I/O.
HARMLESS_SESSION_METHODS = {"in_transaction"}
# Calls that hand a function and its arguments (a session among them) to a worker thread.
HAND_OFFS = {"run_sync", "to_thread", "partial", "run_in_threadpool"}


def _modules() -> Iterator[ModuleType]:
    yield cadenza_api
    for info in pkgutil.walk_packages(cadenza_api.__path__, "cadenza_api."):
        if info.name != "cadenza_api.__main__":
            yield importlib.import_module(info.name)


def _blocking_function(obj: Any) -> bool:
    """A sync function that takes a session or a store (so it will use it)."""
    if not inspect.isfunction(obj) or inspect.iscoroutinefunction(obj):
        return False
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.name in BLOCKING_PARAMS or any(t in str(p.annotation) for t in BLOCKING_TYPES)
        for p in params
    )


def _own_calls(fn: ast.AsyncFunctionDef) -> Iterator[tuple[ast.Call, bool]]:
    """The calls the coroutine makes itself, each with whether it is awaited: not those in
    nested functions or lambdas, which run wherever they are handed (a worker thread)."""
    todo: list[ast.AST] = list(fn.body)
    awaited = set()
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Await) and isinstance(node.value, ast.Call):
            awaited.add(id(node.value))
        if isinstance(node, ast.Call):
            yield node, id(node) in awaited
        todo.extend(ast.iter_child_nodes(node))


def _blocking_names(fn: ast.AsyncFunctionDef) -> set[str]:
    """Names bound to a session or a store: annotated parameters, `async with X.session() as
    name`, and `name = ...store` / `...session` attribute reads."""
    names = set()
    for arg in [*fn.args.args, *fn.args.kwonlyargs]:
        if arg.annotation is not None and any(
            t in ast.unparse(arg.annotation) for t in BLOCKING_TYPES
        ):
            names.add(arg.arg)
    for node in ast.walk(fn):
        if isinstance(node, ast.AsyncWith | ast.With):
            for item in node.items:
                call = item.context_expr
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and call.func.attr == "session"
                    and isinstance(item.optional_vars, ast.Name)
                ):
                    names.add(item.optional_vars.id)
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in BLOCKING_PARAMS
        ):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def violations(source: str, namespace: dict[str, Any], where: str) -> list[str]:
    """Each blocking call made directly by an `async def` in `source`."""
    found = []
    for fn in ast.walk(ast.parse(textwrap.dedent(source))):
        if not isinstance(fn, ast.AsyncFunctionDef):
            continue
        blocking = _blocking_names(fn)
        for call, awaited in _own_calls(fn):
            f = call.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            given = [
                a.id
                for a in [*call.args, *(k.value for k in call.keywords)]
                if isinstance(a, ast.Name) and a.id in blocking
            ]
            if given and not awaited and name not in HAND_OFFS:
                # A sync call given a session or store here uses it here (an awaited call is
                # a coroutine, held to these same rules where it is defined).
                found.append(f"{where}: {fn.name} passes {given[0]} to {ast.unparse(f)}()")
                continue
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                if f.value.id in blocking and f.attr not in HARMLESS_SESSION_METHODS:
                    found.append(f"{where}: {fn.name} calls {f.value.id}.{f.attr}()")
                    continue
                owner = namespace.get(f.value.id)
                target = getattr(owner, f.attr, None) if inspect.ismodule(owner) else None
            elif isinstance(f, ast.Name):
                target = namespace.get(f.id)
            else:
                continue
            if _blocking_function(target):
                found.append(f"{where}: {fn.name} calls {ast.unparse(f)}() on the event loop")
    return found


def test_no_async_def_of_the_api_runs_blocking_code() -> None:
    found = []
    for module in _modules():
        source = Path(inspect.getfile(module)).read_text()
        found += violations(source, vars(module), module.__name__)
    assert not found, "\n".join(found)


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif (router := getattr(route, "original_router", None)) is not None:
            yield from _api_routes(router.routes)  # an included router


def test_every_async_route_and_dependency_is_one_the_check_reads(tmp_path: Path) -> None:
    """The static check reads `cadenza_api`; the app's coroutine routes and dependencies must
    all live there (or be FastAPI's own, which do no I/O)."""
    app = create_app(Settings(data_dir=tmp_path))
    seen, todo = set(), [r.dependant for r in _api_routes(app.routes)]
    while todo:
        dep = todo.pop()
        todo += dep.dependencies
        call = dep.call
        if call is None or not (
            inspect.iscoroutinefunction(call)
            or inspect.isasyncgenfunction(call)
            or inspect.iscoroutinefunction(type(call).__call__)
        ):
            continue
        module = getattr(call, "__module__", None) or type(call).__module__
        seen.add(module.split(".")[0])
    assert seen <= {"cadenza_api", "fastapi"}, seen
    assert "cadenza_api" in seen


def test_the_static_check_finds_blocking_calls() -> None:
    from cadenza.db.repo import get_owned

    source = """
    async def by_method(session: SessionDep):
        session.execute("SELECT 1")

    async def by_function(s: Session, job_id: str):
        return get_owned(s, Job, job_id, "o")

    async def opened(db):
        async with db.session() as s:
            s.commit()

    async def given_to_a_method(request, session: SessionDep, token: str):
        return request.app.state.key_cache.lookup(session, token)

    async def handed_to_a_thread(session: SessionDep):
        await anyio.to_thread.run_sync(get_owned, session, Job, "j", "o")
        def inner():
            session.commit()
        await anyio.to_thread.run_sync(inner)
    """
    found = violations(source, {"get_owned": get_owned}, "example")
    assert [f.split(": ")[1].split(" ")[0] for f in found] == [
        "by_method",
        "by_function",
        "opened",
        "given_to_a_method",
    ]


def test_the_runtime_check_fails_sql_on_the_event_loop(tmp_path: Path) -> None:
    factory = session_factory(Settings(data_dir=tmp_path).resolved_database_url)

    def query() -> None:
        with factory() as s:
            s.execute(text("SELECT 1"))

    async def on_the_loop() -> None:
        query()

    async def on_a_thread() -> None:
        await asyncio.to_thread(query)

    asyncio.run(on_a_thread())
    with pytest.raises(BlockingCallOnEventLoop):
        asyncio.run(on_the_loop())
