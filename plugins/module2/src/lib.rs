//! The reference framework's second sample module: its `sample12` shares a name with module1's.

use plugin_api::prelude::*;

fn echo(api: &str, req: &Request) -> Result<Value> {
    Ok(json!({ "response": api, "kwargs": req.kwargs() }))
}

fn foo2(req: &Request) -> Result<Value> {
    echo("hello-world2", req)
}

fn bar2(req: &Request) -> Result<Value> {
    echo("bar2-none", req)
}

fn sample12(req: &Request) -> Result<Value> {
    echo("sample-put", req)
}

fn plugin() -> Plugin {
    Plugin::new("module2")
        .description("Sample module 2: echoes kwargs")
        .function(
            Function::new("foo2", foo2)
                .api("hello-world2")
                .methods("GET")
                .doc("Echoes its kwargs")
                .public(),
        )
        .function(
            Function::new("bar2", bar2)
                .api("bar2-none")
                .methods("GET")
                .doc("Echoes its kwargs")
                .public(),
        )
        .function(
            Function::new("sample12", sample12)
                .api("sample-put")
                .methods("PUT|POST")
                .doc("Echoes its kwargs")
                .public(),
        )
}

export_plugin!(plugin);
