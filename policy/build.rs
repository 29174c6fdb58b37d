//! Rebuild when a migration changes: `sqlx::migrate!` embeds `../migrations/*` at compile
//! time and does not track the directory on stable Rust.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
