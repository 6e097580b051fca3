//! One JSON line per request on stdout, written by a background thread so that
//! a slow log consumer never stalls a request. Tokens, cookies and secrets are
//! never part of the line: it is built from named fields only.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct AuthFields {
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct AccessLine {
    pub ts: String,
    pub level: &'static str,
    pub msg: &'static str,
    pub request_id: String,
    pub remote: String,
    pub method: String,
    pub host: String,
    pub path: String,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub status: u16,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub auth: AuthFields,
}

/// Lines are appended to a shared buffer that a background thread writes out
/// every `FLUSH_EVERY`: no system call and no thread wake-up per request.
#[derive(Clone)]
pub struct AccessLog {
    buf: Arc<Mutex<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
    enabled: bool,
}

const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Past this much unwritten log (a stalled stdout), lines are dropped and counted.
const MAX_PENDING: usize = 8 * 1024 * 1024;

impl AccessLog {
    /// A log that writes to stdout.
    pub fn stdout() -> AccessLog {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
        let writer = buf.clone();
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                flush_to_stdout(&writer);
            });
        AccessLog {
            buf,
            dropped: Arc::default(),
            enabled: spawned.is_ok(),
        }
    }

    pub fn write(&self, line: &AccessLine) {
        if !self.enabled {
            return;
        }
        let Ok(mut buf) = self.buf.lock() else { return };
        if buf.len() > MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if serde_json::to_writer(&mut *buf, line).is_ok() {
            buf.push(b'\n');
        }
    }

    /// Writes out what is pending (at shutdown).
    pub fn flush(&self) {
        flush_to_stdout(&self.buf);
    }
}

fn flush_to_stdout(buf: &Mutex<Vec<u8>>) {
    let pending = match buf.lock() {
        Ok(mut b) if !b.is_empty() => std::mem::replace(&mut *b, Vec::with_capacity(64 * 1024)),
        _ => return,
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&pending);
    let _ = out.flush();
}

/// RFC 3339 UTC time with milliseconds, without pulling in a calendar crate.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
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

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
