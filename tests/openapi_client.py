"""A client built from an OpenAPI document alone, as a generated client is: it sends only the
query parameters an operation declares, its request body in the media type the document gives
(a multipart form: the files go in the fields whose schema is binary), the bearer token where
the operation's security asks for it; and reads an answer only through the schema the document
declares for that status (jsonschema, OpenAPI 3.1 dialect), failing on anything else."""
from __future__ import annotations

from pathlib import Path

import httpx
from openapi_schema_validator import OAS31Validator

METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


class SchemaClient:
    def __init__(self, http: httpx.Client, spec: dict, token: str | None = None):
        self.http, self.spec, self.token = http, spec, token

    def operations(self):
        """(path, method, operation) of every operation the document has."""
        for path, item in self.spec["paths"].items():
            for method in METHODS:
                if method in item:
                    yield path, method, item[method]

    def resolve(self, schema: dict) -> dict:
        while "$ref" in schema:
            node = self.spec
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def bearer_scheme(self, operation: dict) -> str | None:
        """The HTTP bearer scheme the operation's security names, if any."""
        schemes = self.spec.get("components", {}).get("securitySchemes", {})
        for requirement in operation.get("security", self.spec.get("security", [])):
            for name in requirement:
                s = schemes[name]
                if s["type"] == "http" and s["scheme"].lower() == "bearer":
                    return name
        return None

    def file_fields(self, path: str, method: str) -> list[str]:
        """The multipart fields of the operation that take a file (a binary string)."""
        body = self.spec["paths"][path][method].get("requestBody")
        if not body or "multipart/form-data" not in body["content"]:
            return []
        schema = self.resolve(body["content"]["multipart/form-data"]["schema"])
        return [name for name, p in schema.get("properties", {}).items()
                if p.get("type") == "string" and ("contentMediaType" in p or p.get("format") == "binary")]

    def call(self, path: str, method: str, params: dict | None = None, files: dict[str, Path] | None = None,
             authorize: bool = True) -> httpx.Response:
        operation = self.spec["paths"][path][method]
        declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
        unknown = set(params or {}) - set(declared)
        assert not unknown, f"{method.upper()} {path} declares no query parameter {sorted(unknown)}"
        query = {k: str(v).lower() if isinstance(v, bool) else v for k, v in (params or {}).items()}
        headers = {}
        if authorize and self.bearer_scheme(operation) and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        multipart = None
        body = operation.get("requestBody")
        if body is not None:
            assert list(body["content"]) == ["multipart/form-data"], body["content"].keys()
            schema = self.resolve(body["content"]["multipart/form-data"]["schema"])
            fields = self.file_fields(path, method)
            missing = [f for f in schema.get("required", []) if f not in (files or {})]
            assert not missing, f"{method.upper()} {path} requires {missing}"
            assert set(files or {}) <= set(fields), f"{method.upper()} {path} takes files only in {fields}"
            multipart = {name: (p.name, p.read_bytes()) for name, p in (files or {}).items()}
        return self.http.request(method.upper(), path, params=query, headers=headers, files=multipart)

    def response_schema(self, path: str, method: str, status: int) -> dict:
        responses = self.spec["paths"][path][method]["responses"]
        declared = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
        assert declared is not None, f"{method.upper()} {path} declares no answer {status}: {sorted(responses)}"
        return declared

    def read(self, path: str, method: str, response: httpx.Response) -> dict:
        """The answer's JSON, valid against the schema declared for its status (and the headers it declares)."""
        declared = self.response_schema(path, method, response.status_code)
        schema = declared["content"]["application/json"]["schema"]
        body = response.json()
        OAS31Validator({**schema, "components": self.spec.get("components", {})}).validate(body)
        for header in declared.get("headers", {}):
            assert header.lower() in response.headers, f"{response.status_code} without its {header} header"
        return body
