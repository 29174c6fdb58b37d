//! The `gcks` binary's command line: default files, error messages that name the argument,
//! and the demo.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const GCKS: &str = env!("CARGO_BIN_EXE_gcks");

fn gcks(dir: &Path, args: &[&str]) -> Output {
    Command::new(GCKS)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn serve_without_db_creates_gcks_db_and_a_private_master_key_in_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gcks.psk"), b"psk\n").unwrap();
    let mut child = Command::new(GCKS)
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--psk-file", "gcks.psk"])
        .args(["--id", "gcks.test"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("a ready line");
    assert!(line.starts_with("gcks: serving on 127.0.0.1:"), "{line}");
    assert!(line.contains("as gcks.test (PSK)"), "{line}");
    assert!(dir.path().join("gcks.db").is_file());
    let key = std::fs::metadata(dir.path().join("gcks.key")).unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}

/// A second server on an address and port already in use stops at once instead of taking
/// the first one's datagrams (the sockets set SO_REUSEADDR).
#[test]
fn serve_refuses_an_address_and_port_another_socket_holds() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gcks.psk"), b"psk\n").unwrap();
    // The first server's socket, with SO_REUSEADDR as `gcks serve` sets it.
    let first = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    first.set_reuse_address(true).unwrap();
    first
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let addr = first.local_addr().unwrap().as_socket().unwrap().to_string();
    let o = gcks(
        dir.path(),
        &["serve", "--listen", &addr, "--psk-file", "gcks.psk"],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "gcks: error: --listen: cannot bind {addr}: another socket"
        )),
        "{e}"
    );
    assert!(e.contains("another `gcks serve`"), "{e}");
}

/// The GCKS's own credential is checked at start: a certificate for another key (every
/// member would refuse our AUTH), and a key file in a format other than PKCS#8 with the
/// command that converts it.
#[test]
fn serve_checks_its_key_and_certificate_files() {
    use gikev2_tests::pki::{KeyType, Pki};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::new(KeyType::EcdsaP256, "test CA").unwrap();
    let (ours, other) = (
        pki.issue("gcks.test").unwrap(),
        pki.issue("other.test").unwrap(),
    );
    std::fs::write(d.join("gcks.key.der"), &ours.key_pkcs8_der).unwrap();
    std::fs::write(d.join("gcks.crt.der"), &ours.cert_der).unwrap();
    std::fs::write(d.join("other.crt.der"), &other.cert_der).unwrap();
    let serve = |key: &str, cert: &str| {
        let o = gcks(
            d,
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--id",
                "gcks.test",
                "--key",
                key,
                "--cert",
                cert,
            ],
        );
        assert!(!o.status.success(), "{key} {cert} should fail");
        stderr(&o)
    };
    let e = serve("gcks.key.der", "other.crt.der");
    assert!(
        e.starts_with(
            "gcks: error: --cert other.crt.der: the first certificate is not for the key in \
             --key gcks.key.der"
        ),
        "{e}"
    );
    // A SEC1 EC key, as `pki --gen --type ecdsa` writes it (the content does not matter:
    // it is never quoted).
    std::fs::write(
        d.join("sec1.pem"),
        "-----BEGIN EC PRIVATE KEY-----\nAQID\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap();
    let e = serve("sec1.pem", "gcks.crt.der");
    assert!(
        e.starts_with("gcks: error: --key sec1.pem: not a PKCS#8 ")
            && e.contains("SEC1 \"EC PRIVATE KEY\"; convert it with `openssl pkcs8 -topk8"),
        "{e}"
    );
    // The matching pair starts (and is stopped at once).
    let mut child = Command::new(GCKS)
        .current_dir(d)
        .args(["serve", "--listen", "127.0.0.1:0", "--id", "gcks.test"])
        .args(["--key", "gcks.key.der", "--cert", "gcks.crt.der"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("as gcks.test (certificate)"), "{line}");
}

#[test]
fn errors_name_the_argument_at_fault() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--db", "mysql://h/x", "status"],
            "--db: unsupported scheme \"mysql\"",
        ),
        (
            &["group", "create", "g"],
            "--rekey-dst: multicast rekey needs a destination",
        ),
        (
            &["group", "create", "g", "--rekey-dst", "10.0.0.1:848"],
            "--rekey-dst: 10.0.0.1:848 is not a multicast address",
        ),
        (
            &["group", "create", "g", "--rekey-dst", "239.0.0.9:848"],
            "--signing-key: multicast rekey needs a key to sign GSA_REKEY messages",
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--rekey-dst",
                "239.0.0.9:848",
                "--rekey-src-port",
                "0",
            ],
            "--rekey-src-port: a port from 1 to 65535",
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--rekey",
                "inband",
                "--rekey-src-port",
                "848",
            ],
            "--rekey-src-port: only with --rekey multicast",
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--rekey-dst",
                "239.0.0.9:848",
                "--rekey-src",
                "2001:db8::1",
            ],
            "--rekey-src: 2001:db8::1 is not of --rekey-dst's address family",
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--rekey",
                "inband",
                "--implicit-auth",
            ],
            "--implicit-auth: only with --rekey multicast",
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--rekey",
                "inband",
                "--forward-access-control",
            ],
            "--forward-access-control: needs --rekey multicast",
        ),
        (
            &["group", "add-tek", "nope", "--dst", "239.0.0.1"],
            "GROUP: no group named \"nope\"",
        ),
        (
            &["authorize", "gm1.example", "g"],
            "MEMBER: no member gm1.example",
        ),
        (
            &["member", "add", "gm1.example", "--psk-file", "missing.psk"],
            "--psk-file missing.psk",
        ),
        (
            &["member", "add", "gm1.example"],
            "one of --psk-file, --raw-key or --x509-identity",
        ),
        (&["serve", "--listen", "127.0.0.1:0"], "--psk-file or --key"),
        (
            &[
                "serve",
                "--ike-rekey-time",
                "3600",
                "--ike-lifetime",
                "3000",
            ],
            "--ike-lifetime: 3000 s must be more than the rekey time (3600 s)",
        ),
        (
            &[
                "serve",
                "--ike-rekey-time",
                "600",
                "--ike-rekey-jitter",
                "600",
            ],
            "--ike-rekey-jitter: 600 s must be less than the rekey time (600 s)",
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--rekey-dst",
                "239.0.0.9:848",
                "--implicit-auth",
                "--rekey-src",
                "239.1.1.1",
            ],
            "--rekey-src: 239.1.1.1 is not a unicast address",
        ),
        (
            &[
                "group",
                "create",
                "g",
                "--rekey-dst",
                "239.0.0.9:848",
                "--implicit-auth",
                "--rekey-cipher",
                "aes-gmac-128",
            ],
            "--rekey-cipher aes-gmac-128: ",
        ),
    ];
    for (args, want) in cases {
        let o = gcks(d, args);
        assert!(!o.status.success(), "{args:?} should fail");
        let e = stderr(&o);
        assert!(e.starts_with("gcks: error: "), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e}");
    }
    // Out-of-range numbers are refused by the parser, naming the flag.
    for (flag, value) in [
        ("--capacity", "0"),
        ("--rekey-lifetime", "0"),
        ("--tek-lifetime", "0"),
        ("--sender-id-bits", "33"),
        ("--max-sender-ids", "0"),
    ] {
        let o = gcks(
            d,
            &[
                "group",
                "create",
                "g",
                "--rekey-dst",
                "239.0.0.9:848",
                "--implicit-auth",
                flag,
                value,
            ],
        );
        assert!(!o.status.success(), "{flag} {value} should fail");
        let e = stderr(&o);
        assert!(
            e.starts_with(&format!("error: invalid value '{value}' for '{flag} <")),
            "{e}"
        );
    }
    // Another master key than the database's: the flag and the file are named.
    std::fs::write(d.join("other.key"), [7u8; 32]).unwrap();
    std::fs::set_permissions(d.join("other.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let e = stderr(&gcks(d, &["--master-key", "other.key", "status"]));
    assert!(
        e.starts_with(
            "gcks: error: --master-key other.key: not the key this database was created with"
        ),
        "{e}"
    );
    // A master key that others can read is refused.
    std::fs::set_permissions(d.join("gcks.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = stderr(&gcks(d, &["status"]));
    assert!(
        e.contains("--master-key ./gcks.key") && e.contains("chmod 600"),
        "{e}"
    );
}

/// RFC 8784 and R129 on the command line: `member add --ppk-file --ppk-id --ppk-required`,
/// `member set-ppk`, `member list` (PPK_ID, never the PPK), `group create --require-pq-ike`;
/// a short PPK is refused before the member is added, naming the flag.
#[test]
fn member_ppks_and_post_quantum_groups() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("gm.psk"), b"psk\n").unwrap();
    std::fs::write(d.join("short.ppk"), b"ten octets\n").unwrap();
    std::fs::write(d.join("gm.ppk"), [b'q'; 40]).unwrap();
    let ok = |args: &[&str]| {
        let o = gcks(d, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let add = ["member", "add", "gm1.example", "--psk-file", "gm.psk"];
    let o = gcks(
        d,
        &[&add[..], &["--ppk-file", "short.ppk", "--ppk-id", "p1"]].concat(),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("--ppk-file short.ppk: 10 octets; a PPK needs at least 32"),
        "{}",
        stderr(&o)
    );
    assert!(
        !ok(&["member", "list"]).contains("gm1.example"),
        "nothing added"
    );
    let o = gcks(d, &[&add[..], &["--ppk-file", "gm.ppk"]].concat());
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--ppk-id"), "{}", stderr(&o));
    let out = ok(&[
        &add[..],
        &["--ppk-file", "gm.ppk", "--ppk-id", "p1", "--ppk-required"],
    ]
    .concat());
    assert!(out.contains("PPK p1 (required)"), "{out}");
    let list = ok(&["member", "list"]);
    assert!(
        list.contains("gm1.example  psk, PPK p1 (required)"),
        "{list}"
    );
    assert!(!list.contains("qqqq"));
    let out = ok(&["member", "set-ppk", "gm1.example", "--none"]);
    assert!(out.contains("no PPK"), "{out}");
    assert!(!ok(&["member", "list"]).contains("PPK"));
    let out = ok(&[
        "member",
        "set-ppk",
        "gm1.example",
        "--ppk-file",
        "gm.ppk",
        "--ppk-id",
        "p2",
    ]);
    assert!(out.contains("PPK p2") && !out.contains("required"), "{out}");
    let o = gcks(
        d,
        &[
            "member",
            "set-ppk",
            "nobody.example",
            "--ppk-file",
            "gm.ppk",
            "--ppk-id",
            "p",
        ],
    );
    assert!(
        stderr(&o).contains("ID: no member nobody.example"),
        "{}",
        stderr(&o)
    );
    let out = ok(&[
        "group",
        "create",
        "pq",
        "--rekey",
        "inband",
        "--require-pq-ike",
    ]);
    assert!(out.contains("post-quantum IKE SA required"), "{out}");
    assert!(ok(&["group", "list"]).contains("post-quantum IKE SA required"));
}

/// `gcks group add-tek`: the Sequence Numbers transform is `auto` unless given (RFC 9838
/// 4.4.2.1.3, R077), the packet rate 1,000,000/s unless given, and a rate that would leave
/// a TEK with sequential numbers less than a minute is refused naming the flag (2.6, R049).
#[test]
fn add_tek_chooses_sequence_numbers_by_default_and_checks_the_packet_rate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = |args: &[&str]| {
        let o = gcks(d, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    ok(&[
        "group",
        "create",
        "g",
        "--rekey",
        "inband",
        "--sender-id-bits",
        "8",
    ]);
    for (rate, shown) in [("0", "0"), ("71582789", "71582789")] {
        let o = gcks(
            d,
            &[
                "group",
                "add-tek",
                "g",
                "--dst",
                "239.0.0.1:5004",
                "--max-packet-rate",
                rate,
            ],
        );
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(&format!("--max-packet-rate: {shown}")), "{e}");
        assert!(e.contains("RFC 9838 2.6"), "{e}");
    }
    let e = stderr(&gcks(
        d,
        &[
            "group",
            "add-tek",
            "g",
            "--dst",
            "239.0.0.1",
            "--sn",
            "seq16",
        ],
    ));
    assert!(
        e.contains("--sn: \"seq16\" (auto, unspecified, seq32 or seq64)"),
        "{e}"
    );
    // RFC 9838 4.4.2.1.3: no 64-bit sequence numbers on a multicast destination (the
    // GCKS could never put such a policy in a GSA); a unicast one may have them.
    let e = stderr(&gcks(
        d,
        &[
            "group",
            "add-tek",
            "g",
            "--dst",
            "239.0.0.1:5004",
            "--sn",
            "seq64",
        ],
    ));
    assert!(
        e.starts_with("gcks: error: --sn: seq64 (Partially Transmitted 64-bit Sequential Numbers) MUST NOT be used for a multicast destination such as 239.0.0.1:5004 (RFC 9838 4.4.2.1.3)"),
        "{e}"
    );
    let out = ok(&["group", "add-tek", "g", "--dst", "239.0.0.1:5004"]);
    assert!(out.contains("SN auto"), "{out}");
    let out = ok(&[
        "group",
        "add-tek",
        "g",
        "--dst",
        "192.0.2.9:5004",
        "--sn",
        "seq64",
    ]);
    assert!(
        out.contains("SN Partially Transmitted 64-bit Sequential Numbers"),
        "{out}"
    );
    ok(&[
        "group",
        "add-tek",
        "g",
        "--dst",
        "239.0.0.2:5004",
        "--sn",
        "unspecified",
        "--max-packet-rate",
        "71582788",
    ]);
    let list = ok(&["group", "list"]);
    assert!(
        list.contains("SN auto transport max 1000000 packets/s"),
        "{list}"
    );
    assert!(
        list.contains("SN 32-bit Unspecified Numbers transport max 71582788 packets/s"),
        "{list}"
    );
}

#[test]
fn the_demo_registers_three_members_with_identical_keys() {
    let o = Command::new(GCKS).arg("demo").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        out.contains("all hold the same TEK and Rekey SA keys: true"),
        "{out}"
    );
    assert!(
        out.contains("intruder.demo   refused: AUTHORIZATION_FAILED"),
        "{out}"
    );
    assert_eq!(out.matches("registered: ").count(), 3, "{out}");
}

/// A `--db` file in a directory that does not exist is named as such, before a master key
/// is created for it.
#[test]
fn db_in_a_missing_directory_is_named_and_creates_no_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let o = gcks(dir.path(), &["--db", "no/such/dir/gcks.db", "status"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.starts_with(
            "gcks: error: --db no/such/dir/gcks.db: the directory no/such/dir does not exist"
        ),
        "{e}"
    );
    assert!(!dir.path().join("gcks.key").exists());
}

/// `gcks status` and `gcks group list` show a group row an SQL edit made unreadable, with
/// the column and the row, beside the others, instead of failing as a whole.
#[test]
fn status_shows_an_unreadable_group_beside_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for name in ["good", "broken"] {
        let o = gcks(
            d,
            &[
                "group",
                "create",
                name,
                "--rekey-dst",
                "239.0.0.9:848",
                "--implicit-auth",
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let url = format!("sqlite://{}", d.join("gcks.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            sqlx::query("UPDATE groups SET rekey_dst_addr = '239.0.0.999' WHERE name = 'broken'")
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        });
    for args in [&["status"][..], &["group", "list"][..]] {
        let o = gcks(d, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(
                "group id 2: unreadable: invalid stored value in groups.rekey_dst_addr of group \
                 \"broken\" (id 2): \"239.0.0.999\" is not an IP address"
            ),
            "{args:?}: {out}"
        );
        assert!(out.contains("good  IDg keyid:good"), "{args:?}: {out}");
    }
}
