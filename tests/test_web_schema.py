"""Property test of the web API against its own OpenAPI schema (schemathesis + hypothesis): requests
generated from /openapi.json, valid and invalid, for every operation; none may get a 5xx.

The app serves only the trained MNIST checkpoint, and its job runner is replaced by one that
refuses (no generated spec renders for minutes); spec validation, uploads, the file routes and
the store lookups are the real ones.
"""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from cnnvis.errors import CnnvisError  # noqa: E402


def _refuse(spec, **kw):
    raise CnnvisError("not run in the schema test")


@pytest.fixture(scope="module")
def web_schema(mnist_run, tmp_path_factory, one_thread):
    from cnnvis.web.app import create_app

    app = create_app([str(mnist_run)], tmp_path_factory.mktemp("schema-cache"))
    app.state.jobs.runner = _refuse
    return schemathesis.openapi.from_asgi("/openapi.json", app)


OPERATIONS = ["GET /api/models", "GET /api/models/{mid}/layers", "GET /api/models/{mid}/classes",
              "GET /api/models/{mid}/data/{index}.png", "GET /api/photos",
              "GET /api/photos/{name}.png", "POST /api/uploads", "GET /api/uploads/{sha}.png", "POST /api/classify",
              "POST /api/jobs", "POST /api/jobs/{job_id}/leave",
              "GET /api/jobs/{job_id}", "DELETE /api/jobs/{job_id}", "GET /api/kinds",
              "GET /api/health", "GET /api/results/{key}/{name}"]

# operations whose inputs are unconstrained strings (or none): there is no invalid request to generate
NO_INPUTS = {"GET /api/models", "GET /api/photos", "GET /api/kinds", "GET /api/health", "GET /api/models/{mid}/layers",
             "GET /api/photos/{name}.png", "GET /api/uploads/{sha}.png",
             "DELETE /api/jobs/{job_id}",
             "GET /api/results/{key}/{name}"}


def test_schema_lists_every_api_route(web_schema):
    ops = {f"{r.ok().method.upper()} {r.ok().path}" for r in web_schema.get_all_operations()}
    assert ops == set(OPERATIONS)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_no_server_error_for_any_generated_request(web_schema, operation):
    """Positive and negative examples of each operation (hypothesis, 25 a mode): every answer < 500."""
    from hypothesis import given

    from schemathesis import GenerationMode

    method, path = operation.split(" ")
    op = next(r.ok() for r in web_schema.get_all_operations()
              if r.ok().method.upper() == method and r.ok().path == path)
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        seen = []

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call()
            seen.append(response.status_code)
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code,
                                                 response.text[:300])
            case.validate_response(response, checks=[not_a_server_error])

        if mode == GenerationMode.NEGATIVE and operation in NO_INPUTS:
            from hypothesis.errors import Unsatisfiable

            with pytest.raises(Unsatisfiable):  # nothing to make invalid (hypothesis tried)
                check()
            continue
        check()
        assert seen, f"no request generated for {operation} ({mode})"


# wrong JSON types for a field: one of each kind of JSON value, nested ones included
WRONG_VALUES = [["mnist"], {"a": 1}, 2.5, True, "x", [{"model": ["m"]}]]
JSON_TYPES = {list: "array", dict: "object", int: "integer", float: "number", bool: "boolean", str: "string"}


def _allowed(prop: dict) -> set[str]:
    types = {a.get("type", "string") for a in prop.get("anyOf", [prop])}
    return types | ({"number"} if "integer" in types else set())


def test_job_body_documents_every_field_with_its_types(web_schema):
    """The OpenAPI body of POST /api/jobs names every field of every kind with its JSON types, so the
    generated requests above (schemathesis' negative mode) send wrong types for each of them."""
    from cnnvis.jobs import KINDS

    body = web_schema.raw_schema["paths"]["/api/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fields = {f for c in KINDS.values() for f in c.model_fields}
    assert set(body["properties"]) == fields | {"kind"}
    for kind, cls in KINDS.items():
        for name, prop in cls.model_json_schema()["properties"].items():
            if name in ("model", "weights"):
                continue
            t = body["properties"][name]["type"]
            assert _allowed(prop) - {"number"} <= set([t] if isinstance(t, str) else t), (kind, name)


def test_wrong_json_types_in_every_field_are_4xx(web_schema):
    """Every field of every kind's example spec replaced by each wrong JSON type: a 4xx with one readable
    line (never a 500); a value of a type the field does not take is refused (400)."""
    from cnnvis.jobs import KINDS

    app = web_schema.app
    from fastapi.testclient import TestClient

    n = 0
    with TestClient(app, raise_server_exceptions=False) as c:
        for kind, cls in sorted(KINDS.items()):
            props = cls.model_json_schema()["properties"]
            for name in ["kind", *props]:
                for value in WRONG_VALUES:
                    body = {"kind": kind, **cls.example, name: value}
                    r = c.post("/api/jobs", json=body)
                    n += 1
                    assert r.status_code < 500, (body, r.status_code, r.text[:300])
                    if r.status_code >= 400:
                        d = r.json()["detail"]
                        assert isinstance(d, str) and d and "\n" not in d and "Traceback" not in d, (body, d)
                    allowed = {"string"} if name == "kind" else _allowed(props[name])
                    if name in ("model", "weights"):
                        allowed = {"string"} if name == "model" else set()
                    if JSON_TYPES[type(value)] not in allowed:
                        assert r.status_code == 400, (body, r.status_code, r.text[:300])
                    if name == "model" and not isinstance(value, str):
                        assert "field 'model' must be a string" in r.json()["detail"]
    assert n > 14 * 5 * len(WRONG_VALUES)  # every kind, every field, every wrong type
