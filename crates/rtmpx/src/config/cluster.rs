//! `[cluster]`: the Redis stream directory shared by several nodes.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// The directory: `redis://HOST:PORT/DB` (or `rediss://` for TLS).
    pub redis: String,
    /// How other nodes reach this one: `SCHEME://ADDRESS:PORT` (any variant, e.g. rtmps between sites).
    pub node: String,
    /// `heartbeat_ms`: entries of live local streams are refreshed this often.
    #[serde(
        rename = "heartbeat_ms",
        default = "default_heartbeat",
        deserialize_with = "super::duration::millis"
    )]
    pub heartbeat: Duration,
    /// `ttl_ms`: an entry not refreshed for this long vanishes (the node is gone).
    #[serde(rename = "ttl_ms", default = "default_ttl", deserialize_with = "super::duration::millis")]
    pub ttl: Duration,
    /// `linger_secs`: a pull from another node stays up this long after its last local player left.
    #[serde(rename = "linger_secs", default = "default_linger", deserialize_with = "super::duration::secs")]
    pub linger: Duration,
    /// Two hex digits every RTMPT session id of this node starts with, so that a balancer can
    /// send a tunnel's later requests to the node that opened it (README: "Cluster").
    #[serde(default)]
    pub tunnel_tag: Option<String>,
}

fn default_heartbeat() -> Duration {
    Duration::from_millis(2000)
}

fn default_ttl() -> Duration {
    Duration::from_millis(6000)
}

fn default_linger() -> Duration {
    Duration::from_secs(5)
}

impl ClusterSection {
    /// The first byte of this node's RTMPT session ids.
    pub fn tunnel_tag_byte(&self) -> Option<u8> {
        let tag = self.tunnel_tag.as_deref()?;
        let valid = tag.len() == 2 && tag.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        valid.then(|| u8::from_str_radix(tag, 16).ok()).flatten()
    }

    /// check-config: a parsable Redis URL, a node URL without app, and a TTL that outlives
    /// two missed heartbeats.
    pub fn validate(&self) -> Result<(), String> {
        redis::Client::open(self.redis.as_str())
            .map_err(|e| format!("cluster.redis: {:?}: {e}", self.redis))?;
        // Checked with an app appended: pulls play `NODE/APP/STREAM`.
        let node = rtmpx_client::RtmpUrl::parse(&format!("{}/app", self.node))
            .map_err(|e| format!("cluster.node: {:?}: {e}", self.node))?;
        if node.app != "app" || !node.stream.is_empty() || self.node.contains('?') {
            return Err(format!("cluster.node: {:?}: expected SCHEME://ADDRESS:PORT, no app", self.node));
        }
        if self.tunnel_tag.is_some() && self.tunnel_tag_byte().is_none() {
            return Err(format!("cluster.tunnel_tag: {:?}: two lowercase hex digits", self.tunnel_tag));
        }
        if self.heartbeat < Duration::from_millis(100) {
            return Err("cluster.heartbeat_ms: at least 100".into());
        }
        if self.ttl < 2 * self.heartbeat {
            return Err(format!(
                "cluster.ttl_ms: {} must be at least twice heartbeat_ms ({}), or entries of live streams expire",
                self.ttl.as_millis(),
                self.heartbeat.as_millis()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;

    fn check(cluster: &str) -> Result<Config, String> {
        let text = format!(
            "[[listener]]\nproto = \"rtmp\"\naddr = \"127.0.0.1:0\"\n[[app]]\nname = \"live\"\n[cluster]\n{cluster}"
        );
        Config::from_toml(&text, "test").map_err(|e| e.to_string())
    }

    #[test]
    fn a_valid_section_parses_with_defaults() {
        let config =
            check("redis = \"redis://127.0.0.1:6379/0\"\nnode = \"rtmps://10.0.0.1:443\"\n").unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(
            (cluster.heartbeat, cluster.ttl, cluster.linger),
            (Duration::from_millis(2000), Duration::from_millis(6000), Duration::from_secs(5))
        );
        assert_eq!(cluster.tunnel_tag_byte(), None);
    }

    #[test]
    fn bad_values_are_named() {
        let node = "node = \"rtmp://10.0.0.1:1935\"\n";
        let cases = [
            (format!("redis = \"http://x\"\n{node}"), "cluster.redis"),
            ("redis = \"redis://h:1/0\"\nnode = \"rtmp://10.0.0.1:1935/live\"\n".into(), "cluster.node"),
            ("redis = \"redis://h:1/0\"\nnode = \"10.0.0.1:1935\"\n".into(), "cluster.node"),
            (
                format!("redis = \"redis://h:1/0\"\n{node}heartbeat_ms = 1000\nttl_ms = 1500\n"),
                "cluster.ttl_ms",
            ),
            (format!("redis = \"redis://h:1/0\"\n{node}tunnel_tag = \"A1\"\n"), "cluster.tunnel_tag"),
            (format!("redis = \"redis://h:1/0\"\n{node}tunnel_tag = \"a10\"\n"), "cluster.tunnel_tag"),
        ];
        for (section, field) in cases {
            let error = check(&section).expect_err(&section);
            assert!(error.contains(field), "{section}: {error}");
        }
        let tagged = check(&format!("redis = \"redis://h:1/0\"\n{node}tunnel_tag = \"a1\"\n")).unwrap();
        assert_eq!(tagged.cluster.unwrap().tunnel_tag_byte(), Some(0xa1));
    }
}
