//! Server and client session state machines.
