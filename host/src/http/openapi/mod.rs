//! `GET /openapi.json`: an OpenAPI 3.1 document of what the caller may call, generated from the
//! manifests in force (so it follows every hot swap), with the built-ins and the error schema.

mod jobs;

use plugin_api::{abi::ParamKind, Visibility};
use serde_json::{json, Map, Value};

use super::auth::{may_call, may_use};
use plughost_runtime::manifest::{FunctionSpec, ModuleSpec};

use crate::registry::Registry;
use plughost_tenancy::auth::Caller;

/// What the document depends on besides the registry.
pub(crate) struct Context<'a> {
    pub caller: Option<&'a Caller>,
    pub url_params: &'a [String],
    pub metrics: bool,
    pub stage: Option<&'a str>,
}

/// The whole document for `context.caller`.
pub(crate) fn document(registry: &Registry, context: &Context<'_>) -> Value {
    let mut paths = Map::new();
    builtins(&mut paths, context);
    for module in registry.modules().iter().filter(|m| may_use(m, context.caller)) {
        let spec = &module.spec;
        for function in spec.functions.iter().filter(|f| may_call(f.visibility, context.caller)) {
            let qualified = format!("/rest/services/{}/{}/", spec.route_name(), function.route_name());
            paths.insert(qualified, path_item(spec, function, false));
            if registry.is_unique(function.route_name(), &|m: &crate::loader::LoadedModule| may_use(m, context.caller)) {
                let unqualified = format!("/rest/services/{}/", function.route_name());
                paths.insert(unqualified, path_item(spec, function, true));
            }
        }
    }
    let positional = if context.url_params.is_empty() {
        "Positional URL segments are not mapped (NUM_URL_PARMS=0).".to_owned()
    } else {
        format!(
            "Segments after a function's path become the parameters {} in order, e.g. `/rest/services/<module>/<function>/<{}>/`.",
            context.url_params.join(", "),
            context.url_params[0]
        )
    };
    let mut tags: Vec<Value> = registry
        .modules()
        .iter()
        .filter(|m| may_use(m, context.caller) && m.spec.functions.iter().any(|f| may_call(f.visibility, context.caller)))
        .map(|m| json!({"name": m.spec.route_name(), "description": module_description(&m.spec)}))
        .collect();
    tags.push(json!({"name": "plughost", "description": "Built-in routes of the host"}));
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "plughost",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Functions of the plugins loaded now{}, as this caller may see them. Parameters are read from the JSON or form body, then the query string, then the URL. {positional} Every error is one JSON object (see the Error schema) whose error_id is also in the server log.",
                context.stage.map(|s| format!(" (stage {s})")).unwrap_or_default()
            ),
        },
        "tags": tags,
        "paths": paths,
        "components": components(),
    })
}

fn module_description(spec: &ModuleSpec) -> String {
    let mut text = format!("Module {} {}", spec.name, spec.version);
    if let Some(alias) = &spec.alias {
        text.push_str(&format!(" (alias {alias})"));
    }
    if !spec.description.is_empty() {
        text.push_str(": ");
        text.push_str(&spec.description);
    }
    text
}

fn path_item(module: &ModuleSpec, function: &FunctionSpec, unqualified: bool) -> Value {
    let mut item = Map::new();
    for method in function.methods.names() {
        let lower = method.to_ascii_lowercase();
        let id = if unqualified {
            format!("{lower}:/{}", function.route_name())
        } else {
            format!("{lower}:{}/{}", module.route_name(), function.route_name())
        };
        let summary = function.doc.lines().next().unwrap_or("").trim();
        let mut operation = json!({
            "operationId": id,
            "tags": [module.route_name()],
            "summary": if summary.is_empty() { function.name.clone() } else { summary.to_owned() },
            "description": function.doc,
            "responses": {
                "200": {
                    "description": "What the function returned (usually JSON; a function may answer another type or status)",
                    "content": {"*/*": {"schema": {}}},
                },
                "202": {
                    "description": "Queued as an asynchronous job (sent with `Prefer: respond-async`); `Location` names it",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
                },
                "default": {"$ref": "#/components/responses/Error"},
            },
        });
        if unqualified {
            operation["description"] = json!(format!(
                "{}\n\nThe same function as /rest/services/{}/{}/ (its name is unique among the loaded modules).",
                function.doc,
                module.route_name(),
                function.route_name()
            ));
        }
        if function.visibility != Visibility::Public {
            operation["security"] = credentials();
        }
        if matches!(method, "POST" | "PUT" | "PATCH") {
            operation["requestBody"] = body_of(&function.params);
        } else if !function.params.is_empty() {
            operation["parameters"] = Value::Array(function.params.iter().map(query_parameter).collect());
        }
        item.insert(lower, operation);
    }
    Value::Object(item)
}

/// The JSON values the host accepts for a declared type (it coerces text and numbers the way
/// query strings and forms need; see `params::coerce`).
fn schema_of(kind: ParamKind) -> Value {
    let numeric_text = json!({"type": "string", "pattern": "^[\\t\\n\\v\\f\\r ]*[+-]?([0-9]{1,15}\\.?[0-9]{0,15}|\\.[0-9]{1,15})([eE][+-]?[0-9]{1,2})?[\\t\\n\\v\\f\\r ]*$"});
    match kind {
        ParamKind::String => json!({"type": ["string", "number", "boolean"]}),
        ParamKind::Integer => json!({"anyOf": [
            {"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX},
            {"type": "string", "pattern": "^[\\t\\n\\v\\f\\r ]*[+-]?[0-9]{1,18}[\\t\\n\\v\\f\\r ]*$"},
        ]}),
        ParamKind::Number => json!({"anyOf": [
            {"type": "number", "minimum": -1.0e300, "maximum": 1.0e300},
            numeric_text,
        ]}),
        ParamKind::Boolean => json!({"anyOf": [
            {"type": "boolean"},
            {"enum": [0, 1, "true", "false", "1", "0", "yes", "no", "on", "off"]},
        ]}),
        ParamKind::Json => json!({}),
    }
}

/// The same, for a query parameter (always text).
fn query_schema_of(kind: ParamKind) -> Value {
    match kind {
        ParamKind::String | ParamKind::Json => json!({"type": "string"}),
        ParamKind::Integer => json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX}),
        ParamKind::Number => json!({"type": "number", "minimum": -1.0e300, "maximum": 1.0e300}),
        ParamKind::Boolean => json!({"type": "boolean"}),
    }
}

fn param_schema(param: &plughost_runtime::params::ParamSpec) -> Value {
    let mut schema = schema_of(param.kind);
    if !param.doc.is_empty() {
        schema["description"] = json!(param.doc);
    }
    if let Some(default) = &param.default {
        schema["default"] = default.clone();
    }
    schema
}

fn query_parameter(param: &plughost_runtime::params::ParamSpec) -> Value {
    let mut schema = query_schema_of(param.kind);
    if let Some(default) = &param.default {
        schema["default"] = default.clone();
    }
    let mut parameter = json!({
        "name": param.name,
        "in": "query",
        "required": param.required && param.default.is_none(),
        "schema": schema,
    });
    if !param.doc.is_empty() {
        parameter["description"] = json!(param.doc);
    }
    parameter
}

fn body_of(params: &[plughost_runtime::params::ParamSpec]) -> Value {
    let properties: Map<String, Value> = params.iter().map(|p| (p.name.clone(), param_schema(p))).collect();
    let required: Vec<&str> = params
        .iter()
        .filter(|p| p.required && p.default.is_none())
        .map(|p| p.name.as_str())
        .collect();
    let mut object = json!({"type": "object", "properties": properties, "additionalProperties": true});
    if !required.is_empty() {
        object["required"] = json!(required);
    }
    // A JSON body that is not an object is passed to the function as it is and names no
    // parameter: it is acceptable only when no parameter is required.
    let schema = if required.is_empty() {
        json!({"anyOf": [object, {"type": ["array", "string", "number", "boolean", "null"]}]})
    } else {
        object
    };
    json!({
        "required": !required.is_empty(),
        "description": "The parameters, as a JSON object (or a form); they may also be given in the query string",
        "content": {"application/json": {"schema": schema}},
    })
}

fn credentials() -> Value {
    json!([{"bearer": []}, {"uuid": [], "totp": []}])
}

fn error_response() -> Value {
    json!({"$ref": "#/components/responses/Error"})
}

fn builtins(paths: &mut Map<String, Value>, context: &Context<'_>) {
    let object = |description: &str| json!({"description": description, "content": {"application/json": {"schema": {"type": "object"}}}});
    let simple = |id: &str, summary: &str, ok: Value| {
        json!({"get": {
            "operationId": id,
            "tags": ["plughost"],
            "summary": summary,
            "responses": {"200": ok, "default": error_response()},
        }})
    };
    paths.insert("/ping".into(), simple("ping", "Answers {} while the server runs", object("Alive")));
    paths.insert(
        "/version".into(),
        simple(
            "version",
            "Versions of the host and of its plugin ABI, and the stage",
            json!({"description": "Versions", "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["name", "version", "abi_version"],
                "properties": {
                    "name": {"type": "string"},
                    "version": {"type": "string"},
                    "stage": {"type": ["string", "null"]},
                    "abi_version": {"type": "integer"},
                    "plugin_api": {"type": "string"},
                },
            }}}}),
        ),
    );
    paths.insert(
        "/health".into(),
        simple(
            "health",
            "Plugin status and store reachability (503 when the store is unreachable)",
            object("Healthy"),
        ),
    );
    paths.insert(
        "/openapi.json".into(),
        simple("openapi", "This document, for the caller", object("An OpenAPI 3.1 document")),
    );
    paths.insert(
        "/rest/services/__dir__/".into(),
        simple("dir", "Every module and function the caller may call", object("The listing")),
    );
    paths.insert(
        "/rest/auth/token".into(),
        json!({"post": {
            "operationId": "token",
            "tags": ["plughost"],
            "summary": "Exchanges a UUID and a current TOTP code (single-use) for a bearer token",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["uuid", "totp"],
                "properties": {
                    "uuid": {"type": "string", "format": "uuid"},
                    "totp": {"type": "string", "pattern": "^[0-9]{6}$"},
                },
            }}}},
            "responses": {
                "200": {"description": "A token", "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["token", "token_type", "expires_in", "kind", "uuid"],
                    "properties": {
                        "token": {"type": "string"},
                        "token_type": {"const": "Bearer"},
                        "expires_in": {"type": "integer"},
                        "kind": {"enum": ["admin", "tenant"]},
                        "uuid": {"type": "string"},
                    },
                }}}},
                "default": error_response(),
            },
        }}),
    );
    jobs::paths(paths, context.caller.is_some());
    let admin = context.caller.is_some_and(Caller::is_admin);
    if context.metrics && admin {
        paths.insert(
            "/metrics".into(),
            json!({"get": {
                "operationId": "metrics",
                "tags": ["plughost"],
                "summary": "Prometheus metrics of this process (admin only)",
                "security": credentials(),
                "responses": {
                    "200": {"description": "OpenMetrics text", "content": {crate::metrics::CONTENT_TYPE: {"schema": {"type": "string"}}}},
                    "default": error_response(),
                },
            }}),
        );
    }
    if admin {
        admin_paths(paths);
        jobs::schedule_paths(paths, "/rest/admin/schedules", "admin.schedules");
    }
    if matches!(context.caller, Some(Caller::Tenant { .. })) {
        tenant_paths(paths);
        jobs::schedule_paths(paths, "/rest/tenant/schedules", "tenant.schedules");
    }
}

/// The parameters of a publishing route: the plugin's name, and the uuid when `tenant`.
fn plugin_name_parameters(tenant: bool) -> Value {
    let name = json!({
        "name": "name",
        "in": "path",
        "required": true,
        "description": "The plugin's name: the file name without .so",
        "schema": {"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"},
    });
    if tenant {
        json!([
            {"name": "uuid", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}},
            name,
        ])
    } else {
        json!([name])
    }
}

/// `PUT` and `DELETE` of a published plugin.
fn publishing(id: &str, namespace: &str, tenant: bool) -> Value {
    let mut put = json!({
        "operationId": format!("{id}.publish"),
        "tags": ["plughost"],
        "summary": format!("Publishes a plugin into {namespace}: checked, stored, then synced by every replica"),
        "security": credentials(),
        "parameters": plugin_name_parameters(tenant),
        "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {
            "type": "string",
            "format": "binary",
            "description": "The plugin's .so file",
        }}}},
        "responses": {
            "201": {"description": "Published", "content": {"application/json": {"schema": published_schema()}}},
            "default": error_response(),
        },
    });
    if let Some(parameters) = put["parameters"].as_array_mut() {
        parameters.push(json!({
            "name": "Plugin-Signature",
            "in": "header",
            "required": false,
            "description": "The base64 ed25519 signature of the file (its .sig); required when the server sets PLUGIN_PUBKEYS",
            "schema": {"type": "string"},
        }));
    }
    let delete = json!({
        "operationId": format!("{id}.unpublish"),
        "tags": ["plughost"],
        "summary": format!("Unpublishes a plugin from {namespace}: every replica removes the file it synced"),
        "security": credentials(),
        "parameters": plugin_name_parameters(tenant),
        "responses": {
            "200": {"description": "Unpublished", "content": {"application/json": {"schema": {"type": "object"}}}},
            "default": error_response(),
        },
    });
    json!({"put": put, "delete": delete})
}

/// One published plugin, as the publishing routes show it.
fn published_schema() -> Value {
    json!({
        "type": "object",
        "required": ["key", "name", "module", "version", "sha256", "size_bytes", "uploader", "published_at", "signed"],
        "properties": {
            "key": {"type": "string"},
            "name": {"type": "string"},
            "tenant": {"type": ["string", "null"]},
            "module": {"type": "string"},
            "version": {"type": "string"},
            "sha256": {"type": "string"},
            "size_bytes": {"type": "integer"},
            "uploader": {"type": "string"},
            "published_at": {"type": "string"},
            "signed": {"type": "boolean"},
        },
    })
}

fn published_list(id: &str, summary: &str) -> Value {
    json!({"get": {
        "operationId": id,
        "tags": ["plughost"],
        "summary": summary,
        "security": credentials(),
        "responses": {
            "200": {"description": "The list", "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["plugins"],
                "properties": {"plugins": {"type": "array", "items": published_schema()}},
            }}}},
            "default": error_response(),
        },
    }})
}

fn tenant_paths(paths: &mut Map<String, Value>) {
    paths.insert(
        "/rest/tenant/plugins".into(),
        published_list("tenant.plugins", "The plugins this tenant published"),
    );
    paths.insert(
        "/rest/tenant/plugins/{name}".into(),
        publishing("tenant.plugins", "this tenant's namespace (its modules run sandboxed)", false),
    );
}

fn admin_paths(paths: &mut Map<String, Value>) {
    let operation = |id: &str, summary: &str, status: &str| {
        json!({
            "operationId": id,
            "tags": ["plughost"],
            "summary": summary,
            "security": credentials(),
            "responses": {
                status: {"description": "Done", "content": {"application/json": {"schema": {"type": "object"}}}},
                "default": error_response(),
            },
        })
    };
    let uuid = json!([{"name": "uuid", "in": "path", "required": true, "schema": {"type": "string"}}]);
    paths.insert(
        "/rest/admin/plugins".into(),
        json!({"get": operation("admin.plugins", "Every plugin file seen, and the leak accounting", "200")}),
    );
    paths.insert(
        "/rest/admin/plugins/{name}".into(),
        publishing("admin.plugins", "the admin's namespace", false),
    );
    paths.insert(
        "/rest/admin/tenants/{uuid}/plugins/{name}".into(),
        publishing("admin.tenants.plugins", "a tenant's namespace", true),
    );
    paths.insert(
        "/rest/admin/published".into(),
        published_list("admin.published", "Every plugin published through the store, in every namespace"),
    );
    let mut release = operation("admin.plugins.release", "Releases a sandboxed module from quarantine", "200");
    release["parameters"] = json!([{"name": "module", "in": "path", "required": true, "schema": {"type": "string"}}]);
    paths.insert("/rest/admin/plugins/{module}/release".into(), json!({"post": release}));
    paths.insert(
        "/rest/admin/audit".into(),
        json!({"get": operation("admin.audit", "The 200 most recent identity changes", "200")}),
    );
    let mut add = operation("admin.tenants.add", "Enrols a tenant: its UUID, TOTP secret and otpauth URI", "201");
    add["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {
            "type": "string",
            "minLength": 1,
            "maxLength": 100,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
            "description": "1 to 100 printable characters",
        }},
    }}}});
    paths.insert(
        "/rest/admin/tenants".into(),
        json!({"get": operation("admin.tenants.list", "Every tenant", "200"), "post": add}),
    );
    let mut show = operation("admin.tenants.show", "One tenant", "200");
    show["parameters"] = uuid.clone();
    let mut remove = operation("admin.tenants.remove", "Removes a tenant", "200");
    remove["parameters"] = uuid.clone();
    paths.insert("/rest/admin/tenants/{uuid}".into(), json!({"get": show, "delete": remove}));
    for (action, summary) in [
        ("disable", "Disables a tenant: its tokens stop working"),
        ("enable", "Enables a tenant again"),
        ("rotate-totp", "Gives a tenant a new TOTP secret; its tokens stop working"),
    ] {
        let mut op = operation(&format!("admin.tenants.{action}"), summary, "200");
        op["parameters"] = uuid.clone();
        paths.insert(format!("/rest/admin/tenants/{{uuid}}/{action}"), json!({"post": op}));
    }
    let limit = |max: u64, what: &str| json!({"type": "integer", "minimum": 1, "maximum": max, "description": what});
    let mut limits = operation(
        "admin.tenants.limits",
        "Sets a tenant's sandbox limits (replacing earlier ones; {} returns to the defaults); loaded modules follow at once",
        "200",
    );
    limits["parameters"] = uuid.clone();
    limits["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": {
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "call_timeout_ms": limit(3_600_000, "deadline of one call"),
            "memory_mb": {"type": "integer", "minimum": 16, "maximum": 1 << 20, "description": "address space of one worker"},
            "max_concurrency": limit(1024, "calls at once per module (429 beyond)"),
            "max_response_bytes": limit(1 << 34, "largest response body (502 beyond)"),
        },
    }}}});
    paths.insert("/rest/admin/tenants/{uuid}/limits".into(), json!({"put": limits}));
}

fn components() -> Value {
    json!({
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["status", "error", "error_description", "error_id"],
                "properties": {
                    "status": {"type": "integer", "description": "The HTTP status, repeated"},
                    "error": {"type": "string", "description": "A stable code in capitals, e.g. INVALID_PARAMETER"},
                    "error_description": {"type": "string", "description": "What was wrong and what to do"},
                    "error_id": {"type": "string", "description": "Also in the server log, with the details"},
                },
            },
            "Job": jobs::job_schema(),
            "Schedule": jobs::schedule_schema(),
        },
        "responses": {
            "Error": {
                "description": "An error, in one JSON shape for every layer",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "A token from POST /rest/auth/token",
            },
            "uuid": {"type": "apiKey", "in": "header", "name": "X-Plughost-UUID", "description": "The caller's UUID, with X-Plughost-TOTP"},
            "totp": {"type": "apiKey", "in": "header", "name": "X-Plughost-TOTP", "description": "A current TOTP code, single-use"},
        },
    })
}
