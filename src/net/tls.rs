//! TLS to the backend with rustls and the ring provider, modes as libpq's `sslmode`.
//!
//! | mode        | encrypted | chain verified | host name verified |
//! |-------------|-----------|----------------|--------------------|
//! | disable     | no        | –              | –                  |
//! | prefer      | if offered| no             | no                 |
//! | require     | yes       | no             | no                 |
//! | verify-ca   | yes       | yes            | no                 |
//! | verify-full | yes       | yes            | yes                |
//!
//! Even when the certificate is not verified, the handshake signatures are, so the peer must hold
//! the key of the certificate it presents. Whether to fall back to plaintext under `prefer` is the
//! protocol layer's decision; this module only performs the handshake.

use std::io::BufReader;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{VerifierBuilderError, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{TlsMode, TlsSettings};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS is disabled for this pool")]
    Disabled,
    #[error("cannot read CA file {}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {} contains no PEM certificate", path.display())]
    NoCertificates { path: PathBuf },
    #[error("CA file {} contains an unusable certificate", path.display())]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the certificate verifier")]
    Verifier(#[source] VerifierBuilderError),
    #[error("cannot build the TLS client configuration")]
    Config(#[source] rustls::Error),
    #[error("{host:?} is not a valid DNS name or IP address for verify-full")]
    InvalidName { host: String },
    #[error("TLS handshake with {host} timed out after {timeout:?}")]
    Timeout { host: String, timeout: Duration },
    #[error("TLS handshake with {host} failed")]
    Handshake {
        host: String,
        #[source]
        source: std::io::Error,
    },
}

impl TlsError {
    /// The `result` label of `suture_backend_connects_total`: `timeout` or `tls_error`.
    pub fn metrics_label(&self) -> &'static str {
        match self {
            TlsError::Timeout { .. } => "timeout",
            _ => "tls_error",
        }
    }
}

/// A pool's TLS client, built once from its settings. Cloning is cheap.
#[derive(Clone)]
pub struct BackendTls {
    mode: TlsMode,
    /// `None` when the mode is `disable`.
    connector: Option<TlsConnector>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Reads `tls_ca_file` (or takes the webpki roots) and builds the client configuration.
    pub fn new(settings: &TlsSettings) -> Result<BackendTls, TlsError> {
        if settings.mode == TlsMode::Disable {
            return Ok(BackendTls {
                mode: settings.mode,
                connector: None,
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match settings.mode {
            TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }),
            TlsMode::VerifyCa => Arc::new(ChainOnly {
                inner: webpki_verifier(settings.ca_file.as_deref(), &provider)?,
            }),
            TlsMode::VerifyFull => webpki_verifier(settings.ca_file.as_deref(), &provider)?,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(BackendTls {
            mode: settings.mode,
            connector: Some(TlsConnector::from(Arc::new(config))),
        })
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    /// Runs the client handshake over `stream`, bounded by `timeout`. `host` is the configured
    /// server name (an IP literal, bracketed or not, is verified as an IP address). Not cancel
    /// safe: the stream is lost if the future is dropped.
    pub async fn handshake(
        &self,
        stream: TcpStream,
        host: &str,
        timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, TlsError> {
        let connector = self.connector.as_ref().ok_or(TlsError::Disabled)?;
        let name = server_name(host, self.mode)?;
        match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
            Err(_elapsed) => Err(TlsError::Timeout {
                host: host.to_owned(),
                timeout,
            }),
            Ok(Err(source)) => Err(TlsError::Handshake {
                host: host.to_owned(),
                source,
            }),
            Ok(Ok(stream)) => Ok(stream),
        }
    }
}

fn server_name(host: &str, mode: TlsMode) -> Result<ServerName<'static>, TlsError> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match ServerName::try_from(bare.to_owned()) {
        Ok(name) => Ok(name),
        // The name is only used for SNI then; an IP address name sends none.
        Err(_) if mode != TlsMode::VerifyFull => Ok(ServerName::from(std::net::IpAddr::from(
            Ipv4Addr::UNSPECIFIED,
        ))),
        Err(_) => Err(TlsError::InvalidName {
            host: host.to_owned(),
        }),
    }
}

fn webpki_verifier(
    ca_file: Option<&Path>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    let roots = match ca_file {
        Some(path) => load_roots(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .build()
        .map_err(TlsError::Verifier)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let read_error = |source| TlsError::ReadCa {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut BufReader::new(file)) {
        let cert = cert.map_err(read_error)?;
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificates {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// `prefer` / `require`: any certificate is accepted, but handshake signatures are still checked.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the full webpki verification, except that a name mismatch is forgiven. webpki
/// checks the chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::io::Write;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type TestResult = Result<(), Box<dyn std::error::Error>>;
    const T: Duration = Duration::from_secs(5);

    struct Ca {
        cert: Certificate,
        key: KeyPair,
    }

    impl Ca {
        fn new() -> Result<Ca, rcgen::Error> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "Suture test CA");
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            Ok(Ca { cert, key })
        }

        fn issue(&self, names: &[&str]) -> Result<(Certificate, KeyPair), rcgen::Error> {
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let key = KeyPair::generate()?;
            let cert = CertificateParams::new(names)?.signed_by(&key, &self.cert, &self.key)?;
            Ok((cert, key))
        }

        fn pem_file(&self) -> std::io::Result<tempfile::NamedTempFile> {
            let mut file = tempfile::NamedTempFile::new()?;
            file.write_all(self.cert.pem().as_bytes())?;
            Ok(file)
        }
    }

    /// A one-shot TLS server on 127.0.0.1 presenting `cert`; returns its port.
    async fn serve_once(
        cert: &Certificate,
        key: &KeyPair,
    ) -> Result<u16, Box<dyn std::error::Error>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        tokio::spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let _ = tls.write_all(b"ok").await;
                    let mut rest = Vec::new();
                    let _ = tls.read_to_end(&mut rest).await;
                }
            }
        });
        Ok(port)
    }

    async fn try_handshake(
        mode: TlsMode,
        ca_file: Option<&Path>,
        server: (&Certificate, &KeyPair),
        host: &str,
    ) -> Result<Result<(), TlsError>, Box<dyn std::error::Error>> {
        let tls = BackendTls::new(&TlsSettings {
            mode,
            ca_file: ca_file.map(Path::to_owned),
        })?;
        let port = serve_once(server.0, server.1).await?;
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        Ok(match tls.handshake(tcp, host, T).await {
            Ok(mut stream) => {
                let mut buf = [0u8; 2];
                stream.read_exact(&mut buf).await?;
                assert_eq!(&buf, b"ok");
                Ok(())
            }
            Err(err) => Err(err),
        })
    }

    #[tokio::test]
    async fn verify_full_checks_the_name() -> TestResult {
        let ca = Ca::new()?;
        let ca_file = ca.pem_file()?;
        let (cert, key) = ca.issue(&["db.test", "127.0.0.1"])?;
        let ca_path = Some(ca_file.path());
        try_handshake(TlsMode::VerifyFull, ca_path, (&cert, &key), "db.test").await??;
        try_handshake(TlsMode::VerifyFull, ca_path, (&cert, &key), "127.0.0.1").await??;
        let wrong =
            try_handshake(TlsMode::VerifyFull, ca_path, (&cert, &key), "other.test").await?;
        assert!(
            matches!(wrong, Err(TlsError::Handshake { .. })),
            "{wrong:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn verify_ca_ignores_the_name_but_not_the_issuer() -> TestResult {
        let ca = Ca::new()?;
        let ca_file = ca.pem_file()?;
        let (cert, key) = ca.issue(&["db.test"])?;
        let ca_path = Some(ca_file.path());
        try_handshake(TlsMode::VerifyCa, ca_path, (&cert, &key), "other.test").await??;
        try_handshake(TlsMode::VerifyCa, ca_path, (&cert, &key), "127.0.0.1").await??;

        let stranger = Ca::new()?;
        let (cert, key) = stranger.issue(&["db.test"])?;
        let unknown = try_handshake(TlsMode::VerifyCa, ca_path, (&cert, &key), "db.test").await?;
        assert!(
            matches!(unknown, Err(TlsError::Handshake { .. })),
            "{unknown:?}"
        );
        Ok(())
    }

    #[tokio::test]
    async fn require_accepts_a_self_signed_certificate() -> TestResult {
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["whatever".to_owned()])?;
        try_handshake(TlsMode::Require, None, (&cert, &key_pair), "db.test").await??;
        try_handshake(TlsMode::Prefer, None, (&cert, &key_pair), "[::1]").await??;
        // Not with verification against the webpki roots.
        let full = try_handshake(TlsMode::VerifyFull, None, (&cert, &key_pair), "whatever").await?;
        assert!(matches!(full, Err(TlsError::Handshake { .. })), "{full:?}");
        Ok(())
    }

    #[tokio::test]
    async fn handshake_is_bounded_by_the_timeout() -> TestResult {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let tls = BackendTls::new(&TlsSettings {
            mode: TlsMode::Require,
            ca_file: None,
        })?;
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        // The peer accepts the TCP connection (backlog) and never says anything.
        let err = tls
            .handshake(tcp, "db.test", Duration::from_millis(100))
            .await
            .err()
            .ok_or("handshake should time out")?;
        assert!(matches!(err, TlsError::Timeout { .. }), "{err:?}");
        assert_eq!(err.metrics_label(), "timeout");
        drop(listener);
        Ok(())
    }

    #[tokio::test]
    async fn disabled_mode_refuses_to_handshake() -> TestResult {
        let tls = BackendTls::new(&TlsSettings {
            mode: TlsMode::Disable,
            ca_file: None,
        })?;
        assert_eq!(tls.mode(), TlsMode::Disable);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let tcp = TcpStream::connect(listener.local_addr()?).await?;
        let err = tls.handshake(tcp, "db", T).await.err().ok_or("disabled")?;
        assert!(matches!(err, TlsError::Disabled));
        Ok(())
    }

    #[test]
    fn bad_ca_files_are_reported() -> TestResult {
        let missing = BackendTls::new(&TlsSettings {
            mode: TlsMode::VerifyCa,
            ca_file: Some("/nonexistent/ca.pem".into()),
        });
        assert!(
            matches!(missing, Err(TlsError::ReadCa { .. })),
            "{missing:?}"
        );
        let mut empty = tempfile::NamedTempFile::new()?;
        empty.write_all(b"not a certificate\n")?;
        let empty = BackendTls::new(&TlsSettings {
            mode: TlsMode::VerifyFull,
            ca_file: Some(empty.path().to_owned()),
        });
        assert!(
            matches!(empty, Err(TlsError::NoCertificates { .. })),
            "{empty:?}"
        );
        Ok(())
    }

    #[test]
    fn verify_full_needs_a_valid_name() {
        assert!(matches!(
            server_name("bad name", TlsMode::VerifyFull),
            Err(TlsError::InvalidName { .. })
        ));
        assert!(server_name("bad name", TlsMode::Require).is_ok());
        assert!(matches!(
            server_name("[::1]", TlsMode::VerifyFull),
            Ok(ServerName::IpAddress(_))
        ));
    }
}
