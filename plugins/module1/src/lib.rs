//! The reference framework's first sample module, alias `v1`: every function echoes its kwargs.

use plugin_api::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

/// `{"response": <api>, "kwargs": {…}}`. The kwargs are passed on as the host encoded them
/// (`kwargs_raw`): the same bytes as decoding and re-encoding them, without the work.
#[derive(Serialize)]
struct Echo<'a> {
    response: &'a str,
    kwargs: &'a RawValue,
}

fn echo(api: &str, req: &Request) -> Result<Response> {
    Ok(Response::json(Echo {
        response: api,
        kwargs: req.kwargs_raw(),
    }))
}

fn foo(req: &Request) -> Result<Response> {
    echo("hello-world", req)
}

fn bar(_req: &Request) -> Result<Value> {
    Ok(json!("bar-none again"))
}

fn sample1(req: &Request) -> Result<Response> {
    echo("sample-one", req)
}

fn sample12(req: &Request) -> Result<Response> {
    echo("sample-one2", req)
}

fn sample12a(req: &Request) -> Result<Response> {
    echo("sample-one2a", req)
}

fn sample2(req: &Request) -> Result<Response> {
    echo("sample-two", req)
}

fn private(_req: &Request) -> Result<Value> {
    Ok(json!("this must never be reachable"))
}

fn plugin() -> Plugin {
    Plugin::new("module1")
        .alias("v1")
        .description("Sample module 1: echoes kwargs")
        .function(
            Function::new("foo", foo)
                .api("hello-world")
                .methods("GET|PUT|POST")
                .doc("Echoes its kwargs")
                .public(),
        )
        .function(
            Function::new("bar", bar)
                .api("bar-none")
                .methods("GET")
                .doc("Returns a constant string")
                .public(),
        )
        .function(
            Function::new("sample1", sample1)
                .api("sample-one")
                .methods("POST")
                .doc("Echoes its kwargs")
                .public(),
        )
        .function(
            Function::new("sample12", sample12)
                .api("sample-one2")
                .methods(["PUT"])
                .doc("Echoes its kwargs")
                .public(),
        )
        .function(
            Function::new("sample12a", sample12a)
                .api("sample-one2a")
                .methods(vec!["DELETE"])
                .doc("Echoes its kwargs")
                .public(),
        )
        .function(
            Function::new("sample2", sample2)
                .api("sample-two")
                .methods("POST")
                .doc("Echoes its kwargs")
                .public(),
        )
        .function(Function::new("__private", private).public())
}

export_plugin!(plugin);
