//! The gateway as a library: configuration, authorisation, transports and the session driver.
//! The binary (`main.rs`) is only the command line and reaches `config`, `devcert` and `server`;
//! fuzz targets reach the parsers through one door, [`fuzzing`]. Everything else is crate-private.

pub(crate) mod acme;
pub(crate) mod admin;
pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod budget;
pub(crate) mod certinfo;
pub(crate) mod cluster;
pub mod config;
pub(crate) mod descriptors;
pub mod devcert;
pub(crate) mod drain;
pub(crate) mod error;
pub(crate) mod fan_out;
pub(crate) mod flv;
pub mod fuzzing;
pub(crate) mod load;
pub(crate) mod logsafe;
pub(crate) mod metrics;
pub(crate) mod registry;
pub(crate) mod relay;
pub(crate) mod reload;
pub(crate) mod rtmpe_budget;
pub mod server;
pub(crate) mod session;
pub(crate) mod shutdown;
pub(crate) mod sync;
pub(crate) mod task;
pub(crate) mod tls;
pub(crate) mod tunnel;
