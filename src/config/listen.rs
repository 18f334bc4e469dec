//! `listen` of a pool: a TCP address or a Unix-domain socket path (`unix:/run/suture/...`), and
//! the octal file mode (`listen_mode`) a socket file gets.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// Where a pool listens (`listen`): a TCP address, or a Unix-domain socket written
/// `unix:/run/suture/.s.PGSQL.6432`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    /// An absolute path; the socket file is created at start and removed at shutdown.
    Unix(PathBuf),
}

/// The prefix that makes a `listen` value a Unix-socket path.
pub const UNIX_PREFIX: &str = "unix:";

/// Longest Unix-socket path the kernel takes (`sun_path` is 108 bytes on Linux, NUL included).
pub const MAX_UNIX_PATH: usize = 107;

impl ListenAddr {
    /// Whether only processes on this host can connect: a loopback address or a Unix socket
    /// (where `trust` may be configured).
    pub fn is_host_local(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => addr.ip().is_loopback(),
            ListenAddr::Unix(_) => true,
        }
    }

    /// The TCP address, for a TCP listener.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(addr) => Some(*addr),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => write!(f, "{addr}"),
            ListenAddr::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

/// Why a `listen` value is not a usable address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenAddrError {
    #[error("{0:?} is not an IP address and port such as 127.0.0.1:6432, nor a Unix socket such as unix:/run/suture/.s.PGSQL.6432")]
    NotAnAddress(String),
    #[error(
        "{0:?}: the Unix socket path must be absolute, such as unix:/run/suture/.s.PGSQL.6432"
    )]
    RelativePath(String),
    #[error("{0:?}: the Unix socket path names a directory, not a socket file")]
    DirectoryPath(String),
    #[error("{path:?}: the Unix socket path is {len} bytes long; the kernel takes at most {MAX_UNIX_PATH}")]
    PathTooLong { path: String, len: usize },
}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some(path) = s.strip_prefix(UNIX_PREFIX) else {
            return s
                .parse()
                .map(ListenAddr::Tcp)
                .map_err(|_| ListenAddrError::NotAnAddress(s.to_owned()));
        };
        if !path.starts_with('/') {
            return Err(ListenAddrError::RelativePath(s.to_owned()));
        }
        if path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..") {
            return Err(ListenAddrError::DirectoryPath(s.to_owned()));
        }
        if path.contains('\0') {
            return Err(ListenAddrError::NotAnAddress(s.to_owned()));
        }
        if path.len() > MAX_UNIX_PATH {
            return Err(ListenAddrError::PathTooLong {
                path: path.to_owned(),
                len: path.len(),
            });
        }
        Ok(ListenAddr::Unix(PathBuf::from(path)))
    }
}

/// Parses a file mode written in octal: `"0660"`, `"660"` or `"0o660"`, at most `0777`.
pub fn parse_file_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    let octal = !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if octal && mode <= 0o777 => Ok(mode),
        _ => Err(format!(
            "{text:?} is not a file mode: write permission bits in octal, such as \"0660\" (at most 0777)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_and_unix_addresses_parse() {
        assert_eq!(
            "127.0.0.1:6432".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("127.0.0.1:6432".parse().expect("addr")))
        );
        assert_eq!(
            "[::1]:3307".parse::<ListenAddr>(),
            Ok(ListenAddr::Tcp("[::1]:3307".parse().expect("addr")))
        );
        let unix: ListenAddr = "unix:/run/suture/.s.PGSQL.6432".parse().expect("unix");
        assert_eq!(
            unix,
            ListenAddr::Unix(PathBuf::from("/run/suture/.s.PGSQL.6432"))
        );
        assert_eq!(unix.to_string(), "unix:/run/suture/.s.PGSQL.6432");
        assert!(unix.is_host_local());
        assert_eq!(unix.tcp(), None);
    }

    #[test]
    fn only_loopback_and_unix_are_host_local() {
        let local = |s: &str| s.parse::<ListenAddr>().expect("addr").is_host_local();
        assert!(local("127.0.0.1:1"));
        assert!(local("[::1]:1"));
        assert!(local("unix:/tmp/x.sock"));
        assert!(!local("0.0.0.0:1"));
        assert!(!local("10.0.0.1:1"));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let err = |s: &str| s.parse::<ListenAddr>().expect_err(s).to_string();
        assert!(err("localhost:6432").contains("not an IP address"));
        assert!(err("localhost:6432").contains("unix:/"));
        assert!(err("unix:run/suture.sock").contains("must be absolute"));
        assert!(err("unix:").contains("must be absolute"));
        assert!(err("unix:/run/suture/").contains("names a directory"));
        assert!(err("unix:/run/..").contains("names a directory"));
        assert!(err("unix:/a\0b").contains("not an IP address"));
        let long = format!("unix:/{}", "s".repeat(MAX_UNIX_PATH));
        assert!(err(&long).contains("at most 107"), "{}", err(&long));
        let just_fits = format!("unix:/{}", "s".repeat(MAX_UNIX_PATH - 1));
        assert!(just_fits.parse::<ListenAddr>().is_ok());
    }

    #[test]
    fn file_modes_are_octal() {
        assert_eq!(parse_file_mode("0660"), Ok(0o660));
        assert_eq!(parse_file_mode("660"), Ok(0o660));
        assert_eq!(parse_file_mode("0o600"), Ok(0o600));
        assert_eq!(parse_file_mode("0777"), Ok(0o777));
        for bad in ["", "0o", "0888", "rw-rw----", "01777", "4755", "-1", "+660"] {
            let err = parse_file_mode(bad).expect_err(bad);
            assert!(err.contains("not a file mode"), "{bad}: {err}");
        }
    }
}
