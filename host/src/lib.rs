//! plughost serves the functions of compiled plugins as REST endpoints.
//!
//! A request flows top-down: [`server`] accepts it, gives it a request id and hands it to the
//! routes in [`http`]; `/rest/services/…` paths are resolved against the routing table of
//! [`registry`] (built by [`plugins`] from files the [`loader`] loaded and [`manifest`] validated,
//! swapped atomically, read without locks); [`kwargs`] and [`params`] turn the body, query and URL
//! into the call's typed kwargs; [`dispatch`] runs the plugin on the blocking pool under a
//! deadline; errors of every layer become one JSON shape in `http::error`. [`config`] turns `.env`
//! into a validated [`config::Config`] first.

pub mod config;
pub mod dispatch;
pub mod http;
pub mod kwargs;
pub mod loader;
pub mod manifest;
pub mod params;
pub mod plugins;
pub mod registry;
pub mod server;

/// What every request handler shares.
pub struct AppState {
    pub config: config::Config,
    pub plugins: plugins::Plugins,
}
