//! Stream names with query strings (`name?expires=…&token=…`) and the form encoding of the
//! HTTP callbacks.

/// Most query parameters looked at; the rest are ignored (names come from the client).
const MAX_PARAMS: usize = 64;

/// `name?query` → (`name`, `query`); the query is empty when there is none.
pub fn split_name(name_with_query: &str) -> (&str, &str) {
    match name_with_query.split_once('?') {
        Some((name, query)) => (name, query),
        None => (name_with_query, ""),
    }
}

/// Decoded `key=value` pairs of a query string (`+` is a space, `%XX` a byte; bad escapes stay
/// as they are). At most [`MAX_PARAMS`] pairs.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_PARAMS)
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of `key` in decoded pairs.
pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() && hex(bytes[i + 1]).is_some() && hex(bytes[i + 2]).is_some() => {
                out.push(hex(bytes[i + 1]).unwrap_or(0) << 4 | hex(bytes[i + 2]).unwrap_or(0));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` body builder.
#[derive(Debug, Default, Clone)]
pub struct Form {
    body: String,
}

impl Form {
    pub fn add(&mut self, key: &str, value: &str) -> &mut Self {
        if !self.body.is_empty() {
            self.body.push('&');
        }
        encode_into(&mut self.body, key);
        self.body.push('=');
        encode_into(&mut self.body, value);
        self
    }

    pub fn as_str(&self) -> &str {
        &self.body
    }

    pub fn into_string(self) -> String {
        self.body
    }
}

fn encode_into(out: &mut String, text: &str) {
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split() {
        assert_eq!(split_name("cam?key=a&b=c"), ("cam", "key=a&b=c"));
        assert_eq!(split_name("cam"), ("cam", ""));
        assert_eq!(split_name("cam?"), ("cam", ""));
        assert_eq!(split_name("?x=1"), ("", "x=1"));
        assert_eq!(split_name("a?b?c"), ("a", "b?c"));
    }

    #[test]
    fn query_decoding() {
        let p = parse_query("key=a%20b&token=AB+cd&flag&=v&bad=%zz&tail=%4");
        assert_eq!(param(&p, "key"), Some("a b"));
        assert_eq!(param(&p, "token"), Some("AB cd"));
        assert_eq!(param(&p, "flag"), Some(""));
        assert_eq!(param(&p, ""), Some("v"));
        assert_eq!(param(&p, "bad"), Some("%zz"));
        assert_eq!(param(&p, "tail"), Some("%4"));
        assert_eq!(param(&p, "missing"), None);
        assert_eq!(parse_query(&"a=1&".repeat(1000)).len(), MAX_PARAMS);
        // Invalid UTF-8 after decoding is replaced, not an error.
        assert_eq!(param(&parse_query("x=%ff"), "x"), Some("\u{fffd}"));
    }

    #[test]
    fn form_encoding() {
        let mut f = Form::default();
        f.add("app", "live").add("name", "a b&c=d/é").add("tcurl", "rtmp://h:1935/live");
        assert_eq!(f.as_str(), "app=live&name=a+b%26c%3Dd%2F%C3%A9&tcurl=rtmp%3A%2F%2Fh%3A1935%2Flive");
        let back = parse_query(f.as_str());
        assert_eq!(param(&back, "name"), Some("a b&c=d/é"));
        assert_eq!(param(&back, "tcurl"), Some("rtmp://h:1935/live"));
    }
}
