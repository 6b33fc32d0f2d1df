//! The gateway as a library: configuration, authorisation, transports and the session driver.
//! The binary (`main.rs`) is only the command line; fuzz targets and tests use the modules here.

pub mod acme;
pub mod admin;
pub mod admission;
pub mod auth;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod descriptors;
pub mod devcert;
pub mod drain;
pub mod error;
pub mod fan_out;
pub mod flv;
pub mod fuzzing;
pub mod load;
pub mod logsafe;
pub mod metrics;
pub mod registry;
pub mod relay;
pub mod reload;
pub mod rtmpe_budget;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sync;
pub mod tls;
pub mod tunnel;
