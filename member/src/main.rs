fn main() {
    println!("gm: not yet implemented");
}
