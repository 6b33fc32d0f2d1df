//! Routing: streams keyed by app/stream, one publisher, many players.
