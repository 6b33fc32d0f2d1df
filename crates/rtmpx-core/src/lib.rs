//! Sans-IO RTMP.
//!
//! Bytes go in, events and bytes come out: no sockets, no async runtime, no clock of its own
//! (time is passed in). Every transport (TCP, TLS, HTTP tunnel) and the router drive the same
//! state machines, and tests and fuzzers drive them through memory.
//!
//! Map of the crate:
//! - [`amf`]: AMF0 and AMF3 values, encoder and bounded decoder.
//! - [`handshake`]: C0/C1/C2 ↔ S0/S1/S2, simple and digest, RTMPE (Diffie-Hellman + RC4 keys).
//! - [`chunk`]: the chunk stream codec (decoder and encoder).
//! - [`message`]: RTMP messages on top of chunks: protocol control, user control, commands, media.
//! - [`flv`]: FLV tags from RTMP messages, for HTTP-FLV and WebSocket-FLV delivery.
//! - [`media`]: keyframe and sequence-header detection (FLV legacy and Enhanced RTMP).
//! - [`session`]: server and client session state machines that tie it all together.

#![forbid(unsafe_code)]

pub mod amf;
pub mod chunk;
pub mod error;
pub mod flv;
/// Entry points of the fuzz targets: built by cargo-fuzz (which sets `--cfg fuzzing`), with the
/// `fuzzing` feature (the gateway's replay of seeds and regressions), and for the unit tests.
#[cfg(any(test, fuzzing, feature = "fuzzing"))]
pub mod fuzzing;
pub mod handshake;
pub mod media;
pub mod message;
pub mod session;

pub use error::{Error, Result};
