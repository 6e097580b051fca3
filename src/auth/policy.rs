//! Route requirements on a verified token: issuers, scopes and claims.

use serde_json::Value;

use super::verify::Verified;
use crate::denial::Denial;
use crate::route::Route;

/// Looks a claim up by name, or by a dotted path into nested objects when no
/// claim has that exact name (names such as `https://example.com/roles` contain dots).
pub fn claim<'a>(claims: &'a serde_json::Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut cur = claims.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// The token's scopes: `scope` (space separated) and `scp` (array or string).
fn scopes(v: &Verified) -> impl Iterator<Item = &str> {
    let scope = v
        .claims
        .get("scope")
        .and_then(Value::as_str)
        .into_iter()
        .flat_map(|s| s.split(' '));
    let scp: Box<dyn Iterator<Item = &str>> = match v.claims.get("scp") {
        Some(Value::Array(a)) => Box::new(a.iter().filter_map(Value::as_str)),
        Some(Value::String(s)) => Box::new(s.split(' ')),
        _ => Box::new(std::iter::empty()),
    };
    scope.chain(scp).filter(|s| !s.is_empty())
}

fn claim_matches(value: &Value, name: &str, wanted: &[String]) -> bool {
    let one = |v: &Value| match v {
        Value::String(s) if name == "scope" => s.split(' ').any(|x| wanted.iter().any(|w| w == x)),
        Value::String(s) => wanted.iter().any(|w| w == s),
        Value::Number(n) => wanted.iter().any(|w| *w == n.to_string()),
        Value::Bool(b) => wanted.iter().any(|w| *w == b.to_string()),
        _ => false,
    };
    match value {
        Value::Array(items) => items.iter().any(one),
        v => one(v),
    }
}

/// Checks what the route demands of a valid token.
pub fn check(route: &Route, v: &Verified, issuer_id: &str) -> Result<(), Denial> {
    if let Some(allowed) = &route.issuers {
        if !allowed.iter().any(|i| i == issuer_id) {
            return Err(Denial::InsufficientScope(String::new()));
        }
    }
    // Most routes ask for no scope: then the token's are not read at all.
    if !route.scopes.is_empty() {
        let missing: Vec<&str> = route
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| !scopes(v).any(|have| have == *s))
            .collect();
        if !missing.is_empty() {
            return Err(Denial::InsufficientScope(missing.join(" ")));
        }
    }
    for (name, wanted) in &route.claims {
        let ok = claim(&v.claims, name).is_some_and(|val| claim_matches(val, name, wanted));
        if !ok {
            return Err(Denial::InsufficientScope(String::new()));
        }
    }
    Ok(())
}
