//! Turning the raw path after `/rest/services/` into decoded segments, refusing what cannot be
//! a module, function or parameter value.

use http::StatusCode;
use percent_encoding::percent_decode_str;

use super::error::ApiError;

/// Longest decoded segment accepted.
pub(crate) const MAX_SEGMENT_BYTES: usize = 2048;

/// Splits and percent-decodes `tail` (the trailing slash is optional).
pub(crate) fn segments(tail: &str) -> Result<Vec<String>, ApiError> {
    let trimmed = tail.strip_suffix('/').unwrap_or(tail);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed.split('/').enumerate().map(|(i, raw)| decode(i + 1, raw)).collect()
}

fn decode(position: usize, raw: &str) -> Result<String, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::bad_request(
            "BAD_PATH",
            format!("path segment {position} is empty ('//'): every positional parameter needs a value"),
        ));
    }
    let text = percent_decode_str(raw).decode_utf8().map_err(|_| {
        ApiError::bad_request(
            "BAD_PATH",
            format!("path segment {position} is not valid UTF-8 once percent-decoded"),
        )
    })?;
    if text.len() > MAX_SEGMENT_BYTES {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "URI_TOO_LONG",
            format!(
                "path segment {position} is {} bytes long; the limit is {MAX_SEGMENT_BYTES}: send long values in the body",
                text.len()
            ),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "BAD_PATH",
            format!("path segment {position} contains a control character (such as %00)"),
        ));
    }
    if text == "." || text == ".." {
        return Err(ApiError::bad_request(
            "BAD_PATH",
            format!("path segment {position} is '{text}', which is not allowed"),
        ));
    }
    Ok(text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_trims() {
        assert_eq!(
            segments("v1/hello-world/a%20b/caf%C3%A9/").unwrap(),
            vec!["v1", "hello-world", "a b", "café"]
        );
        assert_eq!(segments("hello-world").unwrap(), vec!["hello-world"]);
        assert!(segments("").unwrap().is_empty());
        assert!(segments("/").unwrap().is_empty());
        assert_eq!(segments("x/a%2Fb").unwrap(), vec!["x", "a/b"]);
    }

    #[test]
    fn refuses_odd_segments() {
        for bad in ["a//b", "a/%00/b", "a/../b", "a/%2e%2e", "a/%FF", "a/."] {
            let err = segments(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        let long = "x".repeat(MAX_SEGMENT_BYTES + 1);
        assert_eq!(segments(&format!("f/{long}")).unwrap_err().status, StatusCode::URI_TOO_LONG);
    }
}
