mod common;
use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

#[tokio::test]
async fn valid_token_reaches_upstream_with_identity() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::new(Algorithm::RS256);
    std::fs::write(dir.path().join("jwks.json"), jwks(&[&key])).unwrap();
    let up = Upstream::start().await;
    let cfg = base_config("jwks_file = \"jwks.json\"", &up.url(), "\"RS256\"")
        + "\n[[route]]\npath_prefix = \"/\"\nupstream = \"app\"\n";
    let gw = gateway(dir.path(), &cfg).await;
    wait_ready(&gw).await;
    let addr = gw.listen_addrs()[0];
    let t = key.token("alice", json!({"email": "a@example.com"}));
    let r = Client::plain()
        .get(
            &format!("http://{addr}/x"),
            &[("authorization", &format!("Bearer {t}"))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-user-id"], "alice");
    gw.shutdown().await;
}
