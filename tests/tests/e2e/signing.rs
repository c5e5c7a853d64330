//! Signed plugins: with PLUGIN_PUBKEYS set, only files with a valid detached signature by one of
//! the keys are loaded from the folder or accepted for publishing; `plughost keygen
//! --signing-key` and `plughost sign` make the key and the signature.

use std::{path::Path, process::Command, time::Duration};

use crate::support::{plughost_bin, plugin_file, status_of, wait_for, App, Reply, Setup};

/// A fresh signing key in `dir`; returns its file and its public key.
fn signing_key(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new(plughost_bin())
        .args(["keygen", "--signing-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    let public = line.trim().strip_prefix("PLUGIN_PUBKEYS=").unwrap_or_else(|| panic!("{line}"));
    (key, public.to_owned())
}

/// Signs `file` with `key` through the CLI (writes `file.sig`); returns the signature's text.
fn sign(file: &Path, key: &Path) -> String {
    let out = Command::new(plughost_bin())
        .arg("sign")
        .arg(file)
        .arg("--key")
        .arg(key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(format!("{}.sig", file.display())).unwrap()
}

fn put(app: &App, path: &str, token: &str, bytes: Vec<u8>, signature: Option<&str>) -> Reply {
    let mut request = App::client().put(app.url(path)).bearer_auth(token).body(bytes);
    if let Some(signature) = signature {
        request = request.header("plugin-signature", signature.trim());
    }
    Reply::from(request.send().unwrap())
}

fn serves(app: &App, path: &str) -> bool {
    wait_for(Duration::from_secs(15), || app.get(path).status == 200).is_some()
}

#[test]
fn only_signed_plugins_load_or_publish_when_keys_are_set() {
    let keys = tempfile::tempdir().unwrap();
    let (key, public) = signing_key(keys.path(), "release.pem");
    let (other_key, other_public) = signing_key(keys.path(), "other.pem");
    // A second key is listed too: a signature by any listed key is accepted.
    let trusted = format!("{other_public},{public}");

    let staged = keys.path().join("libhello.so");
    std::fs::copy(plugin_file("hello"), &staged).unwrap();
    let hello_sig = sign(&staged, &key);
    let app = Setup::default()
        .file("libhello.so", &std::fs::read(&staged).unwrap())
        .file("libhello.so.sig", hello_sig.as_bytes())
        .plugins(&["module1"])
        .env("PLUGIN_PUBKEYS", &trusted)
        .env("PUBLISH_SYNC_MS", "200")
        .env("RESCAN_INTERVAL_MS", "300")
        .start();
    let dir = app.plugins_dir();

    // Signed: served. Unsigned: refused, with what to do.
    assert_eq!(app.get("/rest/services/hello/greet/").status, 200, "{}", app.logs());
    assert_eq!(app.get("/rest/services/module1/hello-world/").status, 404);
    let unsigned = status_of(&app, "libmodule1.so");
    assert_eq!(unsigned["state"], "failed");
    let error = unsigned["error"].as_str().unwrap();
    assert!(error.contains("unsigned") && error.contains("libmodule1.so.sig"), "{error}");

    // Its signature arriving afterwards is enough: the watcher looks at the plugin again.
    sign(&dir.join("libmodule1.so"), &other_key);
    assert!(serves(&app, "/rest/services/module1/hello-world/"), "{}", app.logs());

    // A signature that belongs to other bytes, or by a key not listed, is refused.
    std::fs::copy(plugin_file("module2"), dir.join("libmodule2.so.tmp")).unwrap();
    std::fs::write(dir.join("libmodule2.so.sig"), &hello_sig).unwrap();
    std::fs::rename(dir.join("libmodule2.so.tmp"), dir.join("libmodule2.so")).unwrap();
    let (stranger, _) = signing_key(keys.path(), "stranger.pem");
    std::fs::copy(plugin_file("product_v1"), keys.path().join("libproduct.so")).unwrap();
    let stranger_sig = sign(&keys.path().join("libproduct.so"), &stranger);
    std::fs::write(dir.join("libproduct.so.sig"), &stranger_sig).unwrap();
    std::fs::copy(plugin_file("product_v1"), dir.join("libproduct.so")).unwrap();
    for file in ["libmodule2.so", "libproduct.so"] {
        let refused = wait_for(Duration::from_secs(15), || {
            status_of(&app, file)["error"]
                .as_str()
                .is_some_and(|e| e.contains("does not match"))
        });
        assert!(refused.is_some(), "{file}: {}", status_of(&app, file));
    }
    assert_eq!(app.get("/rest/services/module2/hello-world2/").status, 404);

    // A new version without a new signature: the signed version keeps serving.
    std::fs::copy(plugin_file("module2"), dir.join("libhello.so.tmp")).unwrap();
    std::fs::rename(dir.join("libhello.so.tmp"), dir.join("libhello.so")).unwrap();
    let kept = wait_for(Duration::from_secs(15), || {
        status_of(&app, "libhello.so")["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match"))
    });
    assert!(kept.is_some(), "{}", status_of(&app, "libhello.so"));
    assert_eq!(status_of(&app, "libhello.so")["state"], "loaded");
    assert_eq!(app.get("/rest/services/hello/greet/").status, 200);

    // Publishing: unsigned and badly signed uploads are refused and nothing is stored.
    let admin = app.admin_token();
    let module2 = std::fs::read(plugin_file("module2")).unwrap();
    let refused = put(&app, "/rest/admin/plugins/m2", &admin, module2.clone(), None).error(422, "PLUGIN_REFUSED");
    assert!(
        refused["error_description"].as_str().unwrap().contains("Plugin-Signature"),
        "{refused}"
    );
    put(&app, "/rest/admin/plugins/m2", &admin, module2.clone(), Some(&hello_sig)).error(422, "PLUGIN_REFUSED");
    put(&app, "/rest/admin/plugins/m2", &admin, module2.clone(), Some("not base64!")).error(422, "PLUGIN_REFUSED");
    let listed = app.admin("GET", "/rest/admin/published", None).json();
    assert!(listed["plugins"].as_array().unwrap().is_empty(), "{listed}");

    // Signed: stored with its signature, synced beside the file, served.
    std::fs::remove_file(dir.join("libmodule2.so")).unwrap();
    std::fs::remove_file(dir.join("libmodule2.so.sig")).unwrap();
    let staged = keys.path().join("libmodule2.so");
    std::fs::write(&staged, &module2).unwrap();
    let module2_sig = sign(&staged, &key);
    let reply = put(&app, "/rest/admin/plugins/m2", &admin, module2, Some(&module2_sig));
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["signed"], true);
    assert!(serves(&app, "/rest/services/module2/hello-world2/"), "{}", app.logs());
    assert_eq!(std::fs::read_to_string(dir.join("m2.so.sig")).unwrap().trim(), module2_sig.trim());

    // The CLI sends FILE.sig along, and refuses a file without one.
    let product = keys.path().join("libproduct_v2.so");
    std::fs::copy(plugin_file("product_v2"), &product).unwrap();
    let out = app.cli(&["publish", product.to_str().unwrap(), "--name", "product"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsigned"), "{out:?}");
    std::fs::remove_file(dir.join("libproduct.so")).unwrap();
    sign(&product, &key);
    let out = app.cli(&["publish", product.to_str().unwrap(), "--name", "product"]);
    assert!(out.status.success(), "{out:?}");
    let listed = app.admin("GET", "/rest/admin/published", None).json();
    assert_eq!(listed["plugins"].as_array().unwrap().len(), 2, "{listed}");

    // Unpublished: the file and its signature go.
    assert_eq!(app.admin("DELETE", "/rest/admin/plugins/m2", None).status, 200);
    let gone = wait_for(Duration::from_secs(15), || {
        !dir.join("m2.so").exists() && !dir.join("m2.so.sig").exists()
    });
    assert!(gone.is_some());
}

#[test]
fn bad_public_keys_stop_start_up_with_the_reason() {
    let (status, stderr) = Setup::default().env("PLUGIN_PUBKEYS", "AAAA,not-a-key").start_and_fail();
    assert!(!status.success());
    assert!(stderr.contains("PLUGIN_PUBKEYS") && stderr.contains("key 1"), "{stderr}");

    let keys = tempfile::tempdir().unwrap();
    let (key, public) = signing_key(keys.path(), "k.pem");
    let file = keys.path().join("libhello.so");
    std::fs::copy(plugin_file("hello"), &file).unwrap();
    // `plughost check` verifies the signature when keys are given.
    let check = |pubkeys: &str| {
        Command::new(plughost_bin())
            .args(["check", file.to_str().unwrap(), "--pubkeys", pubkeys])
            .output()
            .unwrap()
    };
    let out = check(&public);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unsigned"), "{out:?}");
    sign(&file, &key);
    let out = check(&public);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("signature: valid"), "{out:?}");
    // An existing key file is never overwritten.
    let again = Command::new(plughost_bin())
        .args(["keygen", "--signing-key"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(!again.status.success());
}
