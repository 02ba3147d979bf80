"""schemathesis against the served OpenAPI schema: no input may produce a server error."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from tests.acceptance.test_api import served  # noqa: F401  (the running server fixture)

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 40


def test_no_input_produces_a_server_error(served):  # noqa: F811
    client = served[0]
    schema = schemathesis.openapi.from_url(f"{client.base_url}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    failures: list[str] = []
    for operation in operations:

        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck), derandomize=True)
        def fuzz(case):
            case.call_and_validate(checks=[not_a_server_error])

        try:
            fuzz()
        except Exception as exc:  # collect every operation's failure, then report them all
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
    assert not failures, "\n\n".join(failures)
