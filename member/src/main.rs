//! `gm`: the G-IKEv2 member agent. The daemon and its control socket arrive with issue #3.

fn main() {
    eprintln!("gm: the member daemon arrives with issue #3; `gcks demo` shows members registering");
    std::process::exit(2);
}
