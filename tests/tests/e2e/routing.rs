//! URLs, kwargs and methods, as DESIGN §2 states them, with the reference framework's own cases.

use serde_json::{json, Value};

use crate::support::{examples, reference_body, Setup, ABCD, TEN};

fn assert_all_strings(kwargs: &Value, names: &[&str]) {
    for name in names {
        assert!(kwargs[name].is_string(), "{name} should be a string in {kwargs}");
    }
}

fn parm_names() -> Vec<String> {
    (1..=10).map(|i| format!("parm_{i}")).collect()
}

#[test]
fn reference_get_hello_world_has_fourteen_string_kwargs() {
    let app = examples();
    for prefix in ["", "module1/", "v1/"] {
        let reply = app.get(&format!("/rest/services/{prefix}hello-world/{TEN}/?{ABCD}"));
        assert_eq!(reply.status, 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["response"], "hello-world");
        let kwargs = body["kwargs"].as_object().unwrap();
        assert_eq!(kwargs.len(), 14, "{kwargs:?}");
        assert_all_strings(&body["kwargs"], &["a", "b", "c", "d"]);
        for (i, name) in parm_names().iter().enumerate() {
            assert_eq!(kwargs[name], json!((i + 1).to_string()));
        }
        assert_eq!(kwargs["a"], "1");
        assert_eq!(kwargs["d"], "4");
    }
}

#[test]
fn reference_post_put_delete_have_nineteen_kwargs() {
    let app = examples();
    let cases = [("POST", "sample-one"), ("PUT", "sample-one2"), ("DELETE", "sample-one2a")];
    for prefix in ["", "module1/", "v1/"] {
        for (method, api) in cases {
            let reply = app.send(
                method,
                &format!("/rest/services/{prefix}{api}/{TEN}/?{ABCD}"),
                Some(&reference_body()),
            );
            assert_eq!(reply.status, 200, "{method} {prefix}{api}: {}", reply.text());
            let body = reply.json();
            assert_eq!(body["response"], api);
            let kwargs = body["kwargs"].as_object().unwrap();
            assert_eq!(kwargs.len(), 19, "{method} {prefix}{api}: {kwargs:?}");
            assert_eq!(
                body["kwargs"]["args"],
                json!([1, 2, 3, 4, 5, 6]),
                "body values keep their JSON types"
            );
            assert_eq!(body["kwargs"]["name4"], "four");
            assert_eq!(body["kwargs"]["parm_10"], "10");
            assert_eq!(body["kwargs"]["c"], "3");
        }
    }
}

#[test]
fn post_to_a_get_only_function_is_405_with_allow() {
    let app = examples();
    let reply = app.send("POST", "/rest/services/bar-none/", None);
    reply.error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(reply.header("allow"), Some("GET, HEAD, OPTIONS"));
    let ok = app.get("/rest/services/bar-none/");
    assert_eq!(ok.json(), json!("bar-none again"));
}

#[test]
fn map_renames_url_params_for_one_request_and_is_not_echoed() {
    let app = examples();
    let mut body = reference_body();
    let map: serde_json::Map<String, Value> = (1..=10).map(|i| (format!("parm_{i}"), json!(format!("p{i}")))).collect();
    body["__map__"] = Value::Object(map);
    let reply = app.send("POST", &format!("/rest/services/v1/sample-one/{TEN}/"), Some(&body));
    assert_eq!(reply.status, 200, "{}", reply.text());
    let kwargs = reply.json()["kwargs"].clone();
    for i in 1..=10 {
        assert_eq!(kwargs[format!("p{i}")], json!(i.to_string()));
        assert!(kwargs.get(format!("parm_{i}")).is_none(), "parm_{i} should be renamed: {kwargs}");
    }
    assert!(kwargs.get("__map__").is_none());
    assert!(!reply.text().contains("__map__"));
    // The next request is not renamed.
    let plain = app.send("POST", "/rest/services/v1/sample-one/x/", Some(&json!({})));
    assert_eq!(plain.json()["kwargs"], json!({"parm_1": "x"}));
}

#[test]
fn same_function_name_in_two_modules_both_work() {
    let app = examples();
    let one = app.send("PUT", "/rest/services/sample-one2/", Some(&json!({})));
    assert_eq!(one.json()["response"], "sample-one2");
    let two = app.send("PUT", "/rest/services/sample-put/", Some(&json!({})));
    assert_eq!(two.json()["response"], "sample-put");
    let qualified = app.send("POST", "/rest/services/module2/sample-put/7/", Some(&json!({})));
    assert_eq!(qualified.json(), json!({"response": "sample-put", "kwargs": {"parm_1": "7"}}));
    assert_eq!(app.get("/rest/services/module2/hello-world2/").json()["response"], "hello-world2");
}

#[test]
fn versioned_modules_answer_differently_and_the_bare_name_is_ambiguous() {
    let app = examples();
    let v1 = app.get("/rest/services/product_v1/api-name/a/?x=1").json();
    let v2 = app.get("/rest/services/product_v2/api-name/a/?x=1").json();
    assert_eq!(v1["version"], 1);
    assert_eq!(v2["version"], 2);
    assert_eq!(v1["kwargs"], json!({"parm_1": "a", "x": "1"}));
    let reply = app.get("/rest/services/api-name/");
    let body = reply.error(409, "AMBIGUOUS_FUNCTION");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("/rest/services/product_v1/api-name/"), "{description}");
    assert!(description.contains("/rest/services/product_v2/api-name/"), "{description}");
}

#[test]
fn private_functions_are_never_reachable() {
    let app = examples();
    for path in [
        "/rest/services/module1/__private/",
        "/rest/services/v1/__private/",
        "/rest/services/__private/",
    ] {
        app.get(path).error(404, "FUNCTION_NOT_FOUND");
    }
    assert!(!app.get("/rest/services/__dir__/").text().contains("__private"));
}

#[test]
fn trailing_slash_is_optional_and_segments_are_percent_decoded() {
    let app = examples();
    assert_eq!(app.get("/rest/services/v1/bar-none").json(), json!("bar-none again"));
    let body = app
        .get("/rest/services/hello-world/caf%C3%A9/a%20b/x%2Fy?q=%C3%A9t%C3%A9&r=a+b")
        .json();
    assert_eq!(
        body["kwargs"],
        json!({"parm_1": "café", "parm_2": "a b", "parm_3": "x/y", "q": "été", "r": "a b"})
    );
}

#[test]
fn url_beats_query_beats_body_and_repeated_query_keys_are_arrays() {
    let app = examples();
    let body = json!({"a": "body", "b": "body", "parm_1": "body", "n": 5});
    let reply = app.send("POST", "/rest/services/hello-world/url/?a=query&parm_1=query&t=1&t=2", Some(&body));
    assert_eq!(
        reply.json()["kwargs"],
        json!({"a": "query", "b": "body", "parm_1": "url", "n": 5, "t": ["1", "2"]})
    );
}

#[test]
fn more_segments_than_configured_is_400() {
    let app = examples();
    let reply = app.get(&format!("/rest/services/hello-world/{TEN}/11/"));
    let body = reply.error(400, "TOO_MANY_URL_PARAMS");
    assert!(body["error_description"].as_str().unwrap().contains("11 positional URL segments"));
}

#[test]
fn url_param_names_come_from_the_configuration() {
    let app = Setup::default()
        .plugins(&["module1"])
        .env("NUM_URL_PARMS", "2")
        .env("URL_PARM1", "id")
        .env("URL_PARM2", "slug")
        .start();
    assert_eq!(
        app.get("/rest/services/hello-world/42/intro/").json()["kwargs"],
        json!({"id": "42", "slug": "intro"})
    );
    app.get("/rest/services/hello-world/1/2/3/").error(400, "TOO_MANY_URL_PARAMS");
    assert_eq!(app.get("/rest/services/__dir__/").json()["url_params"], json!(["id", "slug"]));
}

#[test]
fn head_and_options() {
    let app = examples();
    let head = crate::support::App::client()
        .head(app.url("/rest/services/hello-world/1/"))
        .send()
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "application/json");
    assert!(head.bytes().unwrap().is_empty());
    let options = app.send("OPTIONS", "/rest/services/v1/hello-world/", None);
    assert_eq!(options.status, 204);
    assert_eq!(options.header("allow"), Some("GET, HEAD, POST, PUT, OPTIONS"));
    assert_eq!(
        app.send("OPTIONS", "/rest/services/sample-one2a/", None).header("allow"),
        Some("DELETE, OPTIONS")
    );
    // HEAD is not answered for a function without GET.
    let head = app.send("HEAD", "/rest/services/sample-one/", None);
    assert_eq!(head.status, 405);
    assert_eq!(head.header("allow"), Some("POST, OPTIONS"));
    let reply = app.send("PATCH", "/rest/services/sample-one/", None);
    reply.error(405, "METHOD_NOT_ALLOWED");
    assert_eq!(reply.header("allow"), Some("POST, OPTIONS"));
}

#[test]
fn dir_lists_modules_functions_and_url_params() {
    let app = examples();
    let all = app.get("/rest/services/__dir__/").json();
    assert_eq!(all["url_params"].as_array().unwrap().len(), 10);
    let modules = all["modules"].as_array().unwrap();
    let names: Vec<&str> = modules.iter().map(|m| m["name"].as_str().unwrap()).collect();
    for expected in ["module1", "module2", "product_v1", "product_v2", "hello"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let module1 = modules.iter().find(|m| m["name"] == "module1").unwrap();
    assert_eq!(module1["alias"], "v1");
    assert_eq!(module1["version"], "1.0.0");
    assert_eq!(module1["isolation"], "in-process");
    assert_eq!(module1["sha256"].as_str().unwrap().len(), 64);
    let hello_world = module1["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["api"] == "hello-world")
        .unwrap();
    assert_eq!(hello_world["name"], "foo");
    assert_eq!(hello_world["methods"], json!(["GET", "POST", "PUT"]));
    assert_eq!(hello_world["path"], "/rest/services/v1/hello-world/");
    assert_eq!(hello_world["unqualified_path"], "/rest/services/hello-world/");
    assert_eq!(hello_world["visibility"], "public");
    assert_eq!(module1["functions"].as_array().unwrap().len(), 6);

    let one = app.get("/rest/services/hello/__dir__/").json();
    assert_eq!(one["name"], "hello");
    let params = &one["functions"][0]["params"];
    assert_eq!(
        params[0],
        json!({"name": "name", "type": "string", "required": false, "default": "world", "doc": "who to greet"})
    );
    assert_eq!(params[1]["type"], "integer");
    let product = app.get("/rest/services/product_v1/__dir__").json();
    assert_eq!(product["functions"][0]["unqualified_path"], Value::Null, "api-name is not unique");
    app.send("POST", "/rest/services/__dir__/", None).error(405, "METHOD_NOT_ALLOWED");
}

#[test]
fn unknown_names_are_404_with_a_hint() {
    let app = examples();
    let body = app.get("/rest/services/nope/").error(404, "FUNCTION_NOT_FOUND");
    assert!(body["error_description"].as_str().unwrap().contains("__dir__"));
    let body = app.get("/rest/services/v1/nope/").error(404, "FUNCTION_NOT_FOUND");
    assert!(body["error_description"].as_str().unwrap().contains("hello-world"), "{body}");
    let body = app.get("/rest/services/module2").error(404, "FUNCTION_NOT_FOUND");
    assert!(
        body["error_description"].as_str().unwrap().contains("'module2' is a module"),
        "{body}"
    );
    app.get("/rest/services/").error(404, "FUNCTION_NOT_FOUND");
}

#[test]
fn typed_parameters_are_coerced_or_refused_by_name() {
    let app = examples();
    assert_eq!(
        app.get("/rest/services/hello/greet/?name=Ada&times=2").json(),
        json!({"greeting": "Hello, Ada! Hello, Ada!"})
    );
    assert_eq!(app.get("/rest/services/greet/").json(), json!({"greeting": "Hello, world!"}));
    let posted = app.send("POST", "/rest/services/greet/", Some(&json!({"name": "Bob", "times": 1})));
    assert_eq!(posted.json(), json!({"greeting": "Hello, Bob!"}));
    let body = app.get("/rest/services/greet/?times=often").error(422, "INVALID_PARAMETER");
    assert!(body["error_description"].as_str().unwrap().contains("'times'"), "{body}");
    app.get("/rest/services/greet/?times=1&times=2").error(422, "INVALID_PARAMETER");
    // The plugin's own validation error reaches the client with its message.
    let body = app.get("/rest/services/greet/?times=11").error(422, "UNPROCESSABLE_ENTITY");
    assert_eq!(body["error_description"], "times must be between 1 and 10");
}
