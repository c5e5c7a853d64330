//! The asynchronous jobs' part of the document: `/rest/jobs/…` and the `Job` schema.

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
