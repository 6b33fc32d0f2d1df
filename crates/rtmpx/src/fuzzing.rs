//! Entry points of the gateway's fuzz targets (`fuzz/fuzz_targets/config.rs`,
//! `stream_query.rs`), also run by a smoke test here. They must never panic.

use std::net::{IpAddr, Ipv4Addr};

use crate::auth::{cidr, normalize_app, query, token};
use crate::config::Config;

/// Arbitrary bytes as a configuration file: parsed and validated, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::from_toml(text, "fuzz") {
        // Whatever validates must be usable: every app resolves, timeouts convert.
        for app in &config.apps {
            assert!(config.app(&app.name).is_some());
            let _ = app.callback_timeout();
        }
        let _ = (config.timeouts.handshake(), config.timeouts.idle(), config.tls.handshake_timeout());
    }
}

/// What clients put in names: stream names with queries, tokens, app names and CIDR text.
pub fn stream_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (name, q) = query::split_name(&text);
    let params = query::parse_query(q);
    let _ = query::param(&params, "key");
    let now = u64::from(data.first().copied().unwrap_or(0)) << 24;
    let _ = token::verify(b"0123456789abcdef", "live", name, &params, now, Some(3600));
    let _ = normalize_app(&text);
    if let Ok(net) = text.parse::<cidr::IpNet>() {
        let _ = net.contains(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(net.to_string().parse::<cidr::IpNet>().ok(), Some(net), "CIDR text round-trips");
    }
    // Encoding then decoding gives back every pair.
    let mut form = query::Form::default();
    form.add(name, q);
    let back = query::parse_query(form.as_str());
    assert_eq!(back, vec![(name.to_owned(), q.to_owned())]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoke() {
        for text in [
            "",
            "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n",
            include_str!("../../../config/rtmpx.toml"),
            "[[app]]\nname = 1",
            "a?expires=1&token=00",
            "10.0.0.0/8",
            "::ffff:1.2.3.4/128",
            "x?key=%zz&&=&a=b+c",
        ] {
            config(text.as_bytes());
            stream_query(text.as_bytes());
        }
        config(&[0xff, 0xfe]);
        stream_query(&[0xff, b'?', 0xfe]);
    }
}
