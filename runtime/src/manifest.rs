//! A plugin's manifest as the host trusts it: names checked, methods parsed, defaults coerced.

use plugin_api::{abi, Visibility};
use serde_json::Value;

use crate::params::{self, ParamSpec};

/// Why a name cannot be a module, alias or function name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must be 1 to 64 characters long")]
    Length,
    #[error("is reserved")]
    Reserved,
    #[error("contains '{0}': use letters, digits, '_', '-' and '.'")]
    Character(char),
}

/// Why a list of method names is not a method set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    #[error("unknown method '{0}' (use GET, POST, PUT, DELETE or PATCH)")]
    Unknown(String),
    #[error("declares no method")]
    None,
}

/// Everything wrong with a plugin's manifest, each problem in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct ManifestError {
    pub problems: Vec<String>,
}

impl From<String> for ManifestError {
    fn from(problem: String) -> ManifestError {
        ManifestError { problems: vec![problem] }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: what a kwarg name (declared by a plugin, or configured) may look like.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The HTTP methods a function answers, besides the `HEAD` and `OPTIONS` the host adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(u8);

const METHODS: [(&str, u8); 5] = [("GET", 1), ("POST", 2), ("PUT", 4), ("DELETE", 8), ("PATCH", 16)];

impl MethodSet {
    /// Parses the method names a plugin declared.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<MethodSet, MethodError> {
        let mut bits = 0;
        for name in names {
            let upper = name.trim().to_ascii_uppercase();
            if upper.is_empty() {
                continue;
            }
            match METHODS.iter().find(|(n, _)| *n == upper) {
                Some((_, bit)) => bits |= bit,
                None => return Err(MethodError::Unknown(name.to_owned())),
            }
        }
        if bits == 0 {
            return Err(MethodError::None);
        }
        Ok(MethodSet(bits))
    }

    /// Whether a request with `method` runs the function (`HEAD` runs `GET` functions).
    pub fn allows(self, method: &http::Method) -> bool {
        let name = if method == http::Method::HEAD { "GET" } else { method.as_str() };
        METHODS.iter().any(|(n, bit)| *n == name && self.0 & bit != 0)
    }

    /// The declared methods, in a fixed order.
    pub fn names(self) -> Vec<&'static str> {
        METHODS.iter().filter(|(_, bit)| self.0 & bit != 0).map(|(n, _)| *n).collect()
    }

    /// The value of the `Allow` header: declared methods, `HEAD` for `GET`, and `OPTIONS`.
    pub fn allow_header(self) -> String {
        let mut names = Vec::new();
        for name in self.names() {
            names.push(name);
            if name == "GET" {
                names.push("HEAD");
            }
        }
        names.push("OPTIONS");
        names.join(", ")
    }
}

/// An exposed function.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// Index in the plugin's own function list, passed back on every call.
    pub index: u32,
    pub name: String,
    pub api: Option<String>,
    pub methods: MethodSet,
    pub doc: String,
    pub params: Vec<ParamSpec>,
    pub visibility: Visibility,
}

impl FunctionSpec {
    /// The name used in URLs: the API alias, or the function's name.
    pub fn route_name(&self) -> &str {
        self.api.as_deref().unwrap_or(&self.name)
    }
}

/// A module with its exposed functions (those whose names start with `__` are left out).
#[derive(Debug, Clone)]
pub struct ModuleSpec {
    pub name: String,
    pub alias: Option<String>,
    pub version: String,
    pub description: String,
    pub functions: Vec<FunctionSpec>,
}

impl ModuleSpec {
    /// The name used in URLs: the alias, or the module's name.
    pub fn route_name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.name)
    }

    /// Validates what a plugin declared; every problem is listed in the error.
    pub fn from_abi(manifest: &abi::Manifest) -> Result<ModuleSpec, ManifestError> {
        // Bounded before anything is copied: a manifest is served in every `__dir__` and OpenAPI
        // document, so its size is everyone's memory and bandwidth.
        check_size(manifest)?;
        let mut problems = Vec::new();
        let name = manifest.name.as_str().to_owned();
        if let Err(why) = check_name(&name) {
            problems.push(format!("module name '{name}' {why}"));
        }
        let alias = non_empty(manifest.alias.as_str());
        if let Some(alias) = &alias {
            if let Err(why) = check_name(alias) {
                problems.push(format!("module alias '{alias}' {why}"));
            }
        }
        let mut functions: Vec<FunctionSpec> = Vec::new();
        for (index, decl) in manifest.functions.iter().enumerate() {
            let fname = decl.name.as_str();
            if fname.starts_with("__") {
                continue;
            }
            match function_from_abi(index, decl) {
                Ok(function) => {
                    if let Some(other) = functions
                        .iter()
                        .find(|f| f.route_name() == function.route_name() || f.name == function.name)
                    {
                        problems.push(format!(
                            "functions '{}' and '{}' share the name '{}'",
                            other.name,
                            function.name,
                            function.route_name()
                        ));
                    } else {
                        functions.push(function);
                    }
                }
                Err(why) => problems.push(format!("function '{fname}': {why}")),
            }
        }
        if problems.is_empty() {
            Ok(ModuleSpec {
                name,
                alias,
                version: manifest.version.as_str().to_owned(),
                description: manifest.description.as_str().to_owned(),
                functions,
            })
        } else {
            Err(ManifestError { problems })
        }
    }
}

/// Most functions a module may declare.
pub const MAX_FUNCTIONS: usize = 256;
/// Most parameters a function may declare.
pub const MAX_PARAMS: usize = 64;
/// Most characters in one doc line, description or parameter default.
pub const MAX_TEXT: usize = 4096;
/// Most characters of text in a whole manifest.
pub const MAX_MANIFEST_TEXT: usize = 256 * 1024;

fn check_size(manifest: &abi::Manifest) -> Result<(), String> {
    if manifest.functions.len() > MAX_FUNCTIONS {
        return Err(format!(
            "the manifest declares {} functions; a module may declare at most {MAX_FUNCTIONS}: split it into several modules",
            manifest.functions.len()
        ));
    }
    let mut total = manifest.name.len() + manifest.alias.len() + manifest.version.len();
    let mut text = |what: &dyn Fn() -> String, len: usize| -> Result<(), String> {
        if len > MAX_TEXT {
            return Err(format!("{} is {len} characters long; at most {MAX_TEXT} are allowed", what()));
        }
        total += len;
        Ok(())
    };
    text(&|| "the module description".to_owned(), manifest.description.len())?;
    for decl in manifest.functions.iter() {
        let fname = decl.name.as_str();
        text(
            &|| format!("the name of function '{}'", fname.chars().take(64).collect::<String>()),
            decl.name.len(),
        )?;
        text(&|| format!("the doc of function '{fname}'"), decl.doc.len())?;
        text(&|| format!("the API alias of function '{fname}'"), decl.api.len())?;
        if decl.params.len() > MAX_PARAMS {
            return Err(format!(
                "function '{fname}' declares {} parameters; at most {MAX_PARAMS} are allowed",
                decl.params.len()
            ));
        }
        for p in decl.params.iter() {
            text(&|| format!("a parameter name of function '{fname}'"), p.name.len())?;
            text(&|| format!("the doc of parameter '{}' of function '{fname}'", p.name), p.doc.len())?;
            text(
                &|| format!("the default of parameter '{}' of function '{fname}'", p.name),
                p.default_json.len(),
            )?;
        }
    }
    if total > MAX_MANIFEST_TEXT {
        return Err(format!(
            "the manifest holds {total} characters of names and docs; at most {MAX_MANIFEST_TEXT} are allowed"
        ));
    }
    Ok(())
}

fn function_from_abi(index: usize, decl: &abi::FunctionDecl) -> Result<FunctionSpec, String> {
    let name = decl.name.as_str().to_owned();
    check_name(&name).map_err(|why| format!("name {why}"))?;
    let api = non_empty(decl.api.as_str());
    if let Some(api) = &api {
        check_name(api).map_err(|why| format!("API alias '{api}' {why}"))?;
        if api.starts_with("__") {
            return Err(format!("API alias '{api}' must not start with '__'"));
        }
    }
    let methods = MethodSet::parse(decl.methods.iter().map(|m| m.as_str())).map_err(|err| err.to_string())?;
    let mut params: Vec<ParamSpec> = Vec::new();
    for p in decl.params.iter() {
        let pname = p.name.as_str().to_owned();
        if !is_identifier(&pname) {
            return Err(format!("parameter '{pname}' is not a valid name (letters, digits and '_')"));
        }
        if params.iter().any(|q| q.name == pname) {
            return Err(format!("parameter '{pname}' is declared twice"));
        }
        let default = match non_empty(p.default_json.as_str()) {
            None => None,
            Some(text) => {
                let value: Value =
                    serde_json::from_str(&text).map_err(|err| format!("parameter '{pname}' has a default that is not JSON: {err}"))?;
                Some(
                    params::coerce(&pname, p.kind, value)
                        .map_err(|err| format!("parameter '{pname}' has a default that does not fit its type: {}", err.message))?,
                )
            }
        };
        params.push(ParamSpec {
            name: pname,
            kind: p.kind,
            required: p.required,
            default,
            doc: p.doc.as_str().to_owned(),
        });
    }
    Ok(FunctionSpec {
        index: u32::try_from(index).map_err(|_| "too many functions".to_owned())?,
        name,
        api,
        methods,
        doc: decl.doc.as_str().to_owned(),
        params,
        visibility: decl.visibility,
    })
}

fn non_empty(text: &str) -> Option<String> {
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// Module, alias and function names: 1–64 of `A-Z a-z 0-9 _ - .`, so they need no escaping in URLs.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 64 {
        return Err(NameError::Length);
    }
    if name == "__dir__" || name == "." || name == ".." {
        return Err(NameError::Reserved);
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))) {
        return Err(NameError::Character(c));
    }
    Ok(())
}

/// How the visibility is written in listings.
pub fn visibility_name(visibility: Visibility) -> &'static str {
    match visibility {
        Visibility::Public => "public",
        Visibility::Tenant => "tenant",
        Visibility::Admin => "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(is_identifier("parm_1"));
        assert!(is_identifier("_x"));
        assert!(!is_identifier("1x"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier(""));
    }

    #[test]
    fn methods_parse_and_render() {
        let set = MethodSet::parse(["GET", "put", " POST "]).unwrap();
        assert_eq!(set.names(), vec!["GET", "POST", "PUT"]);
        assert_eq!(set.allow_header(), "GET, HEAD, POST, PUT, OPTIONS");
        assert!(set.allows(&http::Method::HEAD));
        assert!(!set.allows(&http::Method::DELETE));
        assert_eq!(MethodSet::parse(["FETCH"]).unwrap_err(), MethodError::Unknown("FETCH".to_owned()));
        assert!(MethodSet::parse([""]).is_err());
        assert_eq!(MethodSet::parse(["DELETE"]).unwrap().allow_header(), "DELETE, OPTIONS");
    }

    #[test]
    fn names() {
        assert!(check_name("product_v2").is_ok());
        assert!(check_name("hello-world").is_ok());
        assert!(check_name("__dir__").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }
}
