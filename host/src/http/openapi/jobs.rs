//! The asynchronous jobs' part of the document: `/rest/jobs/…`, the schedules, and the `Job`
//! and `Schedule` schemas.

use serde_json::{json, Map, Value};

use super::{credentials, error_response};

/// `/rest/jobs/…`: a job by id (anyone holding the id of one queued without credentials), its
/// result, cancelling; the listing for callers with credentials.
pub(super) fn paths(paths: &mut Map<String, Value>, authenticated: bool) {
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}]);
    let job = json!({"description": "The job", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}}});
    let maybe_credentials = json!([{}, {"bearer": []}, {"uuid": [], "totp": []}]);
    paths.insert(
        "/rest/jobs/{id}".into(),
        json!({
            "parameters": id,
            "get": {"operationId": "job", "tags": ["jobs"], "summary": "An asynchronous job: its state, attempts and answer",
                    "security": maybe_credentials, "responses": {"200": job, "default": error_response()}},
            "delete": {"operationId": "cancelJob", "tags": ["jobs"], "summary": "Cancels a job that has not started",
                       "security": maybe_credentials, "responses": {"200": job, "default": error_response()}},
        }),
    );
    paths.insert(
        "/rest/jobs/{id}/result".into(),
        json!({
            "parameters": id,
            "get": {"operationId": "jobResult", "tags": ["jobs"], "summary": "The function's answer, as the synchronous call would have sent it",
                    "security": maybe_credentials,
                    "responses": {"200": {"description": "The function's answer (any status and type)", "content": {"*/*": {"schema": {}}}},
                                  "default": error_response()}},
        }),
    );
    if authenticated {
        let query = |name: &str, schema: Value| json!({"name": name, "in": "query", "required": false, "schema": schema});
        paths.insert(
            "/rest/jobs".into(),
            json!({"get": {
                "operationId": "jobs", "tags": ["jobs"], "summary": "Your jobs, newest first", "security": credentials(),
                "parameters": [
                    query("state", json!({"enum": ["queued", "running", "succeeded", "failed", "dead", "cancelled"]})),
                    query("limit", json!({"type": "integer", "minimum": 1, "maximum": 100})),
                    query("before", json!({"type": "string"})),
                ],
                "responses": {"200": {"description": "A page of jobs", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["jobs"],
                    "properties": {"jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}, "next": {"type": ["string", "null"]}},
                }}}}, "default": error_response()},
            }}),
        );
    }
}

/// The schema of a job record.
pub(super) fn job_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "state", "attempts", "status_url", "result_url"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "state": {"enum": ["queued", "running", "succeeded", "failed", "dead", "cancelled"]},
            "attempts": {"type": "integer"},
            "max_attempts": {"type": "integer"},
            "status_url": {"type": "string"},
            "result_url": {"type": "string"},
        },
    })
}

/// `<base>` and `<base>/{name}…`: a principal's schedules (the admin's list shows everyone's).
pub(super) fn schedule_paths(paths: &mut Map<String, Value>, base: &str, ids: &str) {
    let one =
        json!({"description": "The schedule", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Schedule"}}}});
    let name = json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let op = |id: &str, summary: &str, responses: Value| json!({"operationId": format!("{ids}.{id}"), "tags": ["schedules"], "summary": summary, "security": credentials(), "responses": responses});
    let mut create = op(
        "add",
        "Adds a schedule: each tick of the cron expression queues the call as an asynchronous job",
        json!({"201": one, "default": error_response()}),
    );
    create["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
        "type": "object",
        "additionalProperties": false,
        "required": ["name", "cron", "path", "method"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            "cron": {"type": "string", "minLength": 1, "description": "5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first)"},
            "path": {"type": "string", "minLength": 1, "maxLength": 2048, "description": "/rest/services/<module>/<function>/…[?query]"},
            "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE"]},
            "body": {"type": ["object", "null"], "description": "The JSON body of each call"},
            "timezone": {"type": ["string", "null"], "description": "An IANA time zone; UTC when left out"},
            "catch_up": {"type": "boolean", "description": "Run the latest tick missed while no replica ran, once (default: skip it)"},
        },
    }}}});
    let list = op(
        "list",
        "The schedules",
        json!({"200": {"description": "The schedules", "content": {"application/json": {"schema": {
            "type": "object", "required": ["schedules"],
            "properties": {"schedules": {"type": "array", "items": {"$ref": "#/components/schemas/Schedule"}}},
        }}}}, "default": error_response()}),
    );
    paths.insert(base.to_owned(), json!({"get": list, "post": create}));
    let responses = json!({"200": one, "default": error_response()});
    paths.insert(
        format!("{base}/{{name}}"),
        json!({
            "parameters": name,
            "get": op("show", "One schedule, with its last and next run and its status", responses.clone()),
            "delete": op("remove", "Removes a schedule (the jobs it made are kept)", responses.clone()),
        }),
    );
    for (action, summary) in [
        ("pause", "Stops a schedule's ticks until it is resumed"),
        ("resume", "Starts a paused schedule again from its next tick"),
    ] {
        paths.insert(
            format!("{base}/{{name}}/{action}"),
            json!({"parameters": name, "post": op(action, summary, responses.clone())}),
        );
    }
}

/// The schema of a schedule.
pub(super) fn schedule_schema() -> Value {
    let text = json!({"type": "string"});
    let maybe = json!({"type": ["string", "null"]});
    json!({
        "type": "object",
        "required": ["name", "owner", "cron", "timezone", "path", "method", "catch_up", "paused", "status", "jobs_url"],
        "properties": {
            "name": text, "owner": text, "owner_kind": {"enum": ["admin", "tenant"]}, "cron": text, "timezone": text,
            "path": text, "method": text, "body": {"type": ["object", "null"]}, "catch_up": {"type": "boolean"},
            "paused": {"type": "boolean"}, "created_at": text, "next_run": maybe, "last_run": maybe, "last_job": maybe,
            "status": {"type": "string", "description": "ok, or why the last tick queued no job"},
            "jobs_url": text,
        },
    })
}
