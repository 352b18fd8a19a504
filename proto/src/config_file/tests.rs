use std::time::Duration;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use super::*;

/// A daemon's flags in miniature: one of each kind a file may set.
#[derive(Debug, Parser)]
#[command(name = "daemon")]
struct Flags {
    #[command(subcommand)]
    command: Option<Sub>,
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:7600", global = true)]
    listen: std::net::SocketAddr,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s", global = true)]
    interval: Duration,
    #[arg(long, default_value_t = 64, global = true)]
    max_labels: usize,
    #[arg(long, global = true)]
    insecure: bool,
    #[arg(long = "allow-exec", global = true)]
    allow_exec: Vec<String>,
    #[arg(long, global = true)]
    tls_cert: Option<PathBuf>,
    #[arg(
        long,
        hide_env_values = true,
        env = "DAEMON_TEST_SECRET_NEVER_SET",
        global = true
    )]
    secret: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    Print,
}

fn layered(text: &str) -> Layered {
    layer_text(Flags::command(), Path::new("/etc/tether/daemon.toml"), text).expect("valid file")
}

fn parse(layered: &Layered, args: &[&str]) -> (Flags, ArgMatches) {
    let matches = layered
        .command
        .clone()
        .try_get_matches_from(std::iter::once("daemon").chain(args.iter().copied()))
        .expect("parses");
    (Flags::from_arg_matches(&matches).expect("typed"), matches)
}

fn refusal(text: &str) -> FileError {
    layer_text(Flags::command(), Path::new("/etc/tether/daemon.toml"), text).expect_err("refused")
}

#[test]
fn a_flag_beats_the_file_which_beats_the_default() {
    let file = layered(
        r#"
        listen = "0.0.0.0:7600"
        interval = "2s"
        insecure = true
        allow-exec = ["/usr/bin/uptime", "/usr/bin/df"]
        "#,
    );
    let (flags, _) = parse(&file, &["--interval", "9s"]);
    assert_eq!(flags.listen.to_string(), "0.0.0.0:7600", "from the file");
    assert_eq!(flags.interval, Duration::from_secs(9), "the flag wins");
    assert_eq!(flags.max_labels, 64, "the default where neither says");
    assert!(flags.insecure);
    assert_eq!(flags.allow_exec, ["/usr/bin/uptime", "/usr/bin/df"]);
    // A list flag replaces the file's list rather than adding to it.
    let (flags, _) = parse(&file, &["--allow-exec", "/bin/true"]);
    assert_eq!(flags.allow_exec, ["/bin/true"]);
    // The file's values reach a subcommand's global flags too.
    let (flags, _) = parse(&file, &["print", "--max-labels", "3"]);
    assert!(matches!(flags.command, Some(Sub::Print)));
    assert_eq!((flags.max_labels, flags.insecure), (3, true));
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let err = refusal("max_labels = 3");
    assert!(
        matches!(&err, FileError::UnknownKey { key, suggestion: Some(s), .. }
            if key == "max_labels" && s == "max-labels"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("`max_labels`")
            && text.contains("/etc/tether/daemon.toml")
            && text.contains("did you mean `max-labels`"),
        "{text}"
    );
    let err = refusal("listen = \"127.0.0.1:1\"\nbogus = 1");
    assert!(
        matches!(&err, FileError::UnknownKey { key, suggestion: None, .. } if key == "bogus"),
        "{err:?}"
    );
    // Neither the file's own flag nor help is a key.
    for key in ["config", "help"] {
        let err = refusal(&format!("{key} = \"x\""));
        assert!(
            matches!(err, FileError::UnknownKey { .. }),
            "{key}: {err:?}"
        );
    }
}

#[test]
fn values_the_flag_would_refuse_are_refused_naming_the_key() {
    for (text, key) in [
        (r#"interval = "soon""#, "interval"),
        (r#"listen = "nowhere""#, "listen"),
        ("max-labels = -1", "max-labels"),
        (r#"insecure = "yes""#, "insecure"),
        (r#"listen = ["127.0.0.1:1", "127.0.0.1:2"]"#, "listen"),
        ("[listen]\nport = 1", "listen"),
    ] {
        let err = refusal(text);
        assert!(
            matches!(&err, FileError::Invalid { key: k, .. } if k == key),
            "{text}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!("`{key}`"))
                && message.contains("/etc/tether/daemon.toml")
                && !message.contains('\n'),
            "{message}"
        );
    }
    let err = refusal("listen = \"127.0.0.1:1\"\ninterval = ");
    assert!(matches!(err, FileError::Syntax { line: 2, .. }), "{err:?}");
}

#[test]
fn relative_paths_are_relative_to_the_file() {
    let (flags, _) = parse(&layered(r#"tls-cert = "certs/server.pem""#), &[]);
    assert_eq!(
        flags.tls_cert.as_deref(),
        Some(Path::new("/etc/tether/certs/server.pem"))
    );
    let (flags, _) = parse(&layered(r#"tls-cert = "/srv/server.pem""#), &[]);
    assert_eq!(
        flags.tls_cert.as_deref(),
        Some(Path::new("/srv/server.pem"))
    );
}

#[test]
fn the_file_is_the_flag_then_the_environment_then_the_default_path() {
    let args = |a: &[&str]| -> Vec<OsString> { a.iter().map(OsString::from).collect() };
    let default = Path::new("/etc/tether/daemon.toml");
    let env = || Some(OsString::from("/env.toml"));
    let found = locate(&args(&["daemon", "--config", "/a.toml"]), env(), default);
    assert_eq!(
        (found.path.as_path(), found.explicit),
        (Path::new("/a.toml"), true)
    );
    let found = locate(
        &args(&["daemon", "print", "--config=/b.toml"]),
        env(),
        default,
    );
    assert_eq!(found.path, Path::new("/b.toml"));
    let found = locate(
        &args(&["daemon", "--", "--config", "/c.toml"]),
        env(),
        default,
    );
    assert_eq!(
        (found.path.as_path(), found.explicit),
        (Path::new("/env.toml"), true)
    );
    let found = locate(&args(&["daemon"]), Some(OsString::new()), default);
    assert_eq!((found.path.as_path(), found.explicit), (default, false));

    // The default path is optional; a named file must exist.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("absent.toml");
    let quiet = layer(
        Flags::command(),
        &ConfigPath {
            path: missing.clone(),
            explicit: false,
        },
    )
    .expect("no default file: no file");
    assert_eq!(quiet.file, None);
    let err = layer(
        Flags::command(),
        &ConfigPath {
            path: missing,
            explicit: true,
        },
    )
    .expect_err("a named file must exist");
    assert!(matches!(err, FileError::Read { .. }), "{err:?}");
}

#[test]
fn render_says_where_each_value_came_from_and_hides_secrets() {
    let file = layered(
        r#"
        interval = "2s"
        secret = "s3cret-token"
        allow-exec = ["/usr/bin/uptime"]
        "#,
    );
    let (_, matches) = parse(&file, &["--max-labels", "3"]);
    let text = render(&file, &matches);
    assert!(!text.contains("s3cret-token"), "{text}");
    let line = |key: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} =")) || l.starts_with(&format!("# {key} =")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("interval"), r#"interval = "2s" # file"#);
    assert_eq!(line("max-labels"), "max-labels = 3 # flag");
    assert_eq!(line("listen"), r#"listen = "127.0.0.1:7600" # default"#);
    assert_eq!(line("insecure"), "insecure = false # default");
    assert_eq!(
        line("allow-exec"),
        r#"allow-exec = ["/usr/bin/uptime"] # file"#
    );
    assert_eq!(line("secret"), r#"secret = "<redacted>" # file"#);
    assert_eq!(line("tls-cert"), "# tls-cert = # unset");
    let order: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.trim_start_matches("# ").split(' ').next())
        .collect();
    assert_eq!(
        order,
        [
            "listen",
            "interval",
            "max-labels",
            "insecure",
            "allow-exec",
            "tls-cert",
            "secret"
        ],
        "--help order, without the file's own flag: {text}"
    );

    // What it prints, minus the unset lines, reads back as the same settings.
    let again = layered(&text);
    let (flags, _) = parse(&again, &[]);
    assert_eq!(
        (flags.interval, flags.max_labels),
        (Duration::from_secs(2), 3)
    );
    assert_eq!(flags.secret.as_deref(), Some(REDACTED));
}
