"""The OpenAPI schema documents the error statuses and examples that the routes produce."""

from __future__ import annotations


def test_every_v1_operation_documents_errors(app_client):
    schema = app_client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, operation in operations.items():
            documented = set(operation["responses"])
            for status in ("401", "403", "404", "422"):
                assert status in documented, f"{method.upper()} {path} does not document {status}"
            assert operation.get("security"), f"{method.upper()} {path} does not declare the bearer key"


def test_uploads_document_413(app_client):
    paths = app_client.get("/openapi.json").json()["paths"]
    assert "413" in paths["/v1/procedures/{procedure_id}/images"]["post"]["responses"]
    assert "413" in paths["/v1/search"]["post"]["responses"]


def test_search_documents_both_bodies(app_client):
    body = app_client.get("/openapi.json").json()["paths"]["/v1/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["application/json"]["schema"] == {"$ref": "#/components/schemas/SearchRequest"}


def test_request_schemas_have_examples(app_client):
    schemas = app_client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["SearchRequest"]["examples"]
    assert schemas["ReviewCreate"]["examples"]
    assert schemas["ErrorPublic"]
    assert schemas["ProcedureCreate"]["properties"]["site"]["examples"]


def test_pages_are_not_in_the_api_schema(app_client):
    paths = app_client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/ui")]
