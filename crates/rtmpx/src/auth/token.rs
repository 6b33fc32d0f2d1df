//! Signed, expiring stream tokens.
//!
//! A client appends `?expires=UNIX&token=HEX` to the stream name, where
//! `HEX = lowercase hex of HMAC-SHA256(key = secret, message = "APP/STREAM/EXPIRES")`:
//! APP is the application name as configured, STREAM the stream name without its query, and
//! EXPIRES the same decimal number as in the query (seconds since the Unix epoch, no sign, no
//! leading zeros). Example: secret `s3cret`, app `live`, stream `cam1`, expires `1700000000`
//! signs the 24 bytes `live/cam1/1700000000`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::query::param;

type HmacSha256 = Hmac<Sha256>;

/// The message a token signs.
pub fn message(app: &str, stream: &str, expires: u64) -> String {
    format!("{app}/{stream}/{expires}")
}

/// The token for `app/stream` valid until `expires` (lowercase hex).
#[cfg(test)]
pub fn sign(secret: &[u8], app: &str, stream: &str, expires: u64) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(message(app, stream, expires).as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// Checks `expires` and `token` among the decoded query parameters at time `now` (Unix seconds).
/// `max_ttl` refuses tokens that expire further ahead than that many seconds.
pub fn verify(
    secret: &[u8],
    app: &str,
    stream: &str,
    params: &[(String, String)],
    now: u64,
    max_ttl: Option<u64>,
) -> Result<(), &'static str> {
    let expires = param(params, "expires").ok_or("token missing (no expires parameter)")?;
    let token = param(params, "token").ok_or("token missing (no token parameter)")?;
    if expires.is_empty() || expires.len() > 20 || !expires.bytes().all(|b| b.is_ascii_digit()) {
        return Err("token expiry is not a number");
    }
    let expires: u64 = expires.parse().map_err(|_| "token expiry is not a number")?;
    let given = unhex(token).ok_or("token is not 64 hex digits")?;
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(message(app, stream, expires).as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&given).map_err(|_| "token signature does not match")?;
    if expires < now {
        return Err("token expired");
    }
    if max_ttl.is_some_and(|ttl| expires - now > ttl) {
        return Err("token expires too far in the future");
    }
    Ok(())
}

#[cfg(test)]
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Compares two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::super::query::parse_query;
    use super::*;

    #[test]
    fn known_answer() {
        // python3 -c "import hmac,hashlib;print(hmac.new(b's3cret',b'live/cam1/1700000000',hashlib.sha256).hexdigest())"
        assert_eq!(
            sign(b"s3cret", "live", "cam1", 1_700_000_000),
            "50923175584741ab970734451581087447e891e99d7f4a6207f1ecec6c4dbb00"
        );
    }

    #[test]
    fn verify_cases() {
        let t = sign(b"k", "live", "s", 2000);
        let q = |s: &str| parse_query(s);
        let ok = format!("expires=2000&token={t}");
        assert_eq!(verify(b"k", "live", "s", &q(&ok), 1000, None), Ok(()));
        assert_eq!(
            verify(
                b"k",
                "live",
                "s",
                &q(&ok.to_uppercase().replace("EXPIRES", "expires").replace("TOKEN", "token")),
                1000,
                None
            ),
            Ok(())
        );
        assert_eq!(verify(b"k", "live", "s", &q(&ok), 2000, None), Ok(()), "valid through its second");
        assert_eq!(verify(b"k", "live", "s", &q(&ok), 2001, None), Err("token expired"));
        assert_eq!(verify(b"x", "live", "s", &q(&ok), 1000, None), Err("token signature does not match"));
        assert_eq!(verify(b"k", "live", "t", &q(&ok), 1000, None), Err("token signature does not match"));
        assert_eq!(verify(b"k", "other", "s", &q(&ok), 1000, None), Err("token signature does not match"));
        let later = format!("expires=2001&token={t}");
        assert_eq!(verify(b"k", "live", "s", &q(&later), 1000, None), Err("token signature does not match"));
        assert_eq!(
            verify(b"k", "live", "s", &q(&ok), 1000, Some(500)),
            Err("token expires too far in the future")
        );
        assert_eq!(verify(b"k", "live", "s", &q(&ok), 1000, Some(1000)), Ok(()));
        assert!(verify(b"k", "live", "s", &q("token=00"), 0, None).is_err());
        assert!(verify(b"k", "live", "s", &q(&format!("expires=-1&token={t}")), 0, None).is_err());
        assert!(verify(
            b"k",
            "live",
            "s",
            &q(&format!("expires=99999999999999999999999&token={t}")),
            0,
            None
        )
        .is_err());
        assert!(verify(b"k", "live", "s", &q("expires=2000&token=zz"), 0, None).is_err());
        assert!(verify(b"k", "live", "s", &q(&format!("expires=2000&token={}", &t[..62])), 0, None).is_err());
    }

    #[test]
    fn constant_time() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
