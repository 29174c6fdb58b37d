//! `gcks`: the G-IKEv2 Group Controller/Key Server (RFC 9838).
//!
//! `gcks serve` runs the key server on the SQL policy store; `gcks group|member|authorize|
//! signing-key|status` administer that store directly; `gcks demo` registers three members
//! over loopback UDP with a throw-away SQLite store. See docs/operations.md.

mod cli;

use clap::Parser;

use cli::{Cli, Command, admin, store_url};

fn main() {
    let args = Cli::parse();
    let result = run(args);
    match result {
        Ok(out) => {
            if !out.is_empty() {
                gikev2_member::outln!("{out}");
            }
        }
        Err(e) => {
            eprintln!("gcks: error: {e}");
            std::process::exit(1);
        }
    }
}

fn run(args: Cli) -> Result<String, String> {
    if let Command::Demo = args.command {
        return cli::demo::run().map(|()| String::new());
    }
    let url = store_url(&args.db)?;
    if let Command::Serve(a) = args.command {
        return cli::serve::run(url, args.master_key, a).map(|()| String::new());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async {
        let store = admin::open_store(&url, &args.master_key).await?;
        let out = match args.command {
            Command::Group(c) => admin::group(&store, c).await,
            Command::Member(c) => admin::member(&store, c).await,
            Command::Authorize(a) => admin::authorize(&store, a).await,
            Command::SigningKey(c) => admin::signing_key(&store, c).await,
            Command::Status(a) => admin::status(&store, a).await,
            Command::Serve(_) | Command::Demo => Ok(String::new()),
        };
        store.close().await;
        out
    })
}
