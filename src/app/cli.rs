//! The command line (ashd-compatible short flags plus long forms) and its check into a
//! [`Config`]: flags end here, the rest of the program sees only the validated configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use std::sync::Arc;

use crate::base::access::LineFormat;
use crate::base::config::{AllowList, Config, Launch, Limits, ListenSpec, Model, ProcessConfig};
use crate::base::error::ConfigError;
use crate::proto::pathinfo::Mount;

/// Raw command-line arguments, as clap parses them.
#[derive(Parser, Debug)]
#[command(
    name = "scgi-wsgi",
    bin_name = "scgi-wsgi",
    version,
    about = "Serve a Python WSGI application over SCGI",
    long_about = "Serve a Python WSGI application over SCGI.\n\n\
        Without -T or -u, the listening socket is taken from standard input (fd 0), \
        as ashd's callscgi passes it. Without -A, HANDLER-MODULE's wmain(*ARGS) is called \
        and what it returns is the WSGI application.",
    after_help = "See scgi-wsgi(1) for the handling models, limits and signals.",
    // A flag given twice takes its last value, as with most Unix tools.
    args_override_self = true,
    // `--max-body -1` reaches the value check, which names the flag, instead of clap's
    // "unexpected argument".
    allow_negative_numbers = true
)]
pub struct Args {
    /// Use the object named `application` in HANDLER-MODULE as the WSGI app (mod_wsgi convention)
    #[arg(short = 'A', long = "application")]
    pub application: bool,

    /// Do not configure Python's logging module
    #[arg(short = 'L', long = "no-logging")]
    pub no_logging: bool,

    /// Prepend MODPATH to sys.path (may be given several times)
    #[arg(short = 'p', long = "path", value_name = "MODPATH")]
    pub module_paths: Vec<PathBuf>,

    /// Request handling model: free[:max=N,timeout=S], pool[:max=N,queue=Q,abort=S], rplex[:max=N] or single
    #[arg(short = 't', long = "handling", value_name = "MODEL", default_value = "free")]
    pub handling: String,

    /// Listen on TCP [HOST:]PORT instead of fd 0 (HOST defaults to localhost)
    #[arg(
        short = 'T',
        long = "tcp",
        value_name = "[HOST:]PORT",
        conflicts_with = "unix"
    )]
    pub tcp: Option<String>,

    /// Listen on a Unix socket at PATH instead of fd 0 (a stale socket file is replaced)
    #[arg(short = 'u', long = "unix", value_name = "PATH")]
    pub unix: Option<PathBuf>,

    /// Permissions of the Unix socket file, in octal
    #[arg(long = "unix-mode", value_name = "MODE", requires = "unix")]
    pub unix_mode: Option<String>,

    /// Remote-debugging socket for the PDM library (used when the `pdm` module is installed)
    #[arg(short = 'm', long = "pdm", value_name = "PDM-SPEC")]
    pub pdm: Option<String>,

    /// Use the virtualenv DIR (default: $VIRTUAL_ENV when set)
    #[arg(short = 'H', long = "virtualenv", value_name = "DIR")]
    pub virtualenv: Option<PathBuf>,

    /// Run the app in worker processes of this Python (e.g. pypy3, python3.12) instead of the
    /// embedded interpreter
    #[arg(long, value_name = "PYTHON")]
    pub interpreter: Option<String>,

    /// Seconds to let requests in flight finish after SIGTERM or SIGINT
    #[arg(long, value_name = "SECS", default_value = "30")]
    pub graceful_timeout: String,

    /// Largest SCGI header block accepted (bytes; K, M and G suffixes allowed)
    #[arg(long, value_name = "BYTES", default_value = "64K")]
    pub max_head: String,

    /// Largest request body accepted (bytes; K, M and G suffixes allowed)
    #[arg(long, value_name = "BYTES", default_value = "1G")]
    pub max_body: String,

    /// Bodies larger than this are kept in an unlinked temporary file instead of memory
    #[arg(long, value_name = "BYTES", default_value = "256K")]
    pub body_buffer: String,

    /// Response bytes buffered per connection before the app is made to wait for the client
    #[arg(long, value_name = "BYTES", default_value = "256K")]
    pub write_buffer: String,

    /// Seconds a client has, from connecting, to send the whole SCGI header block
    #[arg(long, value_name = "SECS", default_value = "10")]
    pub head_timeout: String,

    /// Seconds a request body may stall (no bytes arriving) before the request is answered 408
    #[arg(long, value_name = "SECS", default_value = "30")]
    pub body_timeout: String,

    /// Seconds a response may stall (client not reading) before the connection is dropped
    #[arg(long, value_name = "SECS", default_value = "60")]
    pub write_timeout: String,

    /// Most connections held open at once; beyond it, new ones wait in the listen backlog
    #[arg(long, value_name = "N", default_value = "4096")]
    pub max_connections: usize,

    /// Requests waiting for a worker thread under free, rplex and single (pool uses its queue=);
    /// while it is full no new connections are accepted
    #[arg(long, value_name = "N", default_value = "100")]
    pub max_queue: usize,

    /// Listen backlog for sockets this program creates
    #[arg(long, value_name = "N", default_value = "1024")]
    pub backlog: i32,

    /// Accept TCP connections as soon as they open, instead of when their first bytes arrive
    /// (TCP_DEFER_ACCEPT, on by default on sockets this program creates)
    #[arg(long)]
    pub no_defer_accept: bool,

    /// The app's mount point: SCRIPT_NAME is MOUNT and PATH_INFO the rest of the decoded path,
    /// whatever split the frontend made ("/" or "" for the root; see ENVIRON in scgi-wsgi(1))
    #[arg(long = "script-name", value_name = "MOUNT")]
    pub script_name: Option<String>,

    /// Log one line per request at DEBUG level and other detail
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// Worker processes sharing the listening socket; above 1 a master process supervises them
    #[arg(long, value_name = "N", default_value = "1")]
    pub processes: usize,

    /// Replace a worker process after it has taken N requests (0: never)
    #[arg(long, value_name = "N", default_value = "0")]
    pub max_requests: u64,

    /// Add a random 0..=N to each worker's --max-requests, so workers are not all replaced at once
    #[arg(long, value_name = "N", default_value = "0")]
    pub max_requests_jitter: u64,

    /// Seconds an app may spend on one request before it is answered 504 and its worker replaced
    #[arg(long, value_name = "SECS")]
    pub request_timeout: Option<String>,

    /// Replace a worker process whose resident memory (its app's interpreter process
    /// included) passes MIB mebibytes
    #[arg(long, value_name = "MIB")]
    pub max_rss: Option<String>,

    /// Replace a worker process once it has run SECS seconds (plus up to --max-lifetime-jitter)
    #[arg(long, value_name = "SECS")]
    pub max_lifetime: Option<String>,

    /// Add a random 0..SECS to each worker's --max-lifetime (default: a tenth of it), so that
    /// workers started together are not all replaced together
    #[arg(long, value_name = "SECS")]
    pub max_lifetime_jitter: Option<String>,

    /// Write one line per request to FILE ("-": standard output); SIGUSR1 reopens it
    #[arg(long, value_name = "FILE")]
    pub access_log: Option<PathBuf>,

    /// The access log's lines: combined (the default), json (one object per line), or a
    /// template of {fields} such as "{remote} {method} {path} {status} {duration_us}"
    #[arg(
        long,
        value_name = "FORMAT",
        default_value = "combined",
        requires = "access_log"
    )]
    pub access_log_format: String,

    /// Serve Prometheus metrics over HTTP at /metrics on [HOST:]PORT or unix:PATH (with
    /// --processes above 1, the master serves the sum over its workers)
    #[arg(long, value_name = "[HOST:]PORT|unix:PATH")]
    pub metrics: Option<String>,

    /// Accept TCP connections only from these networks (CIDR[,CIDR...], e.g.
    /// 127.0.0.1,10.0.0.0/8; may be given several times); others are closed at accept
    #[arg(long, value_name = "CIDR[,CIDR...]")]
    pub allow_from: Vec<String>,

    /// Write the process id (of the master, with --processes above 1) to FILE
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,

    /// Change to DIR before anything else (relative paths in other options are then relative to it)
    #[arg(long, value_name = "DIR")]
    pub chdir: Option<PathBuf>,

    /// After opening the listening socket, switch to USER (a name or a number)
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// After opening the listening socket, switch to GROUP (default: the --user's primary group)
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,

    /// File mode creation mask, in octal (e.g. 027)
    #[arg(long, value_name = "MASK")]
    pub umask: Option<String>,

    /// The Python module that provides the WSGI application
    #[arg(value_name = "HANDLER-MODULE")]
    pub module: String,

    /// Arguments passed to wmain() as strings
    #[arg(value_name = "ARGS", trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl Args {
    /// Checks every value and turns the raw arguments into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let listen = match (&self.tcp, &self.unix) {
            (Some(spec), _) => parse_tcp(spec)?,
            (None, Some(path)) => ListenSpec::Unix {
                path: path.clone(),
                mode: self.unix_mode.as_deref().map(parse_mode).transpose()?,
            },
            (None, None) if socket_activated() => ListenSpec::Activated,
            (None, None) => ListenSpec::Stdin,
        };
        if self.module.is_empty() {
            return Err(ConfigError::Invalid {
                option: "HANDLER-MODULE",
                value: String::new(),
                reason: "the module name is empty".into(),
            });
        }
        let process = self.process_config()?;
        let metrics = self.metrics.as_deref().map(parse_metrics).transpose()?;
        let allow_from = self.allow_list()?;
        let virtualenv_from_env = self.virtualenv.is_none();
        let virtualenv = self.virtualenv.or_else(|| {
            std::env::var_os("VIRTUAL_ENV")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        if self.max_connections == 0 {
            return Err(invalid("--max-connections", "0", "must be at least 1"));
        }
        if self.max_queue == 0 {
            return Err(invalid("--max-queue", "0", "must be at least 1"));
        }
        if self.backlog <= 0 {
            return Err(invalid(
                "--backlog",
                &self.backlog.to_string(),
                "must be at least 1",
            ));
        }
        let limits = Limits {
            max_head: parse_size("--max-head", &self.max_head)? as usize,
            max_body: parse_size("--max-body", &self.max_body)?,
            body_buffer: parse_size("--body-buffer", &self.body_buffer)?,
            head_timeout: parse_positive_secs("--head-timeout", &self.head_timeout)?,
            body_timeout: parse_positive_secs("--body-timeout", &self.body_timeout)?,
            write_timeout: parse_positive_secs("--write-timeout", &self.write_timeout)?,
            max_connections: self.max_connections,
            write_buffer: parse_size("--write-buffer", &self.write_buffer)?
                .try_into()
                .unwrap_or(usize::MAX),
            max_queue: self.max_queue,
            allow_from,
        };
        if limits.write_buffer < 1024 {
            return Err(invalid(
                "--write-buffer",
                &self.write_buffer,
                "must be at least 1K",
            ));
        }
        if limits.max_head == 0 {
            return Err(invalid("--max-head", &self.max_head, "must be at least 1 byte"));
        }
        Ok(Config {
            launch: Launch::Standalone,
            argv: Vec::new(),
            process,
            use_application: self.application,
            no_logging: self.no_logging,
            module_paths: self.module_paths,
            model: Model::parse(&self.handling)?,
            listen,
            backlog: self.backlog,
            defer_accept: !self.no_defer_accept,
            pdm: self.pdm,
            virtualenv_from_env: virtualenv_from_env && virtualenv.is_some(),
            virtualenv,
            interpreter: self.interpreter.filter(|i| !i.is_empty()),
            graceful_timeout: parse_secs("--graceful-timeout", &self.graceful_timeout)?,
            limits,
            mount: self
                .script_name
                .as_deref()
                .map(|m| Mount::parse(m).map_err(|reason| invalid("--script-name", m, reason)))
                .transpose()?,
            verbose: self.verbose,
            metrics,
            module: self.module,
            args: self.args,
        })
    }
}

impl Args {
    fn process_config(&self) -> Result<ProcessConfig, ConfigError> {
        if self.processes == 0 || self.processes > 1024 {
            return Err(invalid(
                "--processes",
                &self.processes.to_string(),
                "must be from 1 to 1024",
            ));
        }
        let request_timeout = match &self.request_timeout {
            None => None,
            Some(text) => Some(parse_positive_secs("--request-timeout", text)?),
        };
        let max_rss = match &self.max_rss {
            None => None,
            Some(text) => Some(
                text.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|mib| *mib > 0 && *mib < 1 << 40)
                    .ok_or_else(|| invalid("--max-rss", text, "not a number of mebibytes above 0"))?
                    << 20,
            ),
        };
        let max_lifetime = match &self.max_lifetime {
            None => None,
            Some(text) => Some(parse_positive_secs("--max-lifetime", text)?),
        };
        let max_lifetime_jitter = match (&self.max_lifetime_jitter, max_lifetime) {
            (Some(text), _) => parse_secs("--max-lifetime-jitter", text)?,
            (None, Some(lifetime)) => lifetime / 10,
            (None, None) => Duration::ZERO,
        };
        let access_log_format = LineFormat::parse(&self.access_log_format)
            .map_err(|reason| invalid("--access-log-format", &self.access_log_format, &reason))?;
        let umask = match &self.umask {
            None => None,
            Some(text) => Some(
                u32::from_str_radix(text, 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| invalid("--umask", text, "not an octal mask such as 027"))?,
            ),
        };
        for (option, value) in [("--user", &self.user), ("--group", &self.group)] {
            if value.as_deref() == Some("") {
                return Err(invalid(option, "", "is empty"));
            }
        }
        Ok(ProcessConfig {
            processes: self.processes,
            max_requests: Some(self.max_requests).filter(|n| *n > 0),
            max_requests_jitter: self.max_requests_jitter,
            request_timeout,
            max_rss,
            max_lifetime,
            max_lifetime_jitter,
            access_log: self.access_log.clone(),
            access_log_format,
            pid_file: self.pid_file.clone(),
            chdir: self.chdir.clone(),
            user: self.user.clone(),
            group: self.group.clone(),
            umask,
        })
    }
}

impl Args {
    /// `--allow-from`, every value given, as one list.
    fn allow_list(&self) -> Result<Option<Arc<AllowList>>, ConfigError> {
        if self.allow_from.is_empty() {
            return Ok(None);
        }
        let joined = self.allow_from.join(",");
        AllowList::parse(&joined)
            .map(|list| Some(Arc::new(list)))
            .map_err(|reason| invalid("--allow-from", &joined, &reason))
    }
}

/// Parses `--metrics [HOST:]PORT` or `--metrics unix:PATH`.
fn parse_metrics(spec: &str) -> Result<ListenSpec, ConfigError> {
    match spec.strip_prefix("unix:") {
        Some("") => Err(invalid("--metrics", spec, "the socket path is empty")),
        Some(path) => Ok(ListenSpec::Unix {
            path: PathBuf::from(path),
            mode: None,
        }),
        None => parse_tcp(spec).map_err(|_| {
            invalid(
                "--metrics",
                spec,
                "expected [HOST:]PORT (e.g. 127.0.0.1:9100) or unix:PATH",
            )
        }),
    }
}

/// Whether systemd-style socket activation passed a socket to this very process.
fn socket_activated() -> bool {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let count = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    pid_matches && count >= 1
}

fn invalid(option: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        option,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Parses `-T [HOST:]PORT`; HOST may be a bracketed IPv6 address and defaults to localhost.
pub fn parse_tcp(spec: &str) -> Result<ListenSpec, ConfigError> {
    let (host, port) = match spec.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
            (host.trim_start_matches('[').trim_end_matches(']'), port)
        }
        Some(_) => {
            return Err(invalid(
                "-T",
                spec,
                "write an IPv6 address in brackets: [::1]:PORT",
            ))
        }
        None => ("localhost", spec),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("-T", spec, "the port is not a number from 0 to 65535"))?;
    let host = if host.is_empty() { "localhost" } else { host };
    Ok(ListenSpec::Tcp {
        host: host.to_string(),
        port,
    })
}

fn parse_mode(text: &str) -> Result<u32, ConfigError> {
    u32::from_str_radix(text, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| invalid("--unix-mode", text, "not an octal mode such as 660"))
}

/// Parses a byte count with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(option: &'static str, text: &str) -> Result<u64, ConfigError> {
    let trimmed = text.trim();
    let (digits, scale) = match trimmed.as_bytes().last().map(|b| b.to_ascii_uppercase()) {
        Some(b'K') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some(b'M') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some(b'G') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        _ => (trimmed, 1),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| invalid(option, text, "not a byte count such as 65536, 64K or 1M"))
}

/// Parses the command line. This program's flags are recognised after HANDLER-MODULE too
/// (`scgi-wsgi -T 4000 app --max-body 1M`); words after it that are not among them go to
/// `wmain()`, dashes and all (`app -x --y z`).
pub fn parse_args<I, T>(argv: I) -> Result<Args, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Args::try_parse_from(argv)
}

/// Parses a number of seconds above 0: a time limit of nothing would refuse everything.
pub fn parse_positive_secs(option: &'static str, text: &str) -> Result<Duration, ConfigError> {
    Some(parse_secs(option, text)?)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| invalid(option, text, "must be above 0"))
}

/// Parses a non-negative number of seconds (fractions allowed).
pub fn parse_secs(option: &'static str, text: &str) -> Result<Duration, ConfigError> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| invalid(option, text, "not a number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_spec_forms() {
        let cases = [
            ("8000", "localhost", 8000),
            (":8000", "localhost", 8000),
            ("127.0.0.1:9", "127.0.0.1", 9),
            ("[::1]:4000", "::1", 4000),
            ("example.org:80", "example.org", 80),
        ];
        for (spec, host, port) in cases {
            assert_eq!(
                parse_tcp(spec).unwrap(),
                ListenSpec::Tcp {
                    host: host.into(),
                    port
                },
                "{spec}"
            );
        }
        for bad in ["", "x", "1:2:3", "host:99999", "host:-1"] {
            assert!(parse_tcp(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn sizes_and_seconds() {
        assert_eq!(parse_size("x", "64K").unwrap(), 65536);
        assert_eq!(parse_size("x", "1m").unwrap(), 1 << 20);
        assert_eq!(parse_size("x", "123").unwrap(), 123);
        assert!(parse_size("x", "-1").is_err());
        assert!(parse_size("x", "1T").is_err());
        assert!(parse_size("x", "99999999999G").is_err());
        assert_eq!(parse_secs("x", "0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_secs("x", "-1").is_err());
        assert!(parse_secs("x", "nan").is_err());
        assert_eq!(parse_secs("x", "0").unwrap(), Duration::ZERO);
        assert!(parse_positive_secs("x", "0").is_err());
        assert!(parse_positive_secs("x", "0.0").is_err());
        let zero = parse_args(["scgi-wsgi", "--head-timeout", "0", "m"])
            .unwrap()
            .into_config();
        assert!(zero.unwrap_err().to_string().contains("--head-timeout"));
        let negative = parse_args(["scgi-wsgi", "--max-body", "-1", "m"])
            .unwrap()
            .into_config();
        assert!(negative.unwrap_err().to_string().contains("--max-body"));
    }

    #[test]
    fn repeated_paths_add_up_and_repeated_values_take_the_last() {
        let args = Args::try_parse_from([
            "scgi-wsgi",
            "-p",
            "a",
            "-p",
            "b",
            "--interpreter",
            "python3",
            "--interpreter",
            "pypy3",
            "m",
        ])
        .unwrap();
        assert_eq!(args.module_paths, [PathBuf::from("a"), PathBuf::from("b")]);
        assert_eq!(args.interpreter.as_deref(), Some("pypy3"));
    }

    #[test]
    fn flags_after_the_handler_module_are_still_flags() {
        let args = parse_args(["scgi-wsgi", "-T", "4000", "mod", "--max-body", "1K", "-p", "lib"]).unwrap();
        assert_eq!(args.module, "mod");
        assert!(args.args.is_empty());
        assert_eq!(args.max_body, "1K");
        assert_eq!(args.module_paths, [PathBuf::from("lib")]);
        assert!(
            parse_args(["scgi-wsgi", "-T", "4000"]).is_err(),
            "HANDLER-MODULE is required"
        );
    }

    #[test]
    fn trailing_args_may_look_like_flags() {
        let args = Args::try_parse_from(["scgi-wsgi", "-A", "-T", "4000", "mod", "-x", "--y", "z"]).unwrap();
        assert_eq!(args.module, "mod");
        assert_eq!(args.args, ["-x", "--y", "z"]);
        assert!(args.application);
    }

    #[test]
    fn unix_mode_is_octal() {
        let args = Args::try_parse_from(["scgi-wsgi", "-u", "/tmp/s", "--unix-mode", "660", "m"]).unwrap();
        let config = args.into_config().unwrap();
        assert_eq!(
            config.listen,
            ListenSpec::Unix {
                path: "/tmp/s".into(),
                mode: Some(0o660)
            }
        );
        let args = Args::try_parse_from(["scgi-wsgi", "-u", "/tmp/s", "--unix-mode", "9", "m"]).unwrap();
        assert!(args.into_config().is_err());
    }
}
