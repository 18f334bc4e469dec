//! Verifying a client's password on Suture's side of the login: the SCRAM-SHA-256 server exchange
//! (RFC 5802/7677, as PostgreSQL runs it) and the md5 check.
//!
//! The salted password and the stored/server keys of every configured user are derived once, when
//! the configuration is loaded (`UserSecrets::derive`), never per login: PBKDF2 with 4096 iterations
//! per login would cost more than the backend fork that pooling saves (DESIGN §10). The derivation
//! itself is `postgres-protocol`'s (the same SASLprep and verifier format PostgreSQL uses); this
//! module only runs the exchange. Its HMAC, XOR and comparison helpers serve Suture's SCRAM login
//! to backends too (`backend_scram`), whose key cache each user's secrets carry.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::postgres::backend_scram::KeyCache;

/// The SASL mechanism Suture offers to clients and answers backends with.
pub(crate) const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// What Suture keeps of one configured user's password, derived at load time.
pub(crate) struct UserSecrets {
    pub(crate) scram: ScramKeys,
    /// The plain password: needed for md5 client auth (the salt differs per login) and for
    /// logging in to the backend.
    pub(crate) password: String,
    /// The keys Suture proves this password to backend servers with (SCRAM), per salt and
    /// iteration count they asked for.
    pub(crate) backend_keys: KeyCache,
}

/// The SCRAM verifier of one password: what PostgreSQL stores in `pg_authid`.
#[derive(Clone)]
pub(crate) struct ScramKeys {
    pub(super) iterations: u32,
    pub(super) salt: Vec<u8>,
    pub(super) stored_key: [u8; 32],
    pub(super) server_key: [u8; 32],
}

/// Why a SCRAM exchange ended without success.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ScramError {
    /// The client's message did not follow the SCRAM grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The client asked for channel binding, which Suture does not offer.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// The proof did not verify: wrong password (or unknown user).
    #[error("password does not match")]
    WrongPassword,
}

impl UserSecrets {
    /// Derives the SCRAM keys from a password (PBKDF2, 4096 iterations: call once per user).
    pub(crate) fn derive(password: &str) -> UserSecrets {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let scram = ScramKeys::from_verifier(&verifier).unwrap_or_else(ScramKeys::random);
        UserSecrets {
            scram,
            password: password.to_owned(),
            backend_keys: KeyCache::new(password),
        }
    }
}

impl ScramKeys {
    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub(super) fn from_verifier(verifier: &str) -> Option<ScramKeys> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramKeys {
            iterations: iterations.parse().ok()?,
            salt: B64.decode(salt).ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// Keys no password matches, for a user Suture does not know. The salt is derived from the
    /// user name and `secret` (a random value of the process), as PostgreSQL derives its mock
    /// salt: the same user always gets the same salt, like a configured one, so two tries tell
    /// nothing about whether the user exists.
    pub(crate) fn mock(user: &str, secret: &[u8; 32]) -> ScramKeys {
        let mut keys = ScramKeys::random();
        let mut message = b"suture mock SCRAM salt\0".to_vec();
        message.extend_from_slice(user.as_bytes());
        keys.salt = hmac(secret, &message)[..16].to_vec();
        keys
    }

    /// Keys no password matches (random salt and keys).
    pub(crate) fn random() -> ScramKeys {
        let mut rng = rand::rng();
        let mut salt = vec![0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut stored_key = [0u8; 32];
        let mut server_key = [0u8; 32];
        rng.fill_bytes(&mut stored_key);
        rng.fill_bytes(&mut server_key);
        ScramKeys {
            iterations: 4096,
            salt,
            stored_key,
            server_key,
        }
    }
}

/// A SCRAM exchange after the server-first message was produced.
pub(crate) struct ScramExchange {
    keys: ScramKeys,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramExchange {
    /// Takes the client-first message, returns the exchange and the server-first message to send.
    pub(crate) fn start(
        keys: ScramKeys,
        client_first: &[u8],
    ) -> Result<(ScramExchange, String), ScramError> {
        let text =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut parts = text.splitn(3, ',');
        let flag = parts
            .next()
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        let authzid = parts
            .next()
            .ok_or(ScramError::Malformed("missing gs2 header"))?;
        let bare = parts
            .next()
            .ok_or(ScramError::Malformed("missing client-first-message-bare"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad gs2 flag")),
        }
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity is not supported",
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(ScramError::Malformed("missing client nonce"))?;
        let mut server_nonce = [0u8; 18];
        rand::rng().fill_bytes(&mut server_nonce);
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&keys.salt),
            keys.iterations
        );
        let exchange = ScramExchange {
            keys,
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((exchange, server_first))
    }

    /// Verifies the client-final message; on success returns the server-final message.
    pub(crate) fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("missing proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("missing channel binding"))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("missing nonce"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("channel binding does not match"));
        }
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let proof: [u8; 32] = proof
            .try_into()
            .map_err(|_| ScramError::Malformed("proof has the wrong length"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.keys.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&computed, &self.keys.stored_key) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&self.keys.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// HMAC-SHA-256 of `message` under `key` (both sides of SCRAM use it).
pub(super) fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0u8; 32],
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Byte-wise XOR, as SCRAM combines a key and a signature into a proof and back.
pub(super) fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

/// Equality that takes as long wherever the first difference is.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh random salt for one md5 login.
pub(crate) fn md5_salt() -> [u8; 4] {
    let mut salt = [0u8; 4];
    rand::rng().fill_bytes(&mut salt);
    salt
}

/// Checks an md5 password message (`"md5" + md5(md5(password + user) + salt)`).
pub(crate) fn md5_matches(user: &str, password: &str, salt: [u8; 4], response: &[u8]) -> bool {
    let expected =
        postgres_protocol::authentication::md5_hash(user.as_bytes(), password.as_bytes(), salt);
    constant_time_eq(expected.as_bytes(), response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs the client side with postgres-protocol's implementation against ours.
    fn run(client_password: &str, secrets: &UserSecrets) -> Result<(), ScramError> {
        let mut client =
            ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (exchange, server_first) =
            ScramExchange::start(secrets.scram.clone(), client.message())?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected"))?;
        let server_final = exchange.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::Malformed("client rejected final"))
    }

    #[test]
    fn right_password_verifies_both_ways() {
        let secrets = UserSecrets::derive("s3cret pässword");
        assert_eq!(run("s3cret pässword", &secrets), Ok(()));
    }

    #[test]
    fn wrong_password_is_refused() {
        let secrets = UserSecrets::derive("right");
        assert_eq!(run("wrong", &secrets), Err(ScramError::WrongPassword));
    }

    #[test]
    fn random_keys_refuse_everything() {
        let secrets = UserSecrets {
            scram: ScramKeys::random(),
            password: String::new(),
            backend_keys: KeyCache::new(""),
        };
        assert_eq!(run("", &secrets), Err(ScramError::WrongPassword));
    }

    #[test]
    fn channel_binding_request_is_refused() {
        let keys = ScramKeys::random();
        let result = ScramExchange::start(keys, b"p=tls-server-end-point,,n=,r=abc");
        assert!(matches!(result, Err(ScramError::ChannelBinding)));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for input in [
            &b""[..],
            b",",
            b"n,,",
            b"n,,n=,r=",
            b"x,,r=a",
            b"\xff\xfe",
            b"n,a=b,n=,r=x",
        ] {
            assert!(
                ScramExchange::start(ScramKeys::random(), input).is_err(),
                "{input:?}"
            );
        }
        let (exchange, _) =
            ScramExchange::start(ScramKeys::random(), b"n,,n=,r=abc").expect("valid");
        assert!(exchange.finish(b"c=biws,r=abc,p=!!!").is_err());
    }

    #[test]
    fn md5_check_matches_libpq_formula() {
        let salt = [1, 2, 3, 4];
        let response = postgres_protocol::authentication::md5_hash(b"app", b"pw", salt);
        assert!(md5_matches("app", "pw", salt, response.as_bytes()));
        assert!(!md5_matches("app", "other", salt, response.as_bytes()));
    }

    #[test]
    fn mock_salts_are_stable_per_user_and_secret() {
        let secret = [7u8; 32];
        let a = ScramKeys::mock("nobody", &secret);
        assert_eq!(a.salt, ScramKeys::mock("nobody", &secret).salt);
        assert_ne!(a.salt, ScramKeys::mock("somebody", &secret).salt);
        assert_ne!(a.salt, ScramKeys::mock("nobody", &[8u8; 32]).salt);
        assert_eq!((a.salt.len(), a.iterations), (16, 4096));
    }
}
