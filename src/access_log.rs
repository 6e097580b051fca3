//! One JSON line per request on stdout, written by a background thread so that
//! a slow log consumer never stalls a request. Tokens, cookies and secrets are
//! never part of the line: it is built from named fields only.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;

use crate::auth::verify::Verified;

/// What the line says about the token. A verified token is logged from the
/// verification itself (shared with the cache), not from copies; the other
/// fields describe a token that was refused before it verified.
#[derive(Debug, Default)]
pub struct AuthFields {
    pub result: &'static str,
    pub verified: Option<Arc<Verified>>,
    pub iss: Option<String>,
    pub kid: Option<String>,
    pub alg: Option<String>,
}

impl AuthFields {
    fn fields(&self) -> [(&'static str, Option<&str>); 4] {
        match &self.verified {
            Some(v) => [
                ("iss", v.claim_str("iss")),
                ("sub", v.claim_str("sub")),
                ("kid", v.kid.as_deref()),
                ("alg", Some(alg_name(v.alg))),
            ],
            None => [
                ("iss", self.iss.as_deref()),
                ("sub", None),
                ("kid", self.kid.as_deref()),
                ("alg", self.alg.as_deref()),
            ],
        }
    }
}

fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
        // The enum is non-exhaustive; the verifier accepts none beyond these.
        _ => "other",
    }
}

#[derive(Debug)]
/// Borrowed from the request's context: the line is written straight into
/// the shared buffer, with no copies on the request path.
pub struct AccessLine<'a> {
    pub level: &'static str,
    pub msg: &'static str,
    pub request_id: &'a str,
    pub remote: &'a str,
    pub method: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub auth: &'a AuthFields,
}

/// Lines are appended to buffers that a background thread writes out every
/// `FLUSH_EVERY`: no system call and no thread wake-up per request. Each
/// worker thread appends to a shard of its own, so workers never wait on
/// each other; the writer takes each shard's lock for the time of a swap.
#[derive(Clone)]
pub struct AccessLog {
    shards: Arc<[Mutex<Vec<u8>>; SHARDS]>,
    dropped: Arc<AtomicU64>,
    enabled: bool,
}

const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Past this much unwritten log in one shard (a stalled stdout), lines are dropped and counted.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// More shards than worker threads are expected: threads past this share.
const SHARDS: usize = 16;

thread_local! {
    /// This thread's shard, handed out in turn as threads first log.
    static SHARD: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS
    };
}

impl AccessLog {
    /// A log that writes to stdout.
    pub fn stdout() -> AccessLog {
        let shards: Arc<[Mutex<Vec<u8>>; SHARDS]> =
            Arc::new(std::array::from_fn(|_| Mutex::new(Vec::new())));
        let writer = shards.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut spare = Vec::new();
                loop {
                    std::thread::sleep(FLUSH_EVERY);
                    for shard in writer.iter() {
                        flush_to_stdout(shard, &mut spare);
                    }
                }
            });
        AccessLog {
            shards,
            dropped: Arc::default(),
            enabled: spawned.is_ok(),
        }
    }

    pub fn write(&self, line: &AccessLine) {
        if !self.enabled {
            return;
        }
        let shard = SHARD.with(|s| *s);
        let Ok(mut buf) = self.shards[shard].lock() else {
            return;
        };
        if buf.len() > MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        line.write_json(&mut buf);
        buf.push(b'\n');
    }

    /// Writes out what is pending (at shutdown).
    pub fn flush(&self) {
        for shard in self.shards.iter() {
            flush_to_stdout(shard, &mut Vec::new());
        }
    }
}

/// Swaps a shard's buffer with `spare` (empty, with the capacity it had
/// last time) and writes it out: at a steady rate the buffers stop growing
/// and no line is ever copied by a reallocation.
fn flush_to_stdout(buf: &Mutex<Vec<u8>>, spare: &mut Vec<u8>) {
    match buf.lock() {
        Ok(mut b) if !b.is_empty() => std::mem::swap(&mut *b, spare),
        _ => return,
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(spare);
    let _ = out.flush();
    spare.clear();
}

impl AccessLine<'_> {
    /// The line as one JSON object, stamped now. Written by hand: through
    /// serde this was about 5 % of a proxied request's CPU; the fields are
    /// few and fixed.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"ts\":\"");
        write_rfc3339_now(out);
        out.push(b'"');
        // Values that cannot hold a character JSON escapes are copied as they
        // are: the level and message are literals, a request id is letters,
        // digits, `.`, `_` and `-` (see `pipeline::request_id`), an address
        // prints as digits, dots, colons and brackets, and a method is an
        // HTTP token.
        for (key, value) in [
            (&b",\"level\":"[..], self.level),
            (b",\"msg\":", self.msg),
            (b",\"request_id\":", self.request_id),
            (b",\"remote\":", self.remote),
            (b",\"method\":", self.method),
        ] {
            out.extend_from_slice(key);
            json_plain_str(out, value);
        }
        for (key, value) in [
            (&b",\"host\":"[..], Some(self.host)),
            (b",\"path\":", Some(self.path)),
            (b",\"route\":", self.route),
            (b",\"upstream\":", self.upstream),
        ] {
            out.extend_from_slice(key);
            json_opt_str(out, value);
        }
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.status).as_bytes());
        out.extend_from_slice(b",\"duration_ms\":");
        json_ms(out, self.duration_ms);
        out.extend_from_slice(b",\"upstream_ms\":");
        match self.upstream_ms {
            Some(ms) => json_ms(out, ms),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"auth\":{\"result\":");
        json_plain_str(out, self.auth.result);
        for (name, value) in self.auth.fields() {
            if let Some(v) = value {
                out.extend_from_slice(b",\"");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                json_str(out, v);
            }
        }
        out.extend_from_slice(b"}}");
    }
}

/// Whether any byte must be escaped (a control character, `"`, `\\` or DEL),
/// eight bytes at a time: such a byte leaves its high bit set in the word tests.
fn needs_escape(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        if word_needs_escape(u64::from_le_bytes(a)) {
            return true;
        }
    }
    let tail = words.remainder();
    if tail.is_empty() {
        return false;
    }
    // The last few bytes as one more word, padded with spaces (never escaped).
    let mut a = [b' '; 8];
    a[..tail.len()].copy_from_slice(tail);
    word_needs_escape(u64::from_le_bytes(a))
}

fn word_needs_escape(v: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = v.wrapping_sub(ONES * 0x20) & !v & HIGH;
    (below_space
        | has_zero(v ^ (ONES * u64::from(b'"')))
        | has_zero(v ^ (ONES * u64::from(b'\\')))
        | has_zero(v ^ (ONES * 0x7f)))
        != 0
}

/// A JSON string whose characters need no escaping by construction (checked
/// in debug builds, so by every test that logs).
fn json_plain_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!needs_escape(s.as_bytes()), "{s:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// A JSON string, escaped per RFC 8259 (quote, backslash, control characters).
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // The usual case, nothing to escape, is a check per eight bytes and one copy.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => {
                out.extend_from_slice(&bytes[start..i]);
                let _ = write!(out, "\\u{b:04x}");
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Milliseconds with microsecond precision (a JSON number, never NaN).
fn json_ms(out: &mut Vec<u8>, ms: f64) {
    let us = if ms.is_finite() && ms > 0.0 {
        (ms * 1000.0).round() as u64
    } else {
        0
    };
    out.extend_from_slice(itoa::Buffer::new().format(us / 1000).as_bytes());
    let frac = us % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// RFC 3339 UTC time with milliseconds, without pulling in a calendar crate.
fn write_rfc3339_now(out: &mut Vec<u8>) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    write_rfc3339(out, d);
}

fn write_rfc3339(out: &mut Vec<u8>, d: Duration) {
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, day) = civil_from_days(days);
    // Digit by digit: `write!` with padding was a visible share of the line's cost.
    let digits = |out: &mut Vec<u8>, v: i64, width: u32| {
        for i in (0..width).rev() {
            out.push(b'0' + (v / 10i64.pow(i) % 10) as u8);
        }
    };
    digits(out, y, 4);
    out.push(b'-');
    digits(out, i64::from(m), 2);
    out.push(b'-');
    digits(out, i64::from(day), 2);
    out.push(b'T');
    digits(out, rem / 3600, 2);
    out.push(b':');
    digits(out, (rem % 3600) / 60, 2);
    out.push(b':');
    digits(out, rem % 60, 2);
    out.push(b'.');
    digits(out, i64::from(d.subsec_millis()), 3);
    out.push(b'Z');
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes written escaped: quote, backslash, control characters and DEL.
    static ESCAPED: [bool; 256] = {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 0x20 {
            t[i] = true;
            i += 1;
        }
        t[b'"' as usize] = true;
        t[b'\\' as usize] = true;
        t[0x7f] = true;
        t
    };

    #[test]
    fn the_word_check_finds_exactly_the_bytes_the_table_escapes() {
        for len in [1usize, 7, 8, 9, 16, 23] {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    assert_eq!(
                        needs_escape(&s),
                        ESCAPED[usize::from(b)],
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        // Bytes next to each other must not hide or fake one (borrows across lanes).
        for b in 0..=255u8 {
            for c in 0..=255u8 {
                let s = [b, c, b, c, b, c, b, c];
                assert_eq!(
                    needs_escape(&s),
                    ESCAPED[usize::from(b)] || ESCAPED[usize::from(c)],
                    "{b:#x} {c:#x}"
                );
            }
        }
    }

    #[test]
    fn a_line_is_one_json_object_with_every_field_escaped() {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "al\tice".into());
        let auth = AuthFields {
            result: "allowed",
            verified: Some(Arc::new(Verified {
                issuer: 0,
                claims,
                kid: Some("k\"1".into()),
                alg: Algorithm::ES256,
                key_fingerprint: 0,
                exp: 0,
                iat: None,
                identity: Default::default(),
            })),
            // Fields of a refused token are not used once one verified.
            iss: Some("https://other.example/".into()),
            ..Default::default()
        };
        let line = AccessLine {
            level: "INFO",
            msg: "access",
            request_id: "r-1",
            remote: "[::1]:5",
            method: "GET",
            host: "h\"o\\st",
            path: "/a\u{1}b\n\u{7f}é",
            route: Some("api"),
            upstream: None,
            status: 200,
            duration_ms: 1.23456,
            upstream_ms: Some(0.5),
            auth: &auth,
        };
        let mut out = Vec::new();
        line.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["remote"], "[::1]:5");
        assert!(v["ts"]
            .as_str()
            .is_some_and(|t| t.len() == 24 && t.ends_with('Z')));
        assert_eq!(v["host"], "h\"o\\st");
        assert_eq!(v["path"], "/a\u{1}b\n\u{7f}é");
        assert_eq!(v["route"], "api");
        assert!(v["upstream"].is_null());
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"].as_f64(), Some(1.235));
        assert_eq!(v["upstream_ms"].as_f64(), Some(0.5));
        assert_eq!(
            v["auth"],
            serde_json::json!({"result": "allowed", "sub": "al\tice", "kid": "k\"1", "alg": "ES256"})
        );
        assert_eq!(v.as_object().unwrap().len(), 14);
        assert!(!out.contains(&b'\n'), "one line");

        // Every ASCII character and some beyond survive the round trip.
        let every: String = (0u8..=0x7f).map(char::from).chain("é€😀".chars()).collect();
        let mut out = Vec::new();
        json_str(&mut out, &every);
        let back: String = serde_json::from_slice(&out).expect("valid JSON string");
        assert_eq!(back, every);
    }

    #[test]
    fn timestamps_are_zero_padded_utc_with_milliseconds() {
        let mut out = Vec::new();
        write_rfc3339(&mut out, Duration::from_millis(1_795_959_725_007));
        assert_eq!(out, b"2026-11-29T13:42:05.007Z");
        out.clear();
        write_rfc3339(&mut out, Duration::ZERO);
        assert_eq!(out, b"1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
