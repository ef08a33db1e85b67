//! The validated configuration the rest of the program runs on: where to listen, the limits,
//! the handling model, the processes. The command line (`app::cli`) checks its flags into
//! these types; nothing below the app layer sees a flag.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::access::LineFormat;
use super::error::ConfigError;
use crate::proto::pathinfo::Mount;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// The socket already open on fd 0 (callscgi's convention).
    Stdin,
    /// The socket systemd passed on fd 3 (`LISTEN_FDS`/`LISTEN_PID` name this process).
    Activated,
    /// A TCP address: host (a name or an address) and port.
    Tcp {
        /// Host name or address to bind.
        host: String,
        /// Port number.
        port: u16,
    },
    /// A Unix socket path, with optional permissions.
    Unix {
        /// Socket file path.
        path: PathBuf,
        /// Permission bits to set on the socket file.
        mode: Option<u32>,
    },
}

/// Limits that keep one connection, or many, from exhausting the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest header block (netstring payload) accepted.
    pub max_head: usize,
    /// Largest request body accepted.
    pub max_body: u64,
    /// Bodies above this size spill to a temporary file.
    pub body_buffer: u64,
    /// Time allowed from accept to a complete head.
    pub head_timeout: Duration,
    /// Longest stall allowed while the body arrives.
    pub body_timeout: Duration,
    /// Longest stall allowed while the response is written.
    pub write_timeout: Duration,
    /// Most connections held at once.
    pub max_connections: usize,
    /// Bytes of response queued per connection before the app is made to wait.
    pub write_buffer: usize,
    /// Requests waiting for a worker thread (models other than pool, which has its own `queue=`).
    pub max_queue: usize,
    /// Peers that may connect over TCP (`--allow-from`); `None`: anyone.
    pub allow_from: Option<Arc<AllowList>>,
}

/// The peers that may connect over TCP (`--allow-from`): networks in CIDR form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList(Vec<(IpAddr, u8)>);

impl AllowList {
    /// Parses `CIDR[,CIDR...]`: `10.0.0.0/8`, `192.0.2.7` (one address), `::1`, `fd00::/8`.
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut networks = Vec::new();
        for item in text.split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let (address, bits) = match item.split_once('/') {
                Some((address, bits)) => (address, Some(bits)),
                None => (item, None),
            };
            let address: IpAddr = address
                .trim_matches(['[', ']'])
                .parse()
                .map_err(|_| format!("{item:?} is not an address or network such as 10.0.0.0/8 or ::1"))?;
            let most = if address.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => most,
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= most)
                    .ok_or_else(|| format!("{item:?}: the prefix length must be from 0 to {most}"))?,
            };
            networks.push((address, bits));
        }
        if networks.is_empty() {
            return Err("no network given".into());
        }
        Ok(AllowList(networks))
    }

    /// Whether `peer` is in one of the networks (an IPv4 address mapped into IPv6, as a
    /// dual-stack socket reports it, counts as the IPv4 address).
    pub fn permits(&self, peer: IpAddr) -> bool {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(peer, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|(network, bits)| match (network, peer) {
            (IpAddr::V4(network), IpAddr::V4(peer)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*network) & mask == u32::from(peer) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(peer)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*network) & mask == u128::from(peer) & mask
            }
            _ => false,
        })
    }
}

/// How the process (or processes) run: workers, recycling, identity, files.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Worker processes; 1 means no master process.
    pub processes: usize,
    /// Requests after which a worker is replaced.
    pub max_requests: Option<u64>,
    /// Random extra requests added to `max_requests` per worker.
    pub max_requests_jitter: u64,
    /// Longest time the app may take over one request.
    pub request_timeout: Option<Duration>,
    /// Resident memory (bytes) past which a worker is replaced.
    pub max_rss: Option<u64>,
    /// Age past which a worker is replaced (plus up to `max_lifetime_jitter`).
    pub max_lifetime: Option<Duration>,
    /// Random extra age added to `max_lifetime` per worker.
    pub max_lifetime_jitter: Duration,
    /// Access log file; `-` is standard output.
    pub access_log: Option<PathBuf>,
    /// The access log's line format.
    pub access_log_format: LineFormat,
    /// Pid file to write.
    pub pid_file: Option<PathBuf>,
    /// Directory to change to at start.
    pub chdir: Option<PathBuf>,
    /// User to switch to after binding.
    pub user: Option<String>,
    /// Group to switch to after binding.
    pub group: Option<String>,
    /// umask to set at start.
    pub umask: Option<u32>,
}

/// How this program and its Python meet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Launch {
    /// The `scgi-wsgi` binary: it starts the interpreter it was built against (or runs the
    /// app in another, with `--interpreter`).
    #[default]
    Standalone,
    /// The pip-installed command: a Python process (the virtualenv's) imported the server
    /// and runs it; its interpreter is the one already running.
    InPython,
}

/// The validated configuration the rest of the program runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// How this program and its Python meet.
    pub launch: Launch,
    /// The command line as given (the app's `sys.argv`).
    pub argv: Vec<String>,
    /// Use `application` instead of calling `wmain`.
    pub use_application: bool,
    /// Leave Python's logging unconfigured.
    pub no_logging: bool,
    /// Directories prepended to sys.path.
    pub module_paths: Vec<PathBuf>,
    /// The handling model and its parameters.
    pub model: Model,
    /// Where to listen.
    pub listen: ListenSpec,
    /// Listen backlog for sockets we create.
    pub backlog: i32,
    /// Whether TCP sockets we create accept a connection only once its first bytes arrive.
    pub defer_accept: bool,
    /// PDM debugging socket spec, if any.
    pub pdm: Option<String>,
    /// Virtualenv to run in, if any.
    pub virtualenv: Option<PathBuf>,
    /// The virtualenv came from `$VIRTUAL_ENV`, not from `-H`.
    pub virtualenv_from_env: bool,
    /// External interpreter command, when the app runs outside this process.
    pub interpreter: Option<String>,
    /// Bound on the wait for requests in flight at shutdown.
    pub graceful_timeout: Duration,
    /// Size and time limits.
    pub limits: Limits,
    /// The mount point from `--script-name`: overrides the frontend's SCRIPT_NAME/PATH_INFO split.
    pub mount: Option<Mount>,
    /// Debug-level logging.
    pub verbose: bool,
    /// Handler module name.
    pub module: String,
    /// Arguments for wmain().
    pub args: Vec<String>,
    /// Worker processes, recycling and process identity.
    pub process: ProcessConfig,
    /// Where the metrics endpoint listens (`--metrics`), if anywhere.
    pub metrics: Option<ListenSpec>,
}

/// Default thread bound for `free` (the original has none; an unbounded default is not safe).
pub const FREE_DEFAULT_MAX: usize = 128;
/// Default thread bound for `pool`, as in the original.
pub const POOL_DEFAULT_MAX: usize = 25;
/// Default queue bound for `pool`, as in the original.
pub const POOL_DEFAULT_QUEUE: usize = 100;

/// A handling model and its parameters, as given with `-t`.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// A thread per running request, at most `max`; `timeout` aborts the process when a
    /// request waits that long for a thread.
    Free {
        /// Most requests running at once.
        max: usize,
        /// Longest wait for a thread before the process aborts.
        timeout: Option<Duration>,
    },
    /// At most `max` threads fed from a queue of at most `queue` requests.
    Pool {
        /// Most threads.
        max: usize,
        /// Most requests waiting for a thread.
        queue: usize,
        /// Longest wait in the queue before the process aborts.
        abort: Option<Duration>,
    },
    /// App calls on up to `max` threads; response iterators advanced by one response thread.
    Rplex {
        /// Most app calls running at once.
        max: usize,
    },
    /// One request at a time, no extra threads for the app.
    Single,
}

impl Model {
    /// Parses `HANDLER[:PAR[=VAL](,PAR[=VAL])...]`.
    pub fn parse(spec: &str) -> Result<Model, ConfigError> {
        let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let known: &'static str = match name {
            // The original's code spells free's timeout `abort`, its manual `timeout`: take both.
            "free" => "max, timeout, abort",
            "pool" => "max, queue, abort",
            "rplex" => "max",
            "single" => "none",
            _ => return Err(ConfigError::UnknownModel(name.to_string())),
        };
        let mut params: Vec<(&str, Option<&str>)> = Vec::new();
        for param in rest.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = match param.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (param, None),
            };
            if !known.split(", ").any(|k| k == key) {
                return Err(ConfigError::UnknownParameter {
                    model: name.to_string(),
                    param: key.to_string(),
                    known,
                });
            }
            params.push((key, value));
        }
        // The last occurrence of a parameter wins, as with repeated command-line flags.
        let get = |key: &str| params.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let bad = |key: &str, value: Option<&str>, reason| ConfigError::BadParameter {
            model: name.to_string(),
            param: key.to_string(),
            value: value.unwrap_or("").to_string(),
            reason,
        };
        let count = |key: &str, default: usize| match get(key) {
            None => Ok(default),
            Some(value) => value
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(key, value, "expected a whole number of at least 1")),
        };
        let seconds = |key: &str| match get(key) {
            None => Ok(None),
            Some(value) => value
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .map(|s| Some(Duration::from_secs_f64(s)))
                .ok_or_else(|| bad(key, value, "expected a number of seconds above 0")),
        };
        Ok(match name {
            "free" => Model::Free {
                max: count("max", FREE_DEFAULT_MAX)?,
                timeout: match seconds("timeout")? {
                    Some(t) => Some(t),
                    None => seconds("abort")?,
                },
            },
            "pool" => Model::Pool {
                max: count("max", POOL_DEFAULT_MAX)?,
                queue: count("queue", POOL_DEFAULT_QUEUE)?,
                abort: seconds("abort")?,
            },
            "rplex" => Model::Rplex {
                max: count("max", FREE_DEFAULT_MAX)?,
            },
            _ => Model::Single,
        })
    }

    /// Most requests running in the app at once: the model's `max` (1 for `single`).
    pub fn max_running(&self) -> usize {
        match *self {
            Model::Free { max, .. } | Model::Pool { max, .. } | Model::Rplex { max } => max,
            Model::Single => 1,
        }
    }

    /// Most requests waiting for a thread: pool's `queue=`, `max_queue` (`--max-queue`) for
    /// the others.
    pub fn queue_limit(&self, max_queue: usize) -> usize {
        match *self {
            Model::Pool { queue, .. } => queue,
            _ => max_queue,
        }
    }

    /// Whether response iterators are advanced by one response thread (rplex).
    pub fn multiplexes_responses(&self) -> bool {
        matches!(self, Model::Rplex { .. })
    }

    /// Whether requests may run on several threads at once (`wsgi.multithread`).
    pub fn multithread(&self) -> bool {
        !matches!(self, Model::Single)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_match_networks_of_either_family() {
        let list = AllowList::parse("10.0.0.0/8, 192.0.2.7,::1,fd00::/8").unwrap();
        for ok in ["10.1.2.3", "192.0.2.7", "::1", "fd12::5", "::ffff:10.9.9.9"] {
            assert!(list.permits(ok.parse().unwrap()), "{ok}");
        }
        for no in ["11.0.0.1", "192.0.2.8", "::2", "fe80::1", "127.0.0.1"] {
            assert!(!list.permits(no.parse().unwrap()), "{no}");
        }
        assert!(AllowList::parse("0.0.0.0/0")
            .unwrap()
            .permits("203.0.113.9".parse().unwrap()));
        for bad in ["", "10.0.0.0/33", "example.org", "::1/129", "10.0.0.0/x"] {
            assert!(AllowList::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn models_and_defaults() {
        assert_eq!(
            Model::parse("free").unwrap(),
            Model::Free {
                max: FREE_DEFAULT_MAX,
                timeout: None
            }
        );
        assert_eq!(
            Model::parse("free:max=4,timeout=2.5").unwrap(),
            Model::Free {
                max: 4,
                timeout: Some(Duration::from_millis(2500))
            }
        );
        assert_eq!(
            Model::parse("free:abort=3").unwrap(),
            Model::Free {
                max: FREE_DEFAULT_MAX,
                timeout: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            Model::parse("pool").unwrap(),
            Model::Pool {
                max: 25,
                queue: 100,
                abort: None
            }
        );
        assert_eq!(
            Model::parse("pool:max=3,queue=7,abort=10").unwrap(),
            Model::Pool {
                max: 3,
                queue: 7,
                abort: Some(Duration::from_secs(10))
            }
        );
        assert_eq!(Model::parse("rplex:max=9").unwrap(), Model::Rplex { max: 9 });
        assert_eq!(Model::parse("single").unwrap(), Model::Single);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let cases = [
            ("threaded", "threaded"),
            ("free:queue=3", "queue"),
            ("single:max=2", "max"),
            ("free:max=0", "max"),
            ("free:max=x", "max"),
            ("free:max", "max"),
            ("pool:abort=-1", "abort"),
            ("free:timeout=", "timeout"),
        ];
        for (spec, named) in cases {
            let message = Model::parse(spec).unwrap_err().to_string();
            assert!(message.contains(named), "{spec}: {message}");
        }
    }
}
