//! The README's first plugin: one public function with typed parameters.

use plugin_api::prelude::*;

/// `GET /rest/services/hello/greet/?name=Ada&times=2` → `{"greeting": "Hello, Ada! Hello, Ada!"}`
fn greet(req: &Request) -> Result<Value> {
    let name = req.str("name")?;
    let times = req.i64("times")?;
    if !(1..=10).contains(&times) {
        return Err(Error::unprocessable("times must be between 1 and 10"));
    }
    log::info!("greeting {name} {times} time(s)");
    let greeting = vec![format!("Hello, {name}!"); times as usize].join(" ");
    Ok(json!({ "greeting": greeting }))
}

fn plugin() -> Plugin {
    Plugin::new("hello").description("Says hello").function(
        Function::new("greet", greet)
            .methods("GET|POST")
            .doc("Greets someone by name")
            .param(Param::string("name").default("world").doc("who to greet"))
            .param(Param::integer("times").default(1).doc("how many times, 1 to 10"))
            .public(),
    )
}

export_plugin!(plugin);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::testing::TestRequest;

    #[test]
    fn greets_as_many_times_as_asked() {
        let response = TestRequest::get().kwarg("name", "Ada").kwarg("times", 2).call(greet).unwrap();
        assert_eq!(response.body(), br#"{"greeting":"Hello, Ada! Hello, Ada!"}"#);
    }

    #[test]
    fn refuses_too_many_times() {
        let err = TestRequest::get().kwarg("name", "Ada").kwarg("times", 11).call(greet).unwrap_err();
        assert_eq!(err.kind(), plugin_api::ErrorKind::Unprocessable);
    }
}
