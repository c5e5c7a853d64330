//! The routing table: which module and function a URL names. Built once per load, read without
//! locks (it sits behind an `ArcSwap` in [`crate::plugins::Plugins`]).

use std::{collections::HashMap, sync::Arc};

use crate::{loader::LoadedModule, manifest::FunctionSpec};

/// A function ready to be called: its module and its spec.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub module: Arc<LoadedModule>,
    function: usize,
}

impl Endpoint {
    pub fn function(&self) -> &FunctionSpec {
        &self.module.spec.functions[self.function]
    }

    /// This function's metric series.
    pub fn metrics(&self) -> &crate::metrics::FunctionMetrics {
        &self.module.metrics[self.function]
    }

    /// How many of this function's latest calls in a row were quick.
    pub fn quick_streak(&self) -> &std::sync::atomic::AtomicU32 {
        &self.module.quick_streaks[self.function]
    }
}

/// What the path segments after `/rest/services/` name.
#[derive(Debug)]
pub enum Resolution<'a> {
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

/// Modules by name and alias, and functions by route name.
#[derive(Debug, Default)]
pub struct Registry {
    modules: Vec<Arc<LoadedModule>>,
    by_key: HashMap<String, usize>,
    by_function: HashMap<String, Vec<(usize, usize)>>,
}

impl Registry {
    /// Builds a table from `modules` in order. A module whose name or alias is taken by an earlier
    /// one is left out; the refusals come back with their reasons.
    pub fn build(modules: Vec<Arc<LoadedModule>>) -> (Registry, Vec<(Arc<LoadedModule>, String)>) {
        let mut registry = Registry::default();
        let mut refused = Vec::new();
        for module in modules {
            match registry.collision(&module) {
                Some(reason) => refused.push((module, reason)),
                None => registry.insert(module),
            }
        }
        (registry, refused)
    }

    fn collision(&self, module: &LoadedModule) -> Option<String> {
        let spec = &module.spec;
        let keys = std::iter::once(spec.name.as_str()).chain(spec.alias.as_deref());
        for key in keys {
            if let Some(&i) = self.by_key.get(key) {
                let other = &self.modules[i];
                return Some(format!(
                    "module '{}' collides with '{}' already loaded from {}: the name or alias '{key}' is taken",
                    spec.name,
                    other.spec.name,
                    other.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                ));
            }
        }
        None
    }

    fn insert(&mut self, module: Arc<LoadedModule>) {
        let index = self.modules.len();
        self.by_key.insert(module.spec.name.clone(), index);
        if let Some(alias) = &module.spec.alias {
            self.by_key.insert(alias.clone(), index);
        }
        for (f, function) in module.spec.functions.iter().enumerate() {
            self.by_function
                .entry(function.route_name().to_owned())
                .or_default()
                .push((index, f));
        }
        self.modules.push(module);
    }

    /// The routed modules, in load order.
    pub fn modules(&self) -> &[Arc<LoadedModule>] {
        &self.modules
    }

    /// The module a URL segment names, by name or alias.
    pub fn module(&self, key: &str) -> Option<&Arc<LoadedModule>> {
        self.by_key.get(key).map(|&i| &self.modules[i])
    }

    /// Whether a function's route name is exported by exactly one module.
    pub fn is_unique(&self, route_name: &str) -> bool {
        self.by_function.get(route_name).is_some_and(|hits| hits.len() == 1)
    }

    /// Resolves `segments` (already percent-decoded, non-empty).
    ///
    /// If the first segment names a module and the second one of its functions, that is the call;
    /// otherwise the first segment is a function name that must be unique across modules.
    pub fn resolve<'a>(&self, segments: &'a [String]) -> Resolution<'a> {
        let Some(first) = segments.first() else {
            return Resolution::Dir(None);
        };
        if first == "__dir__" {
            return Resolution::Dir(None);
        }
        let module = self.by_key.get(first.as_str()).copied();
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
        match self.by_function.get(first.as_str()).map(Vec::as_slice) {
            Some([(m, f)]) => Resolution::Call {
                endpoint: self.endpoint(*m, *f),
                rest: &segments[1..],
            },
            Some(hits) if hits.len() > 1 => Resolution::Ambiguous {
                name: first.clone(),
                paths: hits.iter().map(|(m, f)| self.qualified_path(*m, *f)).collect(),
            },
            _ => match module {
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
