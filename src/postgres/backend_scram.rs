//! Suture's side of SCRAM-SHA-256 towards a backend server (RFC 5802 and 7677, as PostgreSQL
//! runs it, without channel binding: the gs2 header is `n,,`): the client-first message, reading
//! the server-first message, the proof in the client-final message and the check of the
//! server's signature; and the keys derived from a configured password, cached per salt and
//! iteration count ([`KeyCache`]).
//!
//! Deriving the keys (PBKDF2 with the server's iteration count, 4096 by default: over a
//! millisecond of CPU) is the dear step of a login. Its result depends only on the password, the
//! salt and the iteration count, and a server keeps a role's salt until its password is set
//! again, so each configured user has a cache built with its password when the configuration is
//! loaded (a reload builds new ones): a login with a salt seen before derives nothing.
//!
//! Every byte from the server is checked before it is used: bad input is an error, never a panic.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::peer_text;
use crate::postgres::client_auth::{constant_time_eq, hmac, xor};

/// The gs2 header: no channel binding (`n`), no authorization identity.
const GS2_HEADER: &str = "n,,";
/// [`GS2_HEADER`] in base64, as the client-final message repeats it (`c=`).
const GS2_HEADER_B64: &str = "biws";
/// Random bytes in Suture's nonce (24 characters of base64).
const NONCE_BYTES: usize = 18;
/// The most iterations a server may ask for: more would let a hostile server burn Suture's CPU
/// (PostgreSQL's default is 4096; one million is about 0.4 s).
pub(crate) const MAX_ITERATIONS: u32 = 1_000_000;
/// Salts and iteration counts remembered per password. One server keeps one salt per role;
/// servers that do not share `pg_authid` each have their own.
const CACHE_SLOTS: usize = 4;

/// Why a SCRAM exchange with a backend server failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScramError {
    /// The server's message did not follow the SCRAM grammar.
    #[error("malformed SCRAM message from the server: {0}")]
    Malformed(&'static str),
    /// The server's nonce does not start with Suture's, or adds nothing to it.
    #[error("the server's SCRAM nonce does not extend Suture's")]
    Nonce,
    /// The iteration count is 0 or above [`MAX_ITERATIONS`].
    #[error("the server asked for {0} SCRAM iterations (allowed: 1 to {max})", max = MAX_ITERATIONS)]
    Iterations(String),
    /// The server ended the exchange with `e=`.
    #[error("the server ended the SCRAM exchange: {0}")]
    Server(String),
    /// The server's signature does not verify: it does not know the password's keys.
    #[error("the server's SCRAM signature does not match")]
    Signature,
    /// The derivation on the blocking pool did not finish (the runtime is shutting down).
    #[error("deriving the SCRAM keys failed: {0}")]
    Derivation(#[source] tokio::task::JoinError),
}

/// What one password proves itself with for one salt and iteration count.
#[derive(Clone)]
pub(crate) struct DerivedKeys {
    client_key: [u8; 32],
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl DerivedKeys {
    /// SaltedPassword = Hi(password, salt, iterations), then ClientKey, StoredKey and ServerKey
    /// (RFC 5802 §3). CPU-bound: not on the event loop.
    fn derive(password: &[u8], salt: &[u8], iterations: u32) -> DerivedKeys {
        let salted = hi(password, salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        DerivedKeys {
            client_key,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }
}

/// PBKDF2-HMAC-SHA-256 with one output block, which is SCRAM's Hi().
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here. The keyed state is
    // cloned for every round rather than keyed again: half the hashing.
    let Ok(keyed) = Hmac::<Sha256>::new_from_slice(password) else {
        return [0u8; 32];
    };
    let mut mac = keyed.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut round: [u8; 32] = mac.finalize().into_bytes().into();
    let mut result = round;
    for _ in 1..iterations {
        let mut mac = keyed.clone();
        mac.update(&round);
        round = mac.finalize().into_bytes().into();
        result = xor(&result, &round);
    }
    result
}

/// The password as SCRAM hashes it: SASLprep (RFC 4013), or the password as it is when SASLprep
/// refuses it, as PostgreSQL does (its passwords need not be valid SASLprep strings).
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(prepared) => prepared.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// The derived keys of one configured password, per salt and iteration count the servers
/// asked for; at most [`CACHE_SLOTS`], the oldest forgotten first. Built with the configuration,
/// so a new password never meets keys of the old one.
pub(crate) struct KeyCache {
    /// The normalized password.
    password: Arc<[u8]>,
    slots: Mutex<VecDeque<Slot>>,
    /// How many derivations ran, for tests.
    #[cfg(test)]
    derivations: std::sync::atomic::AtomicUsize,
}

struct Slot {
    salt: Vec<u8>,
    iterations: u32,
    keys: Arc<OnceCell<DerivedKeys>>,
}

impl KeyCache {
    pub(crate) fn new(password: &str) -> KeyCache {
        KeyCache {
            password: normalize(password).into(),
            slots: Mutex::new(VecDeque::with_capacity(CACHE_SLOTS)),
            #[cfg(test)]
            derivations: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The keys for `salt` and `iterations`: at once, without the blocking pool, when they were
    /// derived before; else derived on the blocking pool, once however many logins wait for them.
    /// Cancel safe: a login that gives up leaves the derivation to the next one that asks.
    pub(crate) async fn keys(
        &self,
        salt: &[u8],
        iterations: u32,
    ) -> Result<DerivedKeys, ScramError> {
        let slot = self.slot(salt, iterations);
        if let Some(keys) = slot.get() {
            return Ok(keys.clone());
        }
        let keys = slot
            .get_or_try_init(|| async {
                #[cfg(test)]
                self.derivations
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let password = Arc::clone(&self.password);
                let salt = salt.to_vec();
                tokio::task::spawn_blocking(move || {
                    DerivedKeys::derive(&password, &salt, iterations)
                })
                .await
                .map_err(ScramError::Derivation)
            })
            .await?;
        Ok(keys.clone())
    }

    /// The slot for `salt` and `iterations`, made (forgetting the oldest when full) if new.
    fn slot(&self, salt: &[u8], iterations: u32) -> Arc<OnceCell<DerivedKeys>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots
            .iter()
            .find(|s| s.iterations == iterations && s.salt == salt)
        {
            return Arc::clone(&slot.keys);
        }
        if slots.len() >= CACHE_SLOTS {
            slots.pop_front();
        }
        let keys = Arc::new(OnceCell::new());
        slots.push_back(Slot {
            salt: salt.to_vec(),
            iterations,
            keys: Arc::clone(&keys),
        });
        keys
    }
}

/// An exchange whose client-first message is made, waiting for the server-first message.
pub(crate) struct ScramStart {
    client_first_bare: String,
    nonce: String,
}

impl ScramStart {
    /// A new exchange with a random nonce. The user name in the message stays empty, as libpq
    /// sends it: PostgreSQL takes the user from the startup message.
    pub(crate) fn new() -> ScramStart {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        ScramStart::with("", B64.encode(nonce))
    }

    /// `user` must be escaped as SCRAM wants it (`=2C` for `,`, `=3D` for `=`).
    fn with(user: &str, nonce: String) -> ScramStart {
        ScramStart {
            client_first_bare: format!("n={user},r={nonce}"),
            nonce,
        }
    }

    /// The client-first message, for SASLInitialResponse.
    pub(crate) fn message(&self) -> String {
        format!("{GS2_HEADER}{}", self.client_first_bare)
    }

    /// Reads the server-first message: `r=<nonce>,s=<salt>,i=<iterations>[,extensions]`.
    pub(crate) fn parse_server_first(self, message: &[u8]) -> Result<ServerFirst, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut attrs = text.split(',');
        let mut attr = |name: &str, what: &'static str| {
            attrs
                .next()
                .and_then(|a| a.strip_prefix(name))
                .ok_or(ScramError::Malformed(what))
        };
        let nonce = attr("r=", "missing nonce")?;
        let salt = attr("s=", "missing salt")?;
        let iterations = attr("i=", "missing iteration count")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        if !nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ScramError::Malformed("nonce is not printable ASCII"));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| ScramError::Malformed("salt is not base64"))?;
        if salt.is_empty() {
            return Err(ScramError::Malformed("empty salt"));
        }
        Ok(ServerFirst {
            auth_message_start: format!("{},{text}", self.client_first_bare),
            nonce: nonce.to_owned(),
            salt,
            iterations: parse_iterations(iterations)?,
        })
    }
}

/// An iteration count: decimal digits, 1 to [`MAX_ITERATIONS`].
fn parse_iterations(text: &str) -> Result<u32, ScramError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScramError::Malformed("iteration count is not a number"));
    }
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_ITERATIONS).contains(&n) => Ok(n),
        _ => Err(ScramError::Iterations(
            peer_text::bounded(text).into_owned(),
        )),
    }
}

/// The server-first message, read: what the keys are derived with.
pub(crate) struct ServerFirst {
    /// `client-first-message-bare,server-first-message`: the AuthMessage up to client-final.
    auth_message_start: String,
    nonce: String,
    salt: Vec<u8>,
    iterations: u32,
}

impl ServerFirst {
    pub(crate) fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub(crate) fn iterations(&self) -> u32 {
        self.iterations
    }

    /// The client-final message with the proof made from `keys`, and the signature the
    /// server-final message must carry.
    pub(crate) fn client_final(self, keys: &DerivedKeys) -> (String, ServerSignature) {
        let without_proof = format!("c={GS2_HEADER_B64},r={}", self.nonce);
        let auth_message = format!("{},{without_proof}", self.auth_message_start);
        let client_signature = hmac(&keys.stored_key, auth_message.as_bytes());
        let proof = xor(&keys.client_key, &client_signature);
        let message = format!("{without_proof},p={}", B64.encode(proof));
        let expected = hmac(&keys.server_key, auth_message.as_bytes());
        (message, ServerSignature(expected))
    }
}

/// The signature only a server that holds the password's ServerKey can make.
pub(crate) struct ServerSignature([u8; 32]);

impl ServerSignature {
    /// Checks the server-final message: `v=<signature>` (or `e=<error>`)`[,extensions]`.
    pub(crate) fn check(&self, message: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let first = text.split_once(',').map_or(text, |(first, _)| first);
        if let Some(error) = first.strip_prefix("e=") {
            return Err(ScramError::Server(peer_text::bounded(error).into_owned()));
        }
        let signature = first
            .strip_prefix("v=")
            .ok_or(ScramError::Malformed("missing server signature"))?;
        let signature = B64
            .decode(signature)
            .map_err(|_| ScramError::Malformed("server signature is not base64"))?;
        if constant_time_eq(&signature, &self.0) {
            Ok(())
        } else {
            Err(ScramError::Signature)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::Ordering;

    use futures_util::FutureExt as _;

    use super::*;
    use crate::postgres::client_auth::{ScramExchange, ScramKeys, UserSecrets};

    /// RFC 7677 §3: user "user", password "pencil".
    const RFC_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_start() -> ScramStart {
        ScramStart::with("user", RFC_NONCE.to_owned())
    }

    fn derivations(cache: &KeyCache) -> usize {
        cache.derivations.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn rfc_7677_exchange() {
        let start = rfc_start();
        assert_eq!(start.message(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = start
            .parse_server_first(RFC_SERVER_FIRST.as_bytes())
            .unwrap();
        assert_eq!(server_first.iterations(), 4096);
        let cache = KeyCache::new("pencil");
        let keys = cache
            .keys(server_first.salt(), server_first.iterations())
            .await
            .unwrap();
        let (client_final, signature) = server_first.client_final(&keys);
        assert_eq!(client_final, RFC_CLIENT_FINAL);
        signature.check(RFC_SERVER_FINAL.as_bytes()).unwrap();
        assert!(matches!(
            signature.check(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::Signature)
        ));
    }

    #[test]
    fn keys_match_postgres_protocol_verifiers() {
        // Plain, non-ASCII, one SASLprep maps (soft hyphen: nothing, no-break space: space),
        // and one SASLprep refuses (a control character: the raw bytes are used).
        for password in [
            "pencil",
            "s3cret pässword",
            "I\u{ad}X\u{a0}y",
            "bell\u{7}",
            "",
        ] {
            let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
            let expected = ScramKeys::from_verifier(&verifier).unwrap();
            let keys =
                DerivedKeys::derive(&normalize(password), &expected.salt, expected.iterations);
            assert_eq!(keys.stored_key, expected.stored_key, "{password:?}");
            assert_eq!(keys.server_key, expected.server_key, "{password:?}");
        }
        assert_eq!(normalize("I\u{ad}X\u{a0}y"), b"IX y");
        assert_eq!(normalize("bell\u{7}"), b"bell\x07");
    }

    /// Runs a whole exchange against Suture's own server side (whose keys postgres-protocol
    /// derives): the proof verifies, and so does the server's signature.
    async fn against_server_side(configured: &str, typed: &str) -> Result<(), String> {
        let secrets = UserSecrets::derive(configured);
        let start = ScramStart::new();
        let (exchange, server_first) =
            ScramExchange::start(secrets.scram.clone(), start.message().as_bytes())
                .map_err(|e| e.to_string())?;
        let server_first = start.parse_server_first(server_first.as_bytes()).unwrap();
        let cache = KeyCache::new(typed);
        let keys = cache
            .keys(server_first.salt(), server_first.iterations())
            .await
            .unwrap();
        let (client_final, signature) = server_first.client_final(&keys);
        let server_final = exchange
            .finish(client_final.as_bytes())
            .map_err(|e| e.to_string())?;
        signature
            .check(server_final.as_bytes())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn suture_s_server_side_accepts_the_proof() {
        assert_eq!(
            against_server_side("Ünïcode pw", "Ünïcode pw").await,
            Ok(())
        );
        assert_eq!(
            against_server_side("right", "wrong").await,
            Err("password does not match".to_owned())
        );
    }

    fn server_first_error(message: &[u8]) -> ScramError {
        match rfc_start().parse_server_first(message) {
            Ok(_) => panic!("{:?} was accepted", String::from_utf8_lossy(message)),
            Err(err) => err,
        }
    }

    #[test]
    fn malformed_server_first_is_an_error() {
        let r = "r=rOprNGfwEbeRWgbNEkqOxyz";
        for message in [
            String::new(),
            ",,,".to_owned(),
            r.to_owned(),
            format!("{r},s=W22ZaJ0SNY7soEsUEjb6gQ=="),
            format!("{r},i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ=="),
            format!("s=W22ZaJ0SNY7soEsUEjb6gQ==,{r},i=4096"),
            format!("m=ext,{r},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
            format!("{r},s=!!not base64!!,i=4096"),
            format!("{r},s=,i=4096"),
            format!("{r},s=W22ZaJ0SNY7soEsUEjb6gQ==,i="),
            format!("{r},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1"),
            format!("{r},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=+4096"),
            format!("{r},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096x"),
            "r=rOprNGfwEbeRWgbNEkqO\u{7f}x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".to_owned(),
        ] {
            assert!(
                matches!(
                    server_first_error(message.as_bytes()),
                    ScramError::Malformed(_)
                ),
                "{message:?}"
            );
        }
        assert!(matches!(
            server_first_error(b"r=rOprNGfwEbeRWgbNEkqO\xff,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1"),
            ScramError::Malformed(_)
        ));
    }

    #[test]
    fn server_nonce_must_extend_ours() {
        for nonce in [
            "rOprNGfwEbeRWgbNEkqO",
            "rOprNGfwEbeRWgbNEkq",
            "XOprNGfwEbeRWgbNEkqOabc",
            "",
        ] {
            let message = format!("r={nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
            assert!(
                matches!(server_first_error(message.as_bytes()), ScramError::Nonce),
                "{nonce:?}"
            );
        }
    }

    #[test]
    fn iteration_count_is_bounded() {
        for bad in ["0", "1000001", "4294967296", "99999999999999999999999999"] {
            let message = format!("r={RFC_NONCE}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={bad}");
            assert!(
                matches!(
                    server_first_error(message.as_bytes()),
                    ScramError::Iterations(_)
                ),
                "{bad}"
            );
        }
        for good in [1, 4096, MAX_ITERATIONS] {
            let message = format!("r={RFC_NONCE}abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={good},x=ext");
            let first = rfc_start().parse_server_first(message.as_bytes()).unwrap();
            assert_eq!(first.iterations(), good);
        }
    }

    #[test]
    fn bad_server_final_is_an_error() {
        let first = rfc_start()
            .parse_server_first(RFC_SERVER_FIRST.as_bytes())
            .unwrap();
        let keys = DerivedKeys::derive(&normalize("pencil"), first.salt(), first.iterations());
        let (_, signature) = first.client_final(&keys);
        let wrong = format!("v={}", B64.encode([0u8; 32]));
        let short = format!("v={}", B64.encode([0u8; 31]));
        for message in [wrong.as_bytes(), short.as_bytes()] {
            assert!(matches!(
                signature.check(message),
                Err(ScramError::Signature)
            ));
        }
        for message in [&b""[..], b"v=", b"v=!!!", b"x=abc", b"\xff", b",v=abc"] {
            let result = signature.check(message);
            assert!(
                matches!(
                    result,
                    Err(ScramError::Malformed(_) | ScramError::Signature)
                ),
                "{message:?}: {result:?}"
            );
        }
        assert!(matches!(
            signature.check(b"e=invalid-proof"),
            Err(ScramError::Server(e)) if e == "invalid-proof"
        ));
        let mut with_extension = RFC_SERVER_FINAL.to_owned();
        with_extension.push_str(",x=ext");
        signature.check(with_extension.as_bytes()).unwrap();
    }

    #[tokio::test]
    async fn a_second_login_with_the_same_salt_is_a_hit() {
        let cache = KeyCache::new("pencil");
        let first = cache.keys(b"salt", 64).await.unwrap();
        assert_eq!(derivations(&cache), 1);
        // A hit is ready at the first poll: it never waits for the blocking pool.
        let again = cache.keys(b"salt", 64).now_or_never().unwrap().unwrap();
        assert_eq!(derivations(&cache), 1);
        assert_eq!(again.client_key, first.client_key);
        assert_eq!(again.server_key, first.server_key);
        // Another salt or iteration count is another entry.
        let other_salt = cache.keys(b"pepper", 64).await.unwrap();
        cache.keys(b"salt", 65).await.unwrap();
        assert_eq!(derivations(&cache), 3);
        assert_ne!(other_salt.client_key, first.client_key);
    }

    #[tokio::test]
    async fn concurrent_misses_derive_once() {
        let cache = KeyCache::new("pencil");
        let logins = (0..8).map(|_| cache.keys(b"salt", 256));
        for keys in futures_util::future::join_all(logins).await {
            keys.unwrap();
        }
        assert_eq!(derivations(&cache), 1);
    }

    #[tokio::test]
    async fn the_cache_keeps_a_few_salts_and_forgets_the_oldest() {
        let cache = KeyCache::new("pencil");
        for salt in 0..=CACHE_SLOTS as u8 {
            cache.keys(&[salt], 8).await.unwrap();
        }
        assert_eq!(derivations(&cache), CACHE_SLOTS + 1);
        assert_eq!(cache.slots.lock().unwrap().len(), CACHE_SLOTS);
        // The newest are hits; the first was forgotten.
        cache.keys(&[CACHE_SLOTS as u8], 8).await.unwrap();
        assert_eq!(derivations(&cache), CACHE_SLOTS + 1);
        cache.keys(&[0], 8).await.unwrap();
        assert_eq!(derivations(&cache), CACHE_SLOTS + 2);
    }

    #[tokio::test]
    async fn another_password_has_other_keys() {
        let a = KeyCache::new("old").keys(b"salt", 16).await.unwrap();
        let b = KeyCache::new("new").keys(b"salt", 16).await.unwrap();
        assert_ne!(a.client_key, b.client_key);
        assert_ne!(a.server_key, b.server_key);
    }
}
