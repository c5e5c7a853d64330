//! The three visibility levels, one function each: `status` (public), `whoami` (any
//! authenticated principal), `admin-stats` (the admin only); and `echo`, module1's echo for
//! authenticated callers (the benchmark's "with a bearer token" case).

use plugin_api::{prelude::*, CallerKind};

fn status(_req: &Request) -> Result<Value> {
    Ok(json!({ "status": "ok" }))
}

fn whoami(req: &Request) -> Result<Value> {
    let caller = req.caller().ok_or_else(|| Error::unauthorized("no authenticated caller"))?;
    let kind = match caller.kind {
        CallerKind::Admin => "admin",
        CallerKind::Tenant => "tenant",
    };
    Ok(json!({ "kind": kind, "uuid": caller.uuid }))
}

fn admin_stats(req: &Request) -> Result<Value> {
    Ok(json!({ "caller": req.caller().map(|c| c.uuid), "module": req.module(), "pid": std::process::id() }))
}

/// The kwargs pass through undecoded, as in module1's echo.
#[derive(serde::Serialize)]
struct Echo<'a> {
    response: &'static str,
    kwargs: &'a serde_json::value::RawValue,
}

fn echo(req: &Request) -> Result<Response> {
    let kwargs = req.kwargs_raw();
    Ok(Response::json(Echo { response: "echo", kwargs }))
}

fn plugin() -> Plugin {
    Plugin::new("secure")
        .description("Visibility levels: public, tenant, admin")
        .function(Function::new("status", status).doc("Anyone may call this").public())
        .function(Function::new("whoami", whoami).doc("Who is calling: admin or tenant, and the UUID"))
        .function(
            Function::new("admin_stats", admin_stats)
                .api("admin-stats")
                .doc("For the admin only")
                .admin_only(),
        )
        .function(
            Function::new("echo", echo)
                .methods("GET|POST")
                .doc("Echoes its kwargs, for authenticated callers"),
        )
}

export_plugin!(plugin);
