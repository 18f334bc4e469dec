//! A pool's listener: a TCP address or a Unix-domain socket file, and what the file needs.
//!
//! A socket file is made with the configured mode before anyone can connect (bind, chmod, then
//! listen), and removed when the listener is dropped (at shutdown, when the accept loop ends),
//! unless another process has put its own socket at the path meanwhile. At start, a socket
//! file that nobody listens on (a connect is refused: a Suture that was killed) is replaced;
//! one somebody listens on, or a path that is not a socket at all, is an error and the file is
//! left alone. The directory is not created: it is a deployment's decision (an `emptyDir`, a
//! `RuntimeDirectory=`), and a missing one is named in the error.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};

use crate::config::ListenAddr;
use crate::net::client_socket::ClientSocket;
use crate::net::socket::{bind_client_listener, LISTEN_BACKLOG};

/// How long the check of an existing socket file waits for its listener to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a listener could not be set up. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Binding or listening failed (address in use, permission denied, ...).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The socket's directory does not exist.
    #[error("the directory {} does not exist; create it first (Suture does not create directories)", .0.display())]
    MissingDirectory(PathBuf),
    /// A live listener owns the socket file.
    #[error("another process is listening on this socket (is another Suture running?); stop it or choose another path")]
    InUse,
    /// The path holds something that is not a socket.
    #[error("the path exists and is not a socket ({0}); it was left alone: remove it or choose another path")]
    NotASocket(&'static str),
    /// The existing socket file could not be looked at or tried.
    #[error("cannot tell whether the existing socket file is in use")]
    Probe(#[source] io::Error),
    /// A stale socket file could not be removed.
    #[error("cannot remove the stale socket file")]
    RemoveStale(#[source] io::Error),
    /// `listen_mode` could not be applied.
    #[error("cannot set the socket file's mode to {mode:04o} (listen_mode)")]
    Mode {
        mode: u32,
        #[source]
        source: io::Error,
    },
}

/// A bound listener.
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix {
        listener: UnixListener,
        /// Removes the file when the listener goes (declared after it: dropped after it).
        _file: SocketFile,
    },
}

impl Listener {
    /// Binds `addr`; a Unix socket file gets `mode`.
    pub(crate) async fn bind(addr: &ListenAddr, mode: u32) -> Result<Listener, BindError> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(bind_client_listener(*addr)?)),
            ListenAddr::Unix(path) => {
                clear_stale(path).await?;
                let (listener, file) = bind_unix(path, mode)?;
                Ok(Listener::Unix {
                    listener,
                    _file: file,
                })
            }
        }
    }

    /// Waits for the next client. Cancel safe (as tokio's `accept`).
    pub(crate) async fn accept(&self) -> io::Result<ClientSocket> {
        match self {
            Listener::Tcp(listener) => Ok(ClientSocket::Tcp(listener.accept().await?.0)),
            Listener::Unix { listener, .. } => Ok(ClientSocket::Unix(listener.accept().await?.0)),
        }
    }
}

/// What kind of file `meta` describes, for the error about a path that is not a socket.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else if kind.is_fifo() {
        "a FIFO"
    } else {
        "a device"
    }
}

/// Makes room at `path`: nothing there, or a socket file nobody listens on (removed).
async fn clear_stale(path: &Path) -> Result<(), BindError> {
    if let Some(dir) = path.parent() {
        match std::fs::metadata(dir) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(BindError::MissingDirectory(dir.to_owned()))
            }
            // Other problems (not a directory, no permission) are left to bind to report.
            _ => {}
        }
    }
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(BindError::Probe(err)),
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket(kind_of(&meta)));
    }
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(path)).await {
        // Something accepts connections there, or holds the socket without accepting.
        Ok(Ok(_)) | Err(_) => Err(BindError::InUse),
        Ok(Err(err)) if err.kind() == io::ErrorKind::WouldBlock => Err(BindError::InUse),
        Ok(Err(err)) if err.kind() == io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(BindError::RemoveStale)?;
            tracing::info!(path = %path.display(), "removed a stale socket file nobody listened on");
            Ok(())
        }
        Ok(Err(err)) => Err(BindError::Probe(err)),
    }
}

/// Binds a Unix socket at `path` with `mode`, then listens: no client can connect before the
/// mode is set.
fn bind_unix(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), BindError> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    let file = SocketFile::of(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|source| BindError::Mode { mode, source })?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std::os::unix::net::UnixListener::from(socket))?;
    Ok((listener, file))
}

/// The socket file a listener created; removed on drop if it is still that file.
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn of(path: &Path) -> io::Result<SocketFile> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if !ours {
            tracing::debug!(path = %self.path.display(), "socket file replaced or gone; not removed");
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::debug!(path = %self.path.display(), "socket file removed"),
            Err(err) => {
                tracing::warn!(path = %self.path.display(), error = %err, "cannot remove the socket file")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(dir: &Path, name: &str) -> ListenAddr {
        ListenAddr::Unix(dir.join(name))
    }

    #[tokio::test]
    async fn socket_file_gets_the_mode_and_goes_with_the_listener() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sock");
        let listener = Listener::bind(&unix(dir.path(), "s.sock"), 0o600).await?;
        let meta = std::fs::symlink_metadata(&path)?;
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let client = tokio::net::UnixStream::connect(&path).await?;
        let accepted = listener.accept().await?;
        assert!(matches!(accepted, ClientSocket::Unix(_)));
        drop(client);
        drop(listener);
        assert!(!path.exists(), "socket file left behind");
        Ok(())
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_is_not() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sock");
        // A listener that went away without removing its file.
        drop(std::os::unix::net::UnixListener::bind(&path)?);
        assert!(path.exists());
        let first = Listener::bind(&unix(dir.path(), "s.sock"), 0o666).await?;
        let err = Listener::bind(&unix(dir.path(), "s.sock"), 0o666)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("a second bind on a live socket succeeded"))?;
        assert!(matches!(err, BindError::InUse), "{err}");
        assert!(path.exists(), "the live socket was removed");
        drop(first);
        Ok(())
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sock");
        std::fs::write(&path, "precious")?;
        let err = Listener::bind(&unix(dir.path(), "s.sock"), 0o666)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("bound over a regular file"))?;
        assert!(
            err.to_string().contains("not a socket (a regular file)"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path)?, "precious");
        Ok(())
    }

    #[tokio::test]
    async fn a_missing_directory_is_named() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("nope");
        let err = Listener::bind(&ListenAddr::Unix(missing.join("s.sock")), 0o666)
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("bound in a missing directory"))?;
        let text = err.to_string();
        assert!(text.contains(&missing.display().to_string()), "{text}");
        assert!(text.contains("does not exist"), "{text}");
        assert!(!missing.exists());
        Ok(())
    }

    #[tokio::test]
    async fn a_replaced_file_is_not_removed() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("s.sock");
        let listener = Listener::bind(&unix(dir.path(), "s.sock"), 0o666).await?;
        std::fs::remove_file(&path)?;
        let other = std::os::unix::net::UnixListener::bind(&path)?;
        drop(listener);
        assert!(path.exists(), "another process's socket was removed");
        drop(other);
        Ok(())
    }
}
