//! One contract, two stores: the embedded SQLite store and MongoDB (on nx-27017) must behave alike.

use std::sync::Arc;

use plughost_tenancy::{mongo::MongoStore, sqlite::SqliteStore, AuditEntry, PrincipalRecord, PublishedPlugin, Store, StoreError};
use serde_json::json;

use crate::mongo_server::MongoServer;

fn record(uuid: &str, kind: &str, created_at: i64) -> PrincipalRecord {
    PrincipalRecord {
        uuid: uuid.to_owned(),
        kind: kind.to_owned(),
        name: format!("name of {uuid}"),
        status: "active".to_owned(),
        secret: "00ff".to_owned(),
        generation: 1,
        created_at,
        updated_at: created_at,
        limits: json!({"max_calls": 4}),
    }
}

async fn contract(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);

    store.insert(&record("a", "tenant", 20)).await.unwrap();
    store.insert(&record("b", "tenant", 10)).await.unwrap();
    store.put(&record("admin", "admin", 5)).await.unwrap();
    assert!(matches!(store.insert(&record("a", "tenant", 30)).await, Err(StoreError::Exists(_))));
    assert_eq!(store.get("a").await.unwrap(), Some(record("a", "tenant", 20)));
    let tenants: Vec<String> = store.list("tenant").await.unwrap().into_iter().map(|r| r.uuid).collect();
    assert_eq!(tenants, vec!["b", "a"], "oldest first, tenants only");

    let mut changed = record("a", "tenant", 20);
    changed.status = "disabled".to_owned();
    changed.generation = 2;
    assert!(store.replace(&changed).await.unwrap());
    assert_eq!(store.get("a").await.unwrap().unwrap().status, "disabled");
    assert!(!store.replace(&record("nobody", "tenant", 1)).await.unwrap());
    let mut admin = record("admin", "admin", 5);
    admin.secret = "beef".to_owned();
    store.put(&admin).await.unwrap();
    assert_eq!(store.get("admin").await.unwrap().unwrap().secret, "beef", "put replaces");

    let far = plughost_tenancy::totp::now() as i64 + 600;
    assert!(store.use_code("a", 100, far).await.unwrap());
    assert!(!store.use_code("a", 100, far).await.unwrap(), "a step is used once");
    assert!(store.use_code("a", 101, far).await.unwrap());
    assert!(store.use_code("b", 100, far).await.unwrap(), "per principal");

    assert!(store.remove("a").await.unwrap());
    assert!(!store.remove("a").await.unwrap());
    assert_eq!(store.get("a").await.unwrap(), None);

    for i in 0..3 {
        let entry = AuditEntry {
            at: 1000 + i,
            actor: "admin".into(),
            action: format!("act{i}"),
            target: "b".into(),
            detail: String::new(),
        };
        store.audit(&entry).await.unwrap();
    }
    let log = store.audit_log(2).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        vec!["act2", "act1"],
        "newest first"
    );

    published_plugins(store.as_ref()).await;
}

fn plugin(key: &str, sha256: &str, signature: Option<&str>) -> PublishedPlugin {
    PublishedPlugin {
        key: key.to_owned(),
        name: key.rsplit('/').next().unwrap().to_owned(),
        tenant: None,
        module: "m".to_owned(),
        version: "1".to_owned(),
        sha256: sha256.to_owned(),
        size: 3,
        uploader: "admin".to_owned(),
        published_at: 7,
        signature: signature.map(str::to_owned),
    }
}

/// Published plugins: records with their bytes, replaced by key, bytes dropped with their last
/// record, and a version that moves with every change.
async fn published_plugins(store: &dyn Store) {
    use sha2::Digest;
    let sha = |bytes: &[u8]| hex::encode(sha2::Sha256::digest(bytes));
    assert_eq!(store.published_version().await.unwrap(), 0);
    assert!(store.published().await.unwrap().is_empty());
    // More than one 4 MiB piece on MongoDB.
    let big: Vec<u8> = (0..9 << 20).map(|i| (i % 251) as u8).collect();
    let (aa, bb, cc) = (sha(&big), sha(b"bbb"), sha(b"ccc"));
    let (aa, bb, cc) = (aa.as_str(), bb.as_str(), cc.as_str());
    store.publish(&plugin("admin/a", aa, Some("c2ln")), &big).await.unwrap();
    store.publish(&plugin("admin/b", bb, None), b"bbb").await.unwrap();
    let v2 = store.published_version().await.unwrap();
    assert!(v2 > 0);
    assert_eq!(
        store.published().await.unwrap(),
        vec![plugin("admin/a", aa, Some("c2ln")), plugin("admin/b", bb, None)]
    );
    assert_eq!(store.plugin_bytes(aa).await.unwrap().as_deref(), Some(big.as_slice()));

    // A new version under the same key replaces the record; the old bytes go.
    store.publish(&plugin("admin/a", cc, None), b"ccc").await.unwrap();
    let v3 = store.published_version().await.unwrap();
    assert!(v3 > v2);
    assert_eq!(store.plugin_bytes(aa).await.unwrap(), None);
    assert_eq!(store.published().await.unwrap()[0], plugin("admin/a", cc, None));

    assert!(store.unpublish("admin/a").await.unwrap());
    assert!(store.published_version().await.unwrap() > v3);
    assert!(!store.unpublish("admin/a").await.unwrap());
    assert_eq!(store.plugin_bytes(cc).await.unwrap(), None);
    assert_eq!(store.published().await.unwrap(), vec![plugin("admin/b", bb, None)]);
}

#[tokio::test(flavor = "current_thread")]
async fn the_sqlite_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("store.sqlite3")).unwrap());
    contract(store).await;
    // Durable: a second connection (another process, a restart) sees the same data.
    let again = SqliteStore::open(&dir.path().join("store.sqlite3")).unwrap();
    assert_eq!(again.get("b").await.unwrap().unwrap().name, "name of b");
    assert!(
        !again.use_code("a", 101, plughost_tenancy::totp::now() as i64 + 600).await.unwrap(),
        "used codes are shared"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn the_mongodb_store_keeps_the_contract() {
    let server = MongoServer::start();
    let store = Arc::new(MongoStore::connect(&server.uri(), "contract").await.unwrap());
    contract(store).await;
    let again = MongoStore::connect(&server.uri(), "contract").await.unwrap();
    assert_eq!(again.get("b").await.unwrap().unwrap().name, "name of b");
    assert!(
        !again.use_code("a", 101, plughost_tenancy::totp::now() as i64 + 600).await.unwrap(),
        "used codes are shared"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn an_unreachable_mongodb_is_reported_as_unavailable() {
    let mut server = MongoServer::start();
    let store = MongoStore::connect(&server.uri(), "down").await.unwrap();
    store.ping().await.unwrap();
    server.stop();
    assert!(matches!(store.ping().await, Err(StoreError::Unavailable(_))));
    assert!(matches!(store.get("x").await, Err(StoreError::Unavailable(_))));
    server.resume();
    let mut ok = false;
    for _ in 0..50 {
        if store.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(ok, "the driver reconnects by itself");
}
