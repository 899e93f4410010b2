"""Schemathesis fuzzes every operation the running API documents, over HTTP with a real key:
no answer may be a 5xx, and every answer must be one the document declares, with the declared
media type, headers and body schema.

The operations come from the served `/openapi.json`, so a route added later is fuzzed without
touching this file. Each operation gets data that fits its schema and data that does not; the
stateful run follows the document's links (create → read → list → delete). Examples are few by
default so the run stays short; `CADENZA_SCHEMATHESIS_EXAMPLES=200` fuzzes harder
(RELIABILITY.md records such a run)."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Flaky, Unsatisfiable
from schemathesis import GenerationMode, checks
from schemathesis.specs.openapi import checks as openapi_checks

from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = int(os.environ.get("CADENZA_SCHEMATHESIS_EXAMPLES", "6"))

# What every answer must satisfy: no server error, and the document describes it exactly.
CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]

# No shrinking (a failing case is reported as found, so a failing run is as short as a passing
# one), no example database in the checkout, the same cases every run unless asked otherwise.
SETTINGS = settings(
    max_examples=EXAMPLES,
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    database=None,
    derandomize=os.environ.get("CADENZA_SCHEMATHESIS_RANDOM") is None,
    suppress_health_check=list(HealthCheck),
)


def _schema(stack: Stack) -> Any:
    """The served document, called as an owner of its own (`fuzzer`) so that nothing the run
    makes or deletes touches the data of the other tests sharing the stack."""
    key = stack.other_key("fuzzer")
    config = schemathesis.config.SchemathesisConfig.from_dict(
        {"headers": {"Authorization": f"Bearer {key}"}, "request-timeout": 30}
    )
    return schemathesis.openapi.from_url(f"{stack.api_url}/openapi.json", config=config)


def test_every_operation_answers_as_documented(stack: Stack) -> None:
    """Each operation, with data that fits its schema and data that does not."""
    schema = _schema(stack)
    cases: Counter[str] = Counter()
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @SETTINGS
            def call(case: Any) -> None:
                cases[case.operation.label] += 1
                case.call_and_validate(checks=CHECKS)

            try:
                call()
            except Unsatisfiable:  # nothing to break: e.g. no parameter, or any string fits
                continue
            except (Exception, BaseExceptionGroup) as failure:  # every operation runs
                failures[f"{operation.label} ({mode})"] = str(failure)
    print(f"{len(cases)} operations, {cases.total()} cases")
    assert not failures, "\n\n".join(f"== {k}\n{v}" for k, v in failures.items())
    assert len(cases) == sum(len(item) for item in schema.raw_schema["paths"].values())


def test_linked_operations_answer_as_documented(embedded_stack: Stack) -> None:
    """Sequences of calls along the document's links: what one call creates, the next reads,
    lists or deletes; every answer on the way passes the same checks."""
    schema = _schema(embedded_stack)
    links = schema.raw_schema["paths"]["/v1/datasets"]["post"]["responses"]["201"]["links"]
    assert links["datasets_get"]["parameters"] == {"dataset_id": "$response.body#/id"}
    machine = schema.as_state_machine()
    failures: list[str] = []

    class Fuzzer(machine):  # type: ignore[misc,valid-type]
        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            try:
                case.validate_response(response, checks=CHECKS)
            except (AssertionError, BaseExceptionGroup) as failure:  # kept, then reported
                failures.append(str(failure))

    # Which calls a step may make depends on what the server answered before (a link needs a
    # created resource), so Hypothesis may find it cannot replay a sequence exactly and stop
    # early (`Flaky`); every answer it got was checked above all the same.
    with contextlib.suppress(Flaky):
        Fuzzer.run(settings=settings(SETTINGS, max_examples=EXAMPLES * 2, stateful_step_count=6))
    assert not failures, "\n\n".join(failures)


def test_text_with_nul_is_refused_not_a_server_error(stack: Stack) -> None:
    """PostgreSQL cannot store U+0000 in text (the fuzzer found the 500 it caused): a name or
    an id holding it is the client's mistake on both deployments, never a server error."""
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    created = httpx.post(
        f"{stack.api_url}/v1/datasets", json={"name": "a\x00b"}, headers=headers, timeout=30
    )
    found = httpx.get(f"{stack.api_url}/v1/datasets/a%00b", headers=headers, timeout=30)
    on_postgres = "CADENZA_DATABASE_URL" in stack.env  # SQLite stores U+0000; PostgreSQL can't
    assert created.status_code == (422 if on_postgres else 201), created.text
    assert found.status_code in (404, 422), found.text
    if created.status_code == 422:
        assert "NUL" in created.json()["error"]["message"]
    else:
        httpx.delete(f"{stack.api_url}/v1/datasets/{created.json()['id']}", headers=headers)
