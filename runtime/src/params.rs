//! Typed parameters: a function's declared parameters, and kwargs coerced to their types (or an
//! error naming the parameter).

use plugin_api::abi::ParamKind;
use serde_json::{Map, Number, Value};

/// A declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub kind: ParamKind,
    pub required: bool,
    pub default: Option<Value>,
    pub doc: String,
}

/// How a parameter type is written in listings.
pub fn kind_name(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::String => "string",
        ParamKind::Integer => "integer",
        ParamKind::Number => "number",
        ParamKind::Boolean => "boolean",
        ParamKind::Json => "json",
    }
}

/// A kwarg that does not fit its declared parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    pub code: &'static str,
    pub message: String,
}

/// Fills defaults, checks required parameters and coerces declared ones; other kwargs pass as they are.
pub fn apply(params: &[ParamSpec], kwargs: &mut Map<String, Value>) -> Result<(), ParamError> {
    for param in params {
        match kwargs.remove(&param.name) {
            Some(value) => {
                let coerced = coerce(&param.name, param.kind, value)?;
                kwargs.insert(param.name.clone(), coerced);
            }
            None => {
                if let Some(default) = &param.default {
                    kwargs.insert(param.name.clone(), default.clone());
                } else if param.required {
                    return Err(ParamError {
                        code: "MISSING_PARAMETER",
                        message: format!("parameter '{}' ({}) is required", param.name, kind_name(param.kind)),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Coerces one value to `kind`. URL and query values arrive as strings and are parsed.
pub fn coerce(name: &str, kind: ParamKind, value: Value) -> Result<Value, ParamError> {
    let fail = |value: &Value| ParamError {
        code: "INVALID_PARAMETER",
        message: format!("parameter '{name}' must be {}, got {}", describe(kind), shorten(value)),
    };
    if let Value::Array(items) = &value {
        if kind != ParamKind::Json && items.iter().all(|v| v.is_string()) && items.len() > 1 {
            return Err(ParamError {
                code: "INVALID_PARAMETER",
                message: format!("parameter '{name}' must be {}, but was given {} times", describe(kind), items.len()),
            });
        }
    }
    let coerced = match (kind, &value) {
        (ParamKind::Json, Value::String(text)) => serde_json::from_str(text).ok(),
        (ParamKind::Json, _) => Some(value.clone()),
        (ParamKind::String, Value::String(_)) => Some(value.clone()),
        (ParamKind::String, Value::Number(n)) => Some(Value::String(n.to_string())),
        (ParamKind::String, Value::Bool(b)) => Some(Value::String(b.to_string())),
        (ParamKind::Integer, Value::Number(n)) => integer_of_number(n),
        (ParamKind::Integer, Value::String(text)) => text.trim().parse::<i64>().ok().map(Value::from),
        (ParamKind::Number, Value::Number(_)) => Some(value.clone()),
        (ParamKind::Number, Value::String(text)) => text.trim().parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number),
        (ParamKind::Boolean, Value::Bool(_)) => Some(value.clone()),
        (ParamKind::Boolean, Value::String(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Some(Value::Bool(false)),
            _ => None,
        },
        (ParamKind::Boolean, Value::Number(n)) => match n.as_u64() {
            Some(0) => Some(Value::Bool(false)),
            Some(1) => Some(Value::Bool(true)),
            _ => None,
        },
        _ => None,
    };
    match (kind, coerced) {
        (_, Some(v)) => Ok(v),
        (ParamKind::Json, None) => Ok(value),
        (_, None) => Err(fail(&value)),
    }
}

fn integer_of_number(n: &Number) -> Option<Value> {
    if let Some(i) = n.as_i64() {
        return Some(Value::from(i));
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| Value::from(f as i64))
}

fn describe(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::String => "a string",
        ParamKind::Integer => "an integer",
        ParamKind::Number => "a number",
        ParamKind::Boolean => "a boolean (true/false/1/0)",
        ParamKind::Json => "JSON",
    }
}

fn shorten(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= 60 {
        text
    } else {
        format!("{}…", text.chars().take(60).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str, kind: ParamKind, required: bool, default: Option<Value>) -> ParamSpec {
        ParamSpec {
            name: name.into(),
            kind,
            required,
            default,
            doc: String::new(),
        }
    }

    #[test]
    fn strings_from_urls_become_typed_values() {
        assert_eq!(coerce("n", ParamKind::Integer, json!("42")).unwrap(), json!(42));
        assert_eq!(coerce("n", ParamKind::Integer, json!(7.0)).unwrap(), json!(7));
        assert_eq!(coerce("x", ParamKind::Number, json!("2.5")).unwrap(), json!(2.5));
        assert_eq!(coerce("b", ParamKind::Boolean, json!("true")).unwrap(), json!(true));
        assert_eq!(coerce("b", ParamKind::Boolean, json!("0")).unwrap(), json!(false));
        assert_eq!(coerce("s", ParamKind::String, json!(5)).unwrap(), json!("5"));
        assert_eq!(coerce("j", ParamKind::Json, json!("[1,2]")).unwrap(), json!([1, 2]));
        assert_eq!(coerce("j", ParamKind::Json, json!("plain")).unwrap(), json!("plain"));
    }

    #[test]
    fn misfits_name_the_parameter() {
        let err = coerce("count", ParamKind::Integer, json!("ten")).unwrap_err();
        assert_eq!(err.code, "INVALID_PARAMETER");
        assert!(err.message.contains("'count' must be an integer, got \"ten\""), "{}", err.message);
        assert!(coerce("x", ParamKind::Number, json!("NaN")).is_err());
        assert!(coerce("n", ParamKind::Integer, json!(1.5)).is_err());
        assert!(coerce("s", ParamKind::String, json!({"a": 1})).is_err());
        let err = coerce("n", ParamKind::Integer, json!(["1", "2"])).unwrap_err();
        assert!(err.message.contains("given 2 times"));
    }

    #[test]
    fn defaults_and_required() {
        let params = [
            spec("name", ParamKind::String, false, Some(json!("world"))),
            spec("times", ParamKind::Integer, true, None),
        ];
        let mut kwargs = Map::new();
        let err = apply(&params, &mut kwargs).unwrap_err();
        assert_eq!(err.code, "MISSING_PARAMETER");
        assert!(err.message.contains("'times'"));
        let mut kwargs = json!({"times": "3", "extra": "kept"}).as_object().unwrap().clone();
        apply(&params, &mut kwargs).unwrap();
        assert_eq!(Value::Object(kwargs), json!({"name": "world", "times": 3, "extra": "kept"}));
    }
}
