"""Contract fuzzing: schemathesis generates requests from the served `/openapi.json` (valid and invalid ones, for
every operation, and chains of them along the document's links) and runs all of its checks on every response: no
server error, every status code, content type and header documented, every body matching its schema, invalid
data refused, a private read refused without its read token.

Reads of requests and policy details need an enrolled operator's read token for exactly the request sent: the
generated request carries a marker instead, and a WSGI middleware in front of the app signs the real path and
query (schemathesis' auth check takes the marker away and must then get 401). Write bodies are signed JWS the
generator cannot forge: generated ones are refused (400, 401, 415), which is what the checks verify for them.

`APPLIANCE_CONTRACT_EXAMPLES` sets the examples per operation (a few in `make test`; `bench/contract.py` runs
at least 10,000 cases and prints the count) and `APPLIANCE_CONTRACT_COUNT` names a file the number of requests
made is added to.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from appliance.api import create_app
from appliance.api.openapi import document
from appliance.domain import reads
from tests.helpers import Harness, reading

EXAMPLES = int(os.environ.get("APPLIANCE_CONTRACT_EXAMPLES", "25"))
STEPS = int(os.environ.get("APPLIANCE_CONTRACT_STEPS", "8"))
MARK = "Bearer sign-this-request"
# Every check runs. One is told what the schema cannot say: a JWS that is well formed JSON but no signature, or
# a proof asked for a size the log does not have, is schema-valid and still refused with 400 (or 422 by policy),
# so positive_data_acceptance accepts those two besides the defaults.
CONFIG = SchemathesisConfig.from_dict({"checks": {"positive_data_acceptance": {
    "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]}}})
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                    derandomize=os.environ.get("APPLIANCE_CONTRACT_RANDOM") is None, database=None)


def signing(app: Any, sign: Callable[[str, str], str], counted: list[int]) -> Any:
    """The WSGI app, replacing the marker by `sign`'s read token for the path and query as the app sees them."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> Any:
        counted[0] += 1
        if environ.get("HTTP_AUTHORIZATION") == MARK:
            path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
            environ["HTTP_AUTHORIZATION"] = sign(environ["REQUEST_METHOD"],
                                                 reads.target_of(path, environ.get("QUERY_STRING", "")))
        return app(environ, start_response)

    return wsgi


def _count(requests: int, cases: int) -> None:
    target = os.environ.get("APPLIANCE_CONTRACT_COUNT")
    if target:
        with open(target, "a", encoding="ascii") as f:
            f.write(f"{requests} {cases}\n")


def _schema(h: Harness, request: pytest.FixtureRequest) -> Any:
    # generated requests all come from one address: budgets that would turn them into 429 are lifted (the
    # budgets have tests of their own); everything else is the served app
    h.app_ctx.settings = replace(h.app_ctx.settings, client_auth_failures_burst=10**9,
                                 client_writes_per_second=10**6, client_writes_in_progress=10**6)
    counted = [0, 0]  # requests the app received (the checks send some of their own), generated cases
    app = signing(reading(create_app(h.app_ctx)), lambda m, t: h.read_token("grace", m, t), counted)
    request.node.contract_counted = counted
    request.addfinalizer(lambda: _count(counted[0], counted[1]))
    return schemathesis.openapi.from_wsgi("/openapi.json", app, config=CONFIG)


def _authorize(case: Any, mode: GenerationMode = GenerationMode.POSITIVE) -> None:
    """A valid private read gets the marker the middleware signs. An invalid one keeps whatever the generator made
    up (no credentials, or made-up ones): the service must refuse it, which schemathesis' auth check verifies."""
    if "security" in case.operation.definition.raw and mode.is_positive:
        case.headers = {**(case.headers or {}), "Authorization": MARK}


def _has_inputs(path: str, method: str) -> bool:
    op = document()["paths"][path][method]
    return bool(op.get("parameters") or op.get("requestBody") or op.get("security"))


# (path, method, mode): invalid requests for every operation that takes any input (there is nothing to make
# invalid about a bare GET /healthz)
CASES = [(path, method, mode) for path, ops in document()["paths"].items() for method in ops
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if mode.is_positive or _has_inputs(path, method)]


@pytest.mark.parametrize(("path", "method", "mode"), CASES,
                         ids=[f"{m.upper()} {p} {'valid' if g.is_positive else 'invalid'}" for p, m, g in CASES])
def test_every_operation_keeps_its_contract(h: Harness, request: pytest.FixtureRequest, path: str, method: str,
                                            mode: GenerationMode) -> None:
    operation = _schema(h, request)[path][method.upper()]

    @given(case=operation.as_strategy(generation_mode=mode))
    @SETTINGS
    def run(case: Any) -> None:
        request.node.contract_counted[1] += 1
        _authorize(case, mode)
        case.call_and_validate()

    run()


def test_chains_of_calls_along_the_links_keep_the_contract(h: Harness, request: pytest.FixtureRequest) -> None:
    class Machine(_schema(h, request).as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            request.node.contract_counted[1] += 1
            _authorize(case)

    run_state_machine_as_test(Machine, settings=settings(SETTINGS, stateful_step_count=STEPS,
                                                         max_examples=max(5, EXAMPLES // 5)))


def test_the_marker_is_never_a_token(h: Harness) -> None:
    """Without the middleware the marker is what it looks like: not a read token."""
    assert h.anonymous().get("/v1/policy", headers={"Authorization": MARK}).status_code == 401

