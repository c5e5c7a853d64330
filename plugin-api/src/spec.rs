//! How an author describes a module: [`Plugin`], its [`Function`]s and their [`Param`]s.

use serde_json::Value;

use crate::{
    abi::{ParamKind, Visibility},
    IntoResponse, Request, Response, Result,
};

pub(crate) type Handler = Box<dyn Fn(&Request<'_>) -> Result<Response> + Send + Sync>;

/// A module: its name, optional alias, version, description and functions.
pub struct Plugin {
    pub(crate) name: String,
    pub(crate) alias: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) description: String,
    pub(crate) functions: Vec<Function>,
}

impl Plugin {
    /// A module called `name` (letters, digits, `_` and `-`), served at `/rest/services/<name>/…`.
    pub fn new(name: impl Into<String>) -> Self {
        Plugin {
            name: name.into(),
            alias: None,
            version: None,
            description: String::new(),
            functions: Vec::new(),
        }
    }

    /// A second name for the module in URLs, such as `v1`.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.alias = Some(alias.into());
        self
    }

    /// The module's version; defaults to the plugin crate's `CARGO_PKG_VERSION`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// A one-line description, shown in `__dir__`.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Adds an exported function.
    pub fn function(mut self, function: Function) -> Self {
        self.functions.push(function);
        self
    }

    #[doc(hidden)]
    pub fn default_version(mut self, version: &str) -> Self {
        self.version.get_or_insert_with(|| version.to_owned());
        self
    }
}

/// An exported function: its name, API alias, methods, doc line, parameters and visibility.
pub struct Function {
    pub(crate) name: String,
    pub(crate) api: Option<String>,
    pub(crate) methods: Vec<String>,
    pub(crate) doc: String,
    pub(crate) params: Vec<Param>,
    pub(crate) visibility: Visibility,
    pub(crate) handler: Handler,
}

impl Function {
    /// A function called `name`, answering `GET` by default, visible to tenants by default.
    ///
    /// Names starting with `__` are never exposed by the host.
    pub fn new<F, R>(name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(&Request<'_>) -> Result<R> + Send + Sync + 'static,
        R: IntoResponse,
    {
        Function {
            name: name.into(),
            api: None,
            methods: vec!["GET".to_owned()],
            doc: String::new(),
            params: Vec::new(),
            visibility: Visibility::Tenant,
            handler: Box::new(move |req| handler(req).map(IntoResponse::into_response)),
        }
    }

    /// The name used in URLs instead of the function's own, such as `hello-world`.
    pub fn api(mut self, api: impl Into<String>) -> Self {
        self.api = Some(api.into());
        self
    }

    /// The HTTP methods it answers: `"GET|PUT|POST"`, `["GET", "POST"]` or a `Vec`.
    /// `HEAD` (for `GET` functions) and `OPTIONS` are answered by the host.
    pub fn methods(mut self, methods: impl Methods) -> Self {
        self.methods = methods.into_methods();
        self
    }

    /// A one-line description, shown in `__dir__`.
    pub fn doc(mut self, doc: impl Into<String>) -> Self {
        self.doc = doc.into();
        self
    }

    /// Declares a parameter; the host coerces the kwarg to its type or answers 422.
    pub fn param(mut self, param: Param) -> Self {
        self.params.push(param);
        self
    }

    /// Callable by anyone, without credentials.
    pub fn public(self) -> Self {
        self.visibility(Visibility::Public)
    }

    /// Callable by the admin only.
    pub fn admin_only(self) -> Self {
        self.visibility(Visibility::Admin)
    }

    /// Sets who may call the function.
    pub fn visibility(mut self, visibility: Visibility) -> Self {
        self.visibility = visibility;
        self
    }
}

/// A method set, written `"GET|PUT"` or as a list.
pub trait Methods {
    /// The method names, as written.
    fn into_methods(self) -> Vec<String>;
}

impl Methods for &str {
    fn into_methods(self) -> Vec<String> {
        self.split('|').map(|m| m.trim().to_owned()).collect()
    }
}

impl<const N: usize> Methods for [&str; N] {
    fn into_methods(self) -> Vec<String> {
        self.iter().map(|m| m.trim().to_owned()).collect()
    }
}

impl Methods for &[&str] {
    fn into_methods(self) -> Vec<String> {
        self.iter().map(|m| m.trim().to_owned()).collect()
    }
}

impl Methods for Vec<&str> {
    fn into_methods(self) -> Vec<String> {
        self.as_slice().into_methods()
    }
}

impl Methods for Vec<String> {
    fn into_methods(self) -> Vec<String> {
        self
    }
}

/// A declared parameter: name, type, required or default, doc line.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub(crate) name: String,
    pub(crate) kind: ParamKind,
    pub(crate) required: bool,
    pub(crate) default: Option<Value>,
    pub(crate) doc: String,
}

impl Param {
    fn new(name: impl Into<String>, kind: ParamKind) -> Self {
        Param {
            name: name.into(),
            kind,
            required: false,
            default: None,
            doc: String::new(),
        }
    }

    /// A string parameter (numbers and booleans are converted to text).
    pub fn string(name: impl Into<String>) -> Self {
        Self::new(name, ParamKind::String)
    }

    /// A 64-bit signed integer parameter.
    pub fn integer(name: impl Into<String>) -> Self {
        Self::new(name, ParamKind::Integer)
    }

    /// A floating-point parameter.
    pub fn number(name: impl Into<String>) -> Self {
        Self::new(name, ParamKind::Number)
    }

    /// A boolean parameter (`true`/`false`/`1`/`0` in URLs and queries).
    pub fn boolean(name: impl Into<String>) -> Self {
        Self::new(name, ParamKind::Boolean)
    }

    /// Any JSON value (URL and query values are parsed as JSON when they can be).
    pub fn json(name: impl Into<String>) -> Self {
        Self::new(name, ParamKind::Json)
    }

    /// The call fails with 422 when the parameter is missing.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    /// The value used when the parameter is missing.
    pub fn default(mut self, value: impl Into<Value>) -> Self {
        self.default = Some(value.into());
        self
    }

    /// A one-line description, shown in `__dir__`.
    pub fn doc(mut self, doc: impl Into<String>) -> Self {
        self.doc = doc.into();
        self
    }
}
