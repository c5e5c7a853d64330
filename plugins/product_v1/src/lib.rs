//! API versioning sample: `product_v1` and its sibling both export `api-name`.

use plugin_api::prelude::*;

fn api_name(req: &Request) -> Result<Value> {
    Ok(json!({ "response": "api-name", "version": 1, "kwargs": req.kwargs() }))
}

fn plugin() -> Plugin {
    Plugin::new("product_v1").description("Product API, version 1").function(
        Function::new("api_name", api_name)
            .api("api-name")
            .methods("GET|POST")
            .doc("Answers with its version and kwargs")
            .public(),
    )
}

export_plugin!(plugin);
