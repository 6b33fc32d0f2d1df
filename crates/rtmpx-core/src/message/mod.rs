//! RTMP messages on top of the chunk stream.
