//! The gateway as a library: configuration, authorisation, transports and the session driver.
//! The binary (`main.rs`) is only the command line; fuzz targets and tests use the modules here.

pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod devcert;
pub mod drain;
pub mod error;
pub mod fuzzing;
pub mod load;
pub mod metrics;
pub mod registry;
pub mod relay;
pub mod reload;
pub mod server;
pub mod session;
pub mod tls;
pub mod tunnel;
