//! Support code for the end-to-end tests: starting the gateway and real clients.
