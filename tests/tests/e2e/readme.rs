//! The README shows the `hello` plugin in full: keep it identical to the real one.

#[test]
fn readme_shows_the_hello_plugin_as_it_is() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let source = std::fs::read_to_string(root.join("plugins/hello/src/lib.rs")).unwrap();
    let shown = source.split("\n#[cfg(test)]").next().unwrap().trim_end();
    assert!(
        readme.contains(shown),
        "README.md's copy of plugins/hello/src/lib.rs is out of date"
    );
}
