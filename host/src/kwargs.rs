//! Building a call's kwargs: JSON (or form) body, then query over it, then positional URL segments
//! over both; `__map__` in the body renames URL parameters for this request only.

use serde_json::{Map, Value};

/// Why the kwargs could not be built; always the caller's mistake (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KwargsError {
    pub code: &'static str,
    pub message: String,
}

fn error(code: &'static str, message: String) -> KwargsError {
    KwargsError { code, message }
}

/// How a body contributes to the kwargs, decided from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Json,
    Form,
    Raw,
}

impl BodyKind {
    /// `application/json` and `*/*+json` are JSON; `application/x-www-form-urlencoded` is a form;
    /// anything else (or nothing) is passed to the plugin raw.
    pub(crate) fn of(content_type: &str) -> BodyKind {
        let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
            BodyKind::Json
        } else if essence == "application/x-www-form-urlencoded" {
            BodyKind::Form
        } else {
            BodyKind::Raw
        }
    }
}

/// What a body contributes: kwargs, and the `__map__` renaming of URL parameters.
#[derive(Debug, Default)]
pub(crate) struct BodyKwargs {
    pub kwargs: Map<String, Value>,
    pub rename: Map<String, Value>,
}

/// Parses the body into the kwargs it contributes, and takes out `__map__`.
/// A JSON body that is not an object contributes nothing (the plugin still sees it raw).
pub(crate) fn from_body(kind: BodyKind, body: &[u8]) -> Result<BodyKwargs, KwargsError> {
    let mut kwargs = match kind {
        BodyKind::Raw => Map::new(),
        BodyKind::Json if body.iter().all(u8::is_ascii_whitespace) => Map::new(),
        BodyKind::Json => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => Map::new(),
            Err(err) => {
                return Err(error(
                    "INVALID_JSON",
                    format!("the body is not valid JSON ({err}); send a JSON object, or another Content-Type for raw data"),
                ))
            }
        },
        BodyKind::Form => pairs_to_map(form_urlencoded::parse(body)),
    };
    let rename = match kwargs.remove("__map__") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => {
            for (from, to) in &map {
                match to {
                    Value::String(to) if plughost_runtime::manifest::is_identifier(to) && to != "__map__" => {}
                    _ => {
                        return Err(error(
                            "INVALID_MAP",
                            format!("__map__ renames '{from}' to {to}, which is not a parameter name: use letters, digits and '_'"),
                        ))
                    }
                }
            }
            map
        }
        Some(other) => {
            return Err(error(
                "INVALID_MAP",
                format!(
                    "__map__ must be an object such as {{\"parm_1\": \"id\"}}, got {}",
                    kind_name(&other)
                ),
            ))
        }
    };
    Ok(BodyKwargs { kwargs, rename })
}

/// Query pairs as kwargs: values are strings; a repeated key becomes an array of strings.
pub(crate) fn from_query(query: &str) -> Map<String, Value> {
    pairs_to_map(form_urlencoded::parse(query.as_bytes()))
}

fn pairs_to_map<'a>(pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>) -> Map<String, Value> {
    let mut map = Map::new();
    for (key, value) in pairs {
        if key.is_empty() {
            continue;
        }
        let value = Value::String(value.into_owned());
        match map.get_mut(key.as_ref()) {
            None => {
                map.insert(key.into_owned(), value);
            }
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
    map
}

/// Merges the three sources: body, then query over it, then URL segments over both.
pub(crate) fn merge(
    mut body: Map<String, Value>,
    query: Map<String, Value>,
    url_values: &[String],
    url_names: &[String],
    rename: &Map<String, Value>,
) -> Result<Map<String, Value>, KwargsError> {
    if url_values.len() > url_names.len() {
        return Err(error(
            "TOO_MANY_URL_PARAMS",
            format!(
                "{} positional URL segments follow the function, but at most {} are configured (NUM_URL_PARMS); pass the rest in the query or body",
                url_values.len(),
                url_names.len()
            ),
        ));
    }
    body.extend(query);
    for (name, value) in url_names.iter().zip(url_values) {
        let name = match rename.get(name) {
            Some(Value::String(to)) => to.clone(),
            _ => name.clone(),
        };
        body.insert(name, Value::String(value.clone()));
    }
    Ok(body)
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("parm_{i}")).collect()
    }

    #[test]
    fn url_wins_over_query_wins_over_body() {
        let body = from_body(BodyKind::Json, br#"{"a": 1, "b": [1,2], "parm_1": "body"}"#).unwrap();
        let query = from_query("a=q&c=3&c=4&c=5");
        let kwargs = merge(body.kwargs, query, &["url".into()], &names(10), &body.rename).unwrap();
        assert_eq!(
            Value::Object(kwargs),
            json!({"a": "q", "b": [1, 2], "c": ["3", "4", "5"], "parm_1": "url"})
        );
    }

    #[test]
    fn map_renames_url_params_and_disappears() {
        let body = from_body(BodyKind::Json, br#"{"x": 1, "__map__": {"parm_1": "p1", "parm_2": "p2"}}"#).unwrap();
        let kwargs = merge(
            body.kwargs,
            Map::new(),
            &["a".into(), "b".into(), "c".into()],
            &names(3),
            &body.rename,
        )
        .unwrap();
        assert_eq!(Value::Object(kwargs), json!({"x": 1, "p1": "a", "p2": "b", "parm_3": "c"}));
    }

    #[test]
    fn bad_map_is_refused() {
        assert_eq!(from_body(BodyKind::Json, br#"{"__map__": [1]}"#).unwrap_err().code, "INVALID_MAP");
        assert_eq!(
            from_body(BodyKind::Json, br#"{"__map__": {"parm_1": "a-b"}}"#).unwrap_err().code,
            "INVALID_MAP"
        );
    }

    #[test]
    fn too_many_segments() {
        let err = merge(Map::new(), Map::new(), &["1".into(), "2".into()], &names(1), &Map::new()).unwrap_err();
        assert_eq!(err.code, "TOO_MANY_URL_PARAMS");
        assert!(err.message.contains("2 positional URL segments"));
    }

    #[test]
    fn bodies_by_content_type() {
        assert_eq!(BodyKind::of("application/json; charset=utf-8"), BodyKind::Json);
        assert_eq!(BodyKind::of("application/vnd.api+json"), BodyKind::Json);
        assert_eq!(BodyKind::of("application/x-www-form-urlencoded"), BodyKind::Form);
        assert_eq!(BodyKind::of("text/plain"), BodyKind::Raw);
        assert_eq!(BodyKind::of(""), BodyKind::Raw);
        assert_eq!(from_body(BodyKind::Json, b"{oops").unwrap_err().code, "INVALID_JSON");
        assert!(from_body(BodyKind::Json, b"  ").unwrap().kwargs.is_empty());
        assert!(from_body(BodyKind::Json, b"[1,2]").unwrap().kwargs.is_empty());
        let form = from_body(BodyKind::Form, b"name=Ada+L&x=%41").unwrap();
        assert_eq!(Value::Object(form.kwargs), json!({"name": "Ada L", "x": "A"}));
    }
}
