//! Exports the allocator table plugins look up (`plughost_allocator_v1`, defined in main.rs) in
//! the executable's dynamic symbol table: executables export nothing by default.

fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=plughost_allocator_v1");
    println!("cargo:rerun-if-changed=build.rs");
}
