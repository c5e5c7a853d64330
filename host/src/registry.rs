//! The routing table: which module and function a URL names. Built once per load, read without
//! locks (it sits behind an `ArcSwap` in [`crate::plugins::Plugins`]).

use std::{collections::HashMap, sync::Arc};

use plughost_runtime::manifest::FunctionSpec;

use crate::loader::LoadedModule;

/// A function ready to be called: its module and its spec.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub module: Arc<LoadedModule>,
    function: usize,
}

impl Endpoint {
    pub(crate) fn function(&self) -> &FunctionSpec {
        &self.module.spec.functions[self.function]
    }

    /// What the plugin is told a call is for.
    pub(crate) fn target(&self) -> plughost_runtime::call::Target<'_> {
        let function = self.function();
        plughost_runtime::call::Target {
            index: function.index,
            module: &self.module.spec.name,
            function: &function.name,
        }
    }

    /// This function's metric series.
    pub(crate) fn metrics(&self) -> &crate::metrics::FunctionMetrics {
        &self.module.metrics[self.function]
    }

    /// How many of this function's latest calls in a row were quick.
    pub(crate) fn quick_streak(&self) -> &std::sync::atomic::AtomicU32 {
        &self.module.quick_streaks[self.function]
    }
}

/// What the path segments after `/rest/services/` name.
#[derive(Debug)]
pub(crate) enum Resolution<'a> {
    /// A function, and the positional segments that follow it.
    Call { endpoint: Endpoint, rest: &'a [String] },
    /// `__dir__` for everything, or for one module.
    Dir(Option<Arc<LoadedModule>>),
    /// An unqualified function name that several modules export.
    Ambiguous { name: String, paths: Vec<String> },
    /// A module named without a function it has.
    NoSuchFunction {
        module: Arc<LoadedModule>,
        function: Option<String>,
    },
    /// Nothing by that name.
    NotFound { name: String },
}

/// Which modules a caller may call: resolution only ever considers those, so that a module the
/// caller may not call can neither capture its URL nor make its names ambiguous.
pub(crate) trait Viewer {
    fn sees(&self, module: &LoadedModule) -> bool;
}

/// Everything: the view of the admin, and of the checks that hold for every caller.
pub(crate) struct Everything;

impl Viewer for Everything {
    fn sees(&self, _: &LoadedModule) -> bool {
        true
    }
}

impl<F: Fn(&LoadedModule) -> bool> Viewer for F {
    fn sees(&self, module: &LoadedModule) -> bool {
        self(module)
    }
}

impl Resolution<'_> {
    /// Whether this resolution, made over every module, is what every caller gets: it involves
    /// only the admin's modules (which everyone sees) and no ambiguity (which depends on who
    /// looks).
    pub(crate) fn same_for_every_caller(&self) -> bool {
        match self {
            Resolution::Call { endpoint, .. } => endpoint.module.owner.is_none(),
            Resolution::Dir(module) => module.as_ref().is_none_or(|m| m.owner.is_none()),
            Resolution::NoSuchFunction { module, .. } => module.owner.is_none(),
            Resolution::Ambiguous { .. } => false,
            Resolution::NotFound { .. } => true,
        }
    }
}

/// Modules by name and alias, and functions by route name.
///
/// The naming rule, the one place it is written: a module's name or alias is unique among
/// modules, and is never the route name of a function that is reachable without its module
/// (`/rest/services/<function>/`), so that `/rest/services/<x>/<y>/` cannot mean both "function
/// `y` of module `x`" and "function `x` with the positional segment `y`". The admin's modules are
/// placed first, so their names always win over tenants'. A function whose route name is a
/// module's name or alias is reachable only through its own module.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    modules: Vec<Arc<LoadedModule>>,
    by_key: HashMap<String, usize>,
    by_function: HashMap<String, Vec<(usize, usize)>>,
}

impl Registry {
    /// Builds a table from `modules`, the admin's first, each group in order. A module that
    /// breaks the naming rule against an earlier one is left out; the refusals come back with
    /// their reasons.
    pub(crate) fn build(mut modules: Vec<Arc<LoadedModule>>) -> (Registry, Vec<(Arc<LoadedModule>, String)>) {
        modules.sort_by_key(|m| m.owner.is_some());
        let mut registry = Registry::default();
        let mut refused = Vec::new();
        for module in modules {
            match conflict(&registry.modules, &module) {
                Some((_, reason)) => refused.push((module, reason)),
                None => registry.insert(module),
            }
        }
        (registry, refused)
    }

    fn insert(&mut self, module: Arc<LoadedModule>) {
        let index = self.modules.len();
        self.by_key.insert(module.spec.name.clone(), index);
        if let Some(alias) = &module.spec.alias {
            self.by_key.insert(alias.clone(), index);
        }
        for (f, function) in module.spec.functions.iter().enumerate() {
            if !self.by_key.contains_key(function.route_name()) {
                self.by_function
                    .entry(function.route_name().to_owned())
                    .or_default()
                    .push((index, f));
            }
        }
        self.modules.push(module);
    }

    /// The routed modules, the admin's first.
    pub(crate) fn modules(&self) -> &[Arc<LoadedModule>] {
        &self.modules
    }

    /// The module a URL segment names, by name or alias.
    pub(crate) fn module(&self, key: &str) -> Option<&Arc<LoadedModule>> {
        self.by_key.get(key).map(|&i| &self.modules[i])
    }

    /// Whether a function's route name reaches exactly one function among the modules `viewer`
    /// sees, without naming its module.
    pub(crate) fn is_unique(&self, route_name: &str, viewer: &dyn Viewer) -> bool {
        self.by_function
            .get(route_name)
            .is_some_and(|hits| hits.iter().filter(|(m, _)| viewer.sees(&self.modules[*m])).count() == 1)
    }

    /// Resolves `segments` (already percent-decoded, non-empty) among the modules `viewer` sees.
    ///
    /// If the first segment names a module and the second one of its functions, that is the call;
    /// otherwise the first segment is a function name that must be unique among those modules.
    pub(crate) fn resolve<'a>(&self, segments: &'a [String], viewer: &dyn Viewer) -> Resolution<'a> {
        let Some(first) = segments.first() else {
            return Resolution::Dir(None);
        };
        if first == "__dir__" {
            return Resolution::Dir(None);
        }
        let module = self.by_key.get(first.as_str()).copied().filter(|&m| viewer.sees(&self.modules[m]));
        if let (Some(m), Some(second)) = (module, segments.get(1)) {
            if second == "__dir__" {
                return Resolution::Dir(Some(self.modules[m].clone()));
            }
            if let Some(f) = self.modules[m].spec.functions.iter().position(|f| f.route_name() == second) {
                return Resolution::Call {
                    endpoint: self.endpoint(m, f),
                    rest: &segments[2..],
                };
            }
        }
        let hits = self.by_function.get(first.as_str()).map(Vec::as_slice).unwrap_or_default();
        let mut seen = hits.iter().filter(|(m, _)| viewer.sees(&self.modules[*m]));
        match (seen.next(), seen.next()) {
            (Some(&(m, f)), None) => Resolution::Call {
                endpoint: self.endpoint(m, f),
                rest: &segments[1..],
            },
            (Some(_), Some(_)) => Resolution::Ambiguous {
                name: first.clone(),
                paths: hits
                    .iter()
                    .filter(|(m, _)| viewer.sees(&self.modules[*m]))
                    .map(|(m, f)| self.qualified_path(*m, *f))
                    .collect(),
            },
            (None, _) => match module {
                Some(m) => Resolution::NoSuchFunction {
                    module: self.modules[m].clone(),
                    function: segments.get(1).cloned(),
                },
                None => Resolution::NotFound { name: first.clone() },
            },
        }
    }

    fn endpoint(&self, module: usize, function: usize) -> Endpoint {
        Endpoint {
            module: self.modules[module].clone(),
            function,
        }
    }

    fn qualified_path(&self, module: usize, function: usize) -> String {
        let spec = &self.modules[module].spec;
        format!("/rest/services/{}/{}/", spec.route_name(), spec.functions[function].route_name())
    }
}

/// Whether `module` may join `routed` under the naming rule; if not, the index of the module it
/// clashes with, and why. A module of another file only: a new version of a routed file replaces it.
pub(crate) fn conflict(routed: &[Arc<LoadedModule>], module: &LoadedModule) -> Option<(usize, String)> {
    let spec = &module.spec;
    let keys: Vec<&str> = std::iter::once(spec.name.as_str()).chain(spec.alias.as_deref()).collect();
    routed.iter().enumerate().filter(|(_, other)| other.file != module.file).find_map(|(i, other)| {
        let file = other.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let owner = if other.owner.is_some() { "a tenant's" } else { "the admin's" };
        if let Some(key) = keys
            .iter()
            .find(|k| **k == other.spec.name || Some(**k) == other.spec.alias.as_deref())
        {
            return Some((
                i,
                format!(
                    "module '{}' collides with '{}' already loaded from {file} ({owner}): the name or alias '{key}' is taken",
                    spec.name, other.spec.name
                ),
            ));
        }
        // An admin's module named like a tenant's function takes the name: that function is then
        // reachable only through its own module (see `insert`), as the admin's placed first.
        if module.owner.is_none() && other.owner.is_some() {
            return None;
        }
        let other_keys = [Some(other.spec.name.as_str()), other.spec.alias.as_deref()];
        if let Some(key) = keys.iter().find(|k| {
            other
                .spec
                .functions
                .iter()
                .any(|f| f.route_name() == **k && !other_keys.contains(&Some(f.route_name())))
        }) {
            return Some((
                i,
                format!(
                    "module '{}' collides with '{}' loaded from {file} ({owner}): '{key}' is the name of one of its functions, reachable as /rest/services/{key}/",
                    spec.name, other.spec.name
                ),
            ));
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::Backend;
    use plughost_runtime::manifest::{MethodSet, ModuleSpec};

    fn function(name: &str, api: Option<&str>) -> FunctionSpec {
        FunctionSpec {
            index: 0,
            name: name.to_owned(),
            api: api.map(str::to_owned),
            methods: MethodSet::parse(["GET"]).unwrap(),
            doc: String::new(),
            params: Vec::new(),
            visibility: plugin_api::Visibility::Public,
        }
    }

    /// A module of `file` named `name` (with `alias`), exporting `functions`, owned by `owner`.
    fn module(file: &str, name: &str, alias: Option<&str>, functions: &[&str], owner: Option<&str>) -> Arc<LoadedModule> {
        let spec = ModuleSpec {
            name: name.to_owned(),
            alias: alias.map(str::to_owned),
            version: "1".to_owned(),
            description: String::new(),
            functions: functions.iter().map(|f| function(f, None)).collect(),
        };
        Arc::new(LoadedModule::new(
            spec,
            file.into(),
            String::new(),
            0,
            owner.map(str::to_owned),
            Backend::Detached,
        ))
    }

    fn segments(path: &str) -> Vec<String> {
        path.split('/').filter(|s| !s.is_empty()).map(str::to_owned).collect()
    }

    /// What a path resolves to, in words: `call m.f [rest]`, `dir m`, `ambiguous …`, ….
    fn resolved(registry: &Registry, path: &str, viewer: &dyn Viewer) -> String {
        let segments = segments(path);
        match registry.resolve(&segments, viewer) {
            Resolution::Call { endpoint, rest } => {
                format!("call {}.{} {rest:?}", endpoint.module.spec.name, endpoint.function().name)
            }
            Resolution::Dir(None) => "dir".to_owned(),
            Resolution::Dir(Some(m)) => format!("dir {}", m.spec.name),
            Resolution::Ambiguous { name, paths } => format!("ambiguous {name} {paths:?}"),
            Resolution::NoSuchFunction { module, function } => format!("no function {function:?} in {}", module.spec.name),
            Resolution::NotFound { name } => format!("not found {name}"),
        }
    }

    fn registry(modules: Vec<Arc<LoadedModule>>) -> Registry {
        let (registry, refused) = Registry::build(modules);
        assert!(refused.is_empty(), "{refused:?}");
        registry
    }

    #[test]
    fn functions_resolve_through_their_module_or_alone_when_unique() {
        let r = registry(vec![
            module("a.so", "module1", Some("v1"), &["echo", "hello"], None),
            module("b.so", "module2", None, &["echo", "sum"], None),
        ]);
        let all = &Everything;
        assert_eq!(resolved(&r, "v1/echo/a/b", all), r#"call module1.echo ["a", "b"]"#);
        assert_eq!(resolved(&r, "module1/echo", all), "call module1.echo []");
        assert_eq!(resolved(&r, "module2/echo/x", all), r#"call module2.echo ["x"]"#);
        assert_eq!(resolved(&r, "sum/1/2", all), r#"call module2.sum ["1", "2"]"#);
        assert_eq!(resolved(&r, "hello", all), "call module1.hello []");
        assert_eq!(
            resolved(&r, "echo", all),
            r#"ambiguous echo ["/rest/services/v1/echo/", "/rest/services/module2/echo/"]"#
        );
        assert_eq!(resolved(&r, "v1/nope", all), r#"no function Some("nope") in module1"#);
        assert_eq!(resolved(&r, "module2", all), "no function None in module2");
        assert_eq!(resolved(&r, "nothing/echo", all), "not found nothing");
        assert_eq!(resolved(&r, "", all), "dir");
        assert_eq!(resolved(&r, "__dir__", all), "dir");
        assert_eq!(resolved(&r, "v1/__dir__", all), "dir module1");
    }

    #[test]
    fn a_caller_resolves_among_the_modules_it_sees_only() {
        let r = registry(vec![
            module("t.so", "vault", None, &["secret", "echo"], Some("t-1")),
            module("a.so", "module1", None, &["echo"], None),
        ]);
        let admin_only = |m: &LoadedModule| m.owner.is_none();
        assert_eq!(r.modules()[0].spec.name, "module1", "the admin's modules come first");
        assert_eq!(resolved(&r, "vault/secret", &admin_only), "not found vault");
        assert_eq!(resolved(&r, "secret", &admin_only), "not found secret");
        // A tenant's module the caller cannot see makes nothing ambiguous for it.
        assert_eq!(resolved(&r, "echo", &admin_only), "call module1.echo []");
        assert_eq!(resolved(&r, "vault/secret", &Everything), "call vault.secret []");
        assert!(resolved(&r, "echo", &Everything).starts_with("ambiguous echo"));
        let segments = segments("vault/secret");
        assert!(
            !r.resolve(&segments, &Everything).same_for_every_caller(),
            "a tenant's module depends on the caller"
        );
        let segments = self::segments("module1/echo");
        assert!(r.resolve(&segments, &Everything).same_for_every_caller());
        assert!(r.is_unique("secret", &Everything) && !r.is_unique("echo", &Everything) && r.is_unique("echo", &admin_only));
    }

    #[test]
    fn the_naming_rule_refuses_what_would_make_a_url_mean_two_things() {
        let (r, refused) = Registry::build(vec![
            module("a.so", "module1", Some("v1"), &["echo"], None),
            module("b.so", "v1", None, &["other"], None),
            module("c.so", "echo", None, &["x"], None),
            module("d.so", "module4", None, &["module1"], None),
        ]);
        let names: Vec<&str> = r.modules().iter().map(|m| m.spec.name.as_str()).collect();
        assert_eq!(names, ["module1", "module4"]);
        let reasons: Vec<&str> = refused.iter().map(|(_, why)| why.as_str()).collect();
        assert!(reasons[0].contains("the name or alias 'v1' is taken"), "{reasons:?}");
        assert!(reasons[1].contains("'echo' is the name of one of its functions"), "{reasons:?}");
        // A function named like a module is reachable only through its own module.
        assert_eq!(resolved(&r, "module1", &Everything), "no function None in module1");
        assert_eq!(resolved(&r, "module4/module1", &Everything), "call module4.module1 []");
        // A new version of the same file is no conflict: it replaces the old one.
        let alone = registry(vec![module("a.so", "module1", Some("v1"), &["echo"], None)]);
        let again = module("a.so", "module1", Some("v1"), &["echo", "more"], None);
        assert!(conflict(alone.modules(), &again).is_none());
    }

    #[test]
    fn the_admins_module_takes_a_name_a_tenants_function_has() {
        let r = registry(vec![
            module("t.so", "tools", None, &["report"], Some("t-1")),
            module("a.so", "report", None, &["daily"], None),
        ]);
        assert_eq!(resolved(&r, "report/daily", &Everything), "call report.daily []");
        assert_eq!(resolved(&r, "tools/report", &Everything), "call tools.report []");
    }
}
