//! Verifying a MySQL client's password, with Suture as the server: the scrambles Suture hands
//! out, the two plugins it verifies (`mysql_native_password`, and `caching_sha2_password`'s fast
//! path: Suture knows every password, so its "cache" is never empty and it never asks for full
//! authentication), the AuthSwitchRequest when the client picked another plugin, and the
//! rule that a wrong password and an unknown user look and cost the same.
//!
//! Used by the login and by COM_CHANGE_USER (`client_login`); the OK that ends a successful
//! exchange is the caller's to send.

use bytes::BytesMut;
use mysql_common::auth::plugins::caching_sha2_password::scramble_sha256;
use mysql_common::auth::plugins::mysql_native_password::scramble_native;
use rand::Rng;
use suture_protocol::mysql::{
    caching_sha2, capability, encode_auth_more_data, encode_auth_switch_request,
    CACHING_SHA2_PASSWORD, MYSQL_NATIVE_PASSWORD,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::ClientAuthMethod;
use crate::mysql::client_login::{read_login_packet, write_packets, LoginSettings};
use crate::mysql::errors::ClientError;
use crate::peer_text;
use crate::wire::WireError;

/// Bytes of a scramble (the auth plugin data of the greeting and of an AuthSwitchRequest).
pub(crate) const SCRAMBLE_LEN: usize = 20;

/// What an unknown user's response is checked against, so that it costs what a known user's
/// does; never accepted.
const NO_SUCH_USER: &str = "suture: no such user";

/// A nonce Suture sent a client: 20 printable ASCII bytes, never NUL nor `$`, as servers
/// generate them (some clients treat the plugin data as a C string).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scramble([u8; SCRAMBLE_LEN]);

impl Scramble {
    /// A fresh random scramble.
    pub(crate) fn fresh() -> Scramble {
        let mut rng = rand::rng();
        let mut bytes = [0u8; SCRAMBLE_LEN];
        for b in &mut bytes {
            // 93 values: '!'..='~' without '$'.
            let v = rng.random_range(b'!'..=b'}');
            *b = if v >= b'$' { v + 1 } else { v };
        }
        Scramble(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; SCRAMBLE_LEN] {
        &self.0
    }

    /// The plugin data of an AuthSwitchRequest: the scramble and a NUL.
    fn switch_data(&self) -> [u8; SCRAMBLE_LEN + 1] {
        let mut data = [0u8; SCRAMBLE_LEN + 1];
        data[..SCRAMBLE_LEN].copy_from_slice(&self.0);
        data
    }
}

/// The auth plugins Suture verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plugin {
    Native,
    CachingSha2,
}

impl Plugin {
    /// The plugin a pool offers in its greeting and switches clients to.
    pub(crate) fn offered(method: ClientAuthMethod) -> Plugin {
        match method {
            ClientAuthMethod::CachingSha2Password => Plugin::CachingSha2,
            // Trust (and, if the configuration let one through, a PostgreSQL method).
            _ => Plugin::Native,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Plugin::Native => MYSQL_NATIVE_PASSWORD,
            Plugin::CachingSha2 => CACHING_SHA2_PASSWORD,
        }
    }

    fn from_name(name: &str) -> Option<Plugin> {
        match name {
            MYSQL_NATIVE_PASSWORD => Some(Plugin::Native),
            CACHING_SHA2_PASSWORD => Some(Plugin::CachingSha2),
            _ => None,
        }
    }

    /// The plugin that computed a client's auth response: the one it named; without
    /// CLIENT_PLUGIN_AUTH the 4.1 scramble (native); named empty, the one `offered`.
    /// `None`: a plugin Suture does not verify, so the client is switched.
    pub(crate) fn picked(name: Option<&str>, caps: u64, offered: Plugin) -> Option<Plugin> {
        if caps & capability::CLIENT_PLUGIN_AUTH == 0 {
            return Some(Plugin::Native);
        }
        match name {
            None | Some("") => Some(offered),
            Some(name) => Plugin::from_name(name),
        }
    }

    /// The response a client that knows `password` computes for `scramble` (empty for an
    /// empty password).
    fn expected(self, scramble: &Scramble, password: &str) -> Vec<u8> {
        let password = password.as_bytes();
        match self {
            Plugin::Native => scramble_native(scramble.as_bytes(), password).map(|s| s.to_vec()),
            Plugin::CachingSha2 => {
                scramble_sha256(scramble.as_bytes(), password).map(|s| s.to_vec())
            }
        }
        .unwrap_or_default()
    }
}

/// The client's first try: who it says it is and what it answered to `scramble`.
pub(crate) struct Attempt<'a> {
    /// As sent (looked up exactly; cut with `peer_text` for errors).
    pub(crate) user: &'a str,
    /// What the client named (`None` when it named nothing).
    pub(crate) plugin: Option<&'a str>,
    /// The client's capabilities (for a missing plugin name).
    pub(crate) capabilities: u64,
    pub(crate) response: &'a [u8],
    /// The scramble the response answers.
    pub(crate) scramble: Scramble,
    /// The sequence id of the next packet Suture sends.
    pub(crate) seq: u8,
    /// How the client's address shows in errors (`localhost` or the IP).
    pub(crate) host: &'a str,
}

/// A verified client.
pub(crate) struct Verified {
    pub(crate) plugin: &'static str,
    /// The last scramble sent to the client (a later COM_CHANGE_USER answers it).
    pub(crate) scramble: Scramble,
    /// The sequence id of the OK the caller sends.
    pub(crate) next_seq: u8,
}

/// Runs the authentication exchange after the client's first response: an AuthSwitchRequest
/// with a fresh scramble when the client picked a plugin Suture does not verify, the check of
/// the password, and for caching_sha2_password AuthMoreData "fast auth success". Sends no OK.
pub(crate) async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    settings: &LoginSettings<'_>,
    stream: &mut S,
    buf: &mut BytesMut,
    attempt: Attempt<'_>,
) -> Result<Verified, ClientError> {
    let offered = Plugin::offered(settings.client_auth);
    let mut seq = attempt.seq;
    let mut scramble = attempt.scramble;
    let switched;
    let (plugin, response) = match Plugin::picked(attempt.plugin, attempt.capabilities, offered) {
        Some(plugin) => (plugin, attempt.response),
        None => {
            scramble = Scramble::fresh();
            let mut out = BytesMut::new();
            encode_auth_switch_request(offered.name(), &scramble.switch_data(), seq, &mut out)
                .map_err(WireError::from)?;
            write_packets(stream, &out).await?;
            let packet =
                read_login_packet(stream, buf, settings.login_limit(), seq.wrapping_add(1)).await?;
            seq = packet.last_seq.wrapping_add(1);
            switched = packet.payload;
            (offered, &switched[..])
        }
    };
    let user = peer_text::name(attempt.user).to_owned();
    let host = attempt.host.to_owned();
    let response = match (plugin, response) {
        // caching_sha2 clients send one NUL for an empty password.
        (Plugin::CachingSha2, [0]) => &[][..],
        (Plugin::CachingSha2, r) if wants_full_auth(r) => {
            return Err(ClientError::FullAuthUnsupported { user, host, seq });
        }
        (_, r) => r,
    };
    let password = settings
        .users
        .get(attempt.user)
        .map(|u| u.password.expose());
    let matches = constant_time_eq(
        &plugin.expected(&scramble, password.unwrap_or(NO_SUCH_USER)),
        response,
    );
    let trusted = settings.client_auth == ClientAuthMethod::Trust;
    if password.is_none() || !(matches || trusted) {
        return Err(ClientError::AuthFailed {
            user,
            host,
            password: !response.is_empty(),
            seq,
        });
    }
    if plugin == Plugin::CachingSha2 && !response.is_empty() {
        let mut out = BytesMut::new();
        encode_auth_more_data(&[caching_sha2::FAST_AUTH_SUCCESS], seq, &mut out)
            .map_err(WireError::from)?;
        write_packets(stream, &out).await?;
        seq = seq.wrapping_add(1);
    }
    Ok(Verified {
        plugin: plugin.name(),
        scramble,
        next_seq: seq,
    })
}

/// Whether a caching_sha2_password response asks for the full path: the RSA public key
/// request, or a NUL-terminated cleartext password (what a client sends over TLS or a socket).
/// A 32-byte scramble is never taken for one, whatever its last byte.
fn wants_full_auth(response: &[u8]) -> bool {
    response == [caching_sha2::REQUEST_PUBLIC_KEY]
        || (response.len() != 32 && response.last() == Some(&0))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrambles_are_printable_without_nul_or_dollar() {
        let a = Scramble::fresh();
        for _ in 0..200 {
            let s = Scramble::fresh();
            assert!(s
                .as_bytes()
                .iter()
                .all(|b| b.is_ascii_graphic() && *b != b'$'));
        }
        assert_ne!(a, Scramble::fresh());
        assert_eq!(a.switch_data()[SCRAMBLE_LEN], 0);
    }

    #[test]
    fn the_plugin_that_computed_a_response() {
        use capability::CLIENT_PLUGIN_AUTH as P;
        let sha = Plugin::CachingSha2;
        assert_eq!(Plugin::picked(Some("dialog"), 0, sha), Some(Plugin::Native));
        assert_eq!(Plugin::picked(None, P, sha), Some(sha));
        assert_eq!(
            Plugin::picked(Some(""), P, Plugin::Native),
            Some(Plugin::Native)
        );
        assert_eq!(
            Plugin::picked(Some(CACHING_SHA2_PASSWORD), P, Plugin::Native),
            Some(sha)
        );
        for other in [
            "sha256_password",
            "mysql_clear_password",
            "client_ed25519",
            "dialog",
        ] {
            assert_eq!(Plugin::picked(Some(other), P, sha), None, "{other}");
        }
        assert_eq!(Plugin::offered(ClientAuthMethod::Trust), Plugin::Native);
        assert_eq!(Plugin::offered(ClientAuthMethod::CachingSha2Password), sha);
    }

    #[test]
    fn expected_responses_match_mysql_common() {
        let s = Scramble(*b"abcdefghijklmnopqrst");
        let native = Plugin::Native.expected(&s, "pw");
        assert_eq!(native.len(), 20);
        assert_eq!(
            Some(native.as_slice()),
            scramble_native(b"abcdefghijklmnopqrst", b"pw")
                .as_ref()
                .map(|a| &a[..])
        );
        assert_eq!(Plugin::CachingSha2.expected(&s, "pw").len(), 32);
        assert!(Plugin::Native.expected(&s, "").is_empty());
    }

    #[test]
    fn full_auth_requests_are_recognised() {
        assert!(wants_full_auth(&[caching_sha2::REQUEST_PUBLIC_KEY]));
        assert!(wants_full_auth(b"secret\0"));
        let mut scramble = [7u8; 32];
        scramble[31] = 0;
        assert!(!wants_full_auth(&scramble));
        assert!(!wants_full_auth(b""));
    }
}
