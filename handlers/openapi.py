"""The OpenAPI 3.1 description of ``/api/v1``, served at
``GET /api/v1/openapi.json``. The request bodies' schemas are pydantic's own
(the models that validate them), so the description cannot drift from what
is refused; ``tests/test_api.py`` checks its paths against the real routes."""

from __future__ import annotations

import functools
from typing import Any

from store import DeployStatus

CONTROLS = ("rollback", "abort", "pause", "resume", "promote")
CONTROL_SUMMARIES = {
    "rollback": "Roll back to the last good version (as the Rollback button; the environment is locked and the "
                "version blocked)",
    "abort": "Abort a staged rollout (as the Abort button)",
    "pause": "Pause a staged rollout (as the Pause button)",
    "resume": "Resume a paused staged rollout (as the Resume button)",
    "promote": "Promote a staged rollout past its current pause (as the Promote button)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    words = {400: "the body is not a JSON object", 401: "no token, or an unknown, revoked or expired one",
             403: "the token lacks the scope, or the person named lacks the role", 404: "no such deploy",
             409: "the deploy discipline or the deploy's state refuses it (the text `/deploy` or the button gives)",
             413: "body larger than 1 MiB", 422: "unknown fields, wrong types or unknown names",
             503: "this Slipway is a standby (see GET /healthz)"}
    return {str(status): _json(_ref("Error"), words[status]) for status in statuses}


@functools.cache
def document() -> dict[str, Any]:
    """The whole description (built once)."""
    from handlers.api import ControlRequest, DeployRequest, RollbackRequest  # the models validating the bodies

    deploy_id = {"name": "deploy_id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
    bearer = [{"bearer": []}]
    paths: dict[str, Any] = {
        "/api/v1/deploys": {
            "post": {
                "operationId": "requestDeploy",
                "summary": "Request a deploy, as /deploy does (scope request:<environment> or request:*)",
                "security": bearer,
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,100}$"},
                                "description": "the same key (per token) answers with the same deploy, 200"}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("DeployRequest")}}},
                "responses": {"201": _json(_ref("Deploy"), "the request, recorded (approvals happen in Slack)"),
                              "200": _json(_ref("Deploy"), "the same request made before (idempotency key, or "
                                                           "the same version already queued)"),
                              **_errors(400, 401, 403, 409, 413, 422, 503)},
            },
            "get": {
                "operationId": "listDeploys",
                "summary": "The last deploys, newest first (scope read)",
                "security": bearer,
                "parameters": [
                    {"name": "service", "in": "query", "schema": {"type": "string"}},
                    {"name": "environment", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {"type": "string",
                                                                 "enum": [s.value for s in DeployStatus]}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100,
                                                                "default": 20}},
                    {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1},
                     "description": "only deploys with a lower id (the previous page's next_before)"},
                ],
                "responses": {"200": _json(_ref("DeployList"), "the deploys"), **_errors(401, 403, 422, 503)},
            },
        },
        "/api/v1/deploys/{deploy_id}": {
            "get": {
                "operationId": "getDeploy",
                "summary": "One deploy (scope read)",
                "security": bearer,
                "parameters": [deploy_id],
                "responses": {"200": _json(_ref("Deploy"), "the deploy"), **_errors(401, 403, 404, 503)},
            },
        },
        "/api/v1/openapi.json": {
            "get": {"operationId": "openapi", "summary": "This description", "security": [],
                    "responses": {"200": {"description": "OpenAPI 3.1",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}}},
        },
    }
    for action in CONTROLS:
        body = "RollbackRequest" if action == "rollback" else "ControlRequest"
        answer = (_json(_ref("Deploy"), "the rollback deploy, recorded and starting") if action == "rollback" else
                  _json(_ref("ControlResult"), "what happened, and the deploy"))
        paths[f"/api/v1/deploys/{{deploy_id}}/{action}"] = {"post": {
            "operationId": f"{action}Deploy",
            "summary": CONTROL_SUMMARIES[action] + "; break-glass, scope control:<environment>, audited",
            "security": bearer,
            "parameters": [deploy_id],
            "requestBody": {"required": False, "content": {"application/json": {"schema": _ref(body)}}},
            "responses": {("201" if action == "rollback" else "200"): answer,
                          **_errors(400, 401, 403, 404, 409, 413, 422, 503)},
        }}
    nullable_text = {"type": ["string", "null"]}
    schemas: dict[str, Any] = {
        "DeployRequest": DeployRequest.model_json_schema(),
        "RollbackRequest": RollbackRequest.model_json_schema(),
        "ControlRequest": ControlRequest.model_json_schema(),
        "Error": {"type": "object", "required": ["ok", "error"], "properties": {
            "ok": {"const": False}, "error": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "object", "properties": {
                "field": {"type": "string"}, "problem": {"type": "string"}}}}}},
        "Approval": {"type": "object", "properties": {
            "user": {"type": "string"}, "approved_at": {"type": "string", "format": "date-time"},
            "counts_as": {"enum": ["approve", "override", "both"]}}},
        "Deploy": {"type": "object", "required": ["id", "service", "environment", "version", "status"], "properties": {
            "id": {"type": "integer"}, "service": {"type": "string"}, "environment": {"type": "string"},
            "version": {"type": "string"}, "status": {"enum": [s.value for s in DeployStatus]},
            "status_reason": {**nullable_text, "description": "as Slack shows it (mrkdwn)"},
            "requested_by": {"type": "string", "description": "a Slack user id, or api:NAME for a token"},
            "requested_at": {"type": "string", "format": "date-time"},
            "previous_version": nullable_text, "approvals": {"type": "array", "items": _ref("Approval")},
            "approved_at": nullable_text, "started_at": nullable_text, "finished_at": nullable_text,
            "message_permalink": nullable_text, "rollback_of": {"type": ["integer", "null"]},
            "url": {"type": "string"}}},
        "DeployList": {"type": "object", "properties": {
            "deploys": {"type": "array", "items": _ref("Deploy")},
            "next_before": {"type": ["integer", "null"], "description": "pass as before= for the next page"}}},
        "ControlResult": {"type": "object", "properties": {
            "ok": {"const": True}, "message": {"type": "string"}, "deploy": _ref("Deploy")}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Slipway API", "version": "1",
                 "description": "Deploy requests for CI, reads, and break-glass controls when Slack is down. "
                                "Tokens: `slipway token create NAME --scope …`."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "slp_… from `slipway token create`"}}},
    }
