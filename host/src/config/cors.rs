//! The CORS policy from `.env` (`CORS_*`), parsed and checked; the HTTP layer applies it.

/// The allowed origins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    Any,
    List(Vec<String>),
}

/// The CORS policy; `None` in the configuration when `CORS_ALLOW_ORIGIN` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub origins: Origins,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: u64,
    pub credentials: bool,
}

impl Cors {
    /// Parses the settings; every problem is returned, each naming its variable.
    pub fn parse(
        origin: &str,
        allow_headers: &str,
        expose_headers: &str,
        max_age: u64,
        credentials: bool,
    ) -> Result<Option<Cors>, Vec<String>> {
        let origin = origin.trim();
        if origin.is_empty() {
            return Ok(None);
        }
        let mut errors = Vec::new();
        let origins = if origin == "*" {
            if credentials {
                errors.push("CORS_ALLOW_ORIGIN=* with CORS_ALLOW_CREDENTIALS=true would let any site call with the user's credentials: list the origins instead".to_owned());
            }
            Origins::Any
        } else {
            let list: Vec<String> = origin
                .split(',')
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect();
            for o in &list {
                let valid = (o.starts_with("http://") || o.starts_with("https://"))
                    && !o.split_once("://").is_some_and(|(_, rest)| rest.is_empty() || rest.contains('/'));
                if !valid {
                    errors.push(format!(
                        "CORS_ALLOW_ORIGIN lists '{o}', which is not an origin such as https://app.example.com or http://localhost:3000"
                    ));
                }
            }
            Origins::List(list)
        };
        for (key, value) in [("CORS_ALLOW_HEADERS", allow_headers), ("CORS_EXPOSE_HEADERS", expose_headers)] {
            if value
                .split(',')
                .map(str::trim)
                .any(|h| !h.is_empty() && http::HeaderName::from_bytes(h.as_bytes()).is_err())
            {
                errors.push(format!("{key}={value} is not a comma-separated list of header names"));
            }
        }
        if errors.is_empty() {
            let tidy = |v: &str| v.split(',').map(str::trim).filter(|h| !h.is_empty()).collect::<Vec<_>>().join(", ");
            Ok(Some(Cors {
                origins,
                allow_headers: tidy(allow_headers),
                expose_headers: tidy(expose_headers),
                max_age,
                credentials,
            }))
        } else {
            Err(errors)
        }
    }
}
