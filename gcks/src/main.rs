//! `gcks`: the G-IKEv2 Group Controller/Key Server.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => {
            println!(
                "gcks demo: the protocol core is being built; registration over loopback lands with issue #3"
            );
        }
        _ => {
            eprintln!("usage: gcks demo");
            std::process::exit(2);
        }
    }
}
