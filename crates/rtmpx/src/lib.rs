//! The gateway's library half: configuration, authorisation and the fuzzing entry points, so
//! fuzz targets and tests reach them. The binary (`main.rs`) holds the transports and sessions.

pub mod auth;
pub mod config;
pub mod error;
pub mod fuzzing;
