"""schemathesis against the served OpenAPI schema: no input may produce a server error."""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from tests.acceptance.test_api import served  # noqa: F401  (the running server fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(served):  # noqa: F811
    client = served[0]
    return schemathesis.openapi.from_url(f"{client.base_url}/schema/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_no_input_produces_a_server_error(case):
    case.call_and_validate(checks=[not_a_server_error])
