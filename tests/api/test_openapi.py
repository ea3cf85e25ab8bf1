"""/openapi.json as a real `attimo serve` answers it is a valid OpenAPI 3.1
document that standard tools can read: openapi-spec-validator accepts it, every
$ref resolves inside it, every path parameter is declared, status codes are
strings and operations name the security schemes they take."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

METHODS = {"get", "put", "post", "delete", "patch", "head", "options"}


@pytest.fixture(scope="module")
def document(api):
    with api.client() as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    return answer.json()


def refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(document: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)  # raises on any error


def test_every_ref_resolves_under_components(document):
    found = list(refs(document))
    assert "#/components/schemas/WireEvent" in found  # msgspec's nested definitions are components too
    assert not [ref for ref in found if not ref.startswith("#/components/")]
    for ref in found:
        resolve(document, ref)
    assert "$defs" not in str(document)


def test_every_path_parameter_is_declared(document):
    for path, method, operation in operations(document):
        in_path = set(re.findall(r"{([^}]+)}", path))
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert in_path == declared, (method, path)
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                assert parameter["required"] is True


def test_status_codes_are_strings_and_every_operation_answers_something(document):
    for path, method, operation in operations(document):
        assert operation["responses"], (method, path)
        for code in operation["responses"]:
            assert isinstance(code, str) and re.fullmatch(r"[1-5]\d\d", code), (method, path, code)


def test_operations_name_the_security_schemes_they_take(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["siteKey"] == {"type": "apiKey", "in": "header", "name": "X-Attimo-Key",
                                  "description": schemes["siteKey"]["description"]}
    assert schemes["serverToken"]["scheme"] == "bearer"
    for path, method, operation in operations(document):
        for requirement in operation.get("security", []):
            assert set(requirement) <= set(schemes), (method, path)
    paths = document["paths"]
    assert paths["/v1/decide"]["post"]["security"] == [{"siteKey": []}, {"serverToken": []}]
    assert paths["/v1/admin/catalog"]["post"]["security"] == [{"serverToken": []}]
    assert paths["/v1/people/{person}"]["delete"]["security"] == [{"serverToken": []}]
    assert "security" not in paths["/healthz"]["get"]


def test_bodies_are_described_for_every_post_that_reads_one(document):
    without_body = {("/v1/suppressions/{channel}/{address}", "put"),  # the path says it all
                    ("/v1/admin/broadcasts/{broadcast_id}/start", "post"),
                    ("/v1/admin/broadcasts/{broadcast_id}/cancel", "post"),
                    ("/v1/admin/catalog/versions/{n}/restore", "post")}
    for path, method, operation in operations(document):
        if method in ("post", "put") and (path, method) not in without_body:
            assert operation["requestBody"]["content"], (method, path)
    paths = document["paths"]
    assert resolve(document, paths["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"])["required"] == ["events"]
    assert set(paths["/v1/admin/catalog"]["post"]["requestBody"]["content"]) == {"application/yaml", "application/json"}
    batch = paths["/v1/batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert resolve(document, batch["$ref"])["required"] == ["batch"]


@pytest.mark.parametrize(("path", "allowed"), [
    ("/v1/people/p-1", {"GET", "DELETE"}),
    ("/v1/suppressions/email/ada@example.com", {"PUT", "DELETE"}),
])
def test_a_method_a_path_lacks_is_405_naming_every_method_it_has(api, path, allowed):
    """Schemathesis found these paths answering 405 with an Allow header that
    named one of their two methods: they were two routes."""
    with api.server() as client:
        answer = client.request("PATCH", path)
    assert answer.status_code == 405
    assert {m.strip() for m in answer.headers["allow"].split(",")} - {"HEAD"} == allowed


def test_marking_an_inbox_message_with_a_body_not_an_object_is_the_documented_422(api, document):
    responses = document["paths"]["/v1/inbox/{message_id}/read"]["post"]["responses"]
    with api.server() as client:
        answer = client.post("/v1/inbox/m-1/read", json=[None, None])
    assert answer.status_code == 422 and answer.json()["field"] == "body"
    assert "422" in responses
