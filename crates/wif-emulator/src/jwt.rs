//! Compact JWS parsing, signing and verification on `ring`: the emulator's own access tokens
//! (RS256) and the client assertions it receives (RS256 or ES256).

use std::path::Path;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    rand::SystemRandom,
    signature::{self, RsaKeyPair},
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{Error, Result, state::write_atomic};

const SIGNING_KEY_FILE: &str = "signing-key.pem";

/// base64url without padding.
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A parsed (not yet verified) compact JWS.
#[derive(Debug, Clone)]
pub(crate) struct Jwt {
    pub(crate) header: Map<String, Value>,
    pub(crate) claims: Map<String, Value>,
    signing_input: String,
    signature: Vec<u8>,
}

impl Jwt {
    /// Splits and decodes `header.claims.signature`; `None` if it is not a JWS with JSON object
    /// header and claims.
    pub(crate) fn parse(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (header, claims, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || header.is_empty() || claims.is_empty() {
            return None;
        }
        let decode_object = |part: &str| -> Option<Map<String, Value>> {
            let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
            match serde_json::from_slice(&bytes).ok()? {
                Value::Object(map) => Some(map),
                _ => None,
            }
        };
        Some(Self {
            header: decode_object(header)?,
            claims: decode_object(claims)?,
            signing_input: format!("{header}.{claims}"),
            signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
        })
    }

    pub(crate) fn alg(&self) -> Option<&str> {
        self.header.get("alg").and_then(Value::as_str)
    }

    pub(crate) fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }

    pub(crate) fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A numeric date claim (integer or float seconds).
    pub(crate) fn claim_time(&self, name: &str) -> Option<i64> {
        let value = self.claims.get(name)?;
        value.as_i64().or_else(|| value.as_f64().map(|f| f as i64))
    }

    /// `aud` as a list (a JWT may carry one string or an array).
    pub(crate) fn audiences(&self) -> Vec<String> {
        match self.claims.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Verifies the signature with `key` for the token's `alg`.
    pub(crate) fn verify(&self, key: &PublicKey) -> bool {
        key.verify(
            self.alg().unwrap_or_default(),
            self.signing_input.as_bytes(),
            &self.signature,
        )
    }
}

/// A public key from a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (`04 || x || y`).
    P256 {
        point: Vec<u8>,
    },
}

impl PublicKey {
    /// Reads one JWK; `None` for key types the emulator does not verify with.
    pub(crate) fn from_jwk(jwk: &Value) -> Option<Self> {
        let field = |name: &str| {
            jwk.get(name)
                .and_then(Value::as_str)
                .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        };
        match jwk.get("kty").and_then(Value::as_str)? {
            "RSA" => Some(Self::Rsa {
                n: field("n")?,
                e: field("e")?,
            }),
            "EC" if jwk.get("crv").and_then(Value::as_str) == Some("P-256") => {
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Some(Self::P256 { point })
            }
            _ => None,
        }
    }

    /// Whether this key can verify `alg`.
    pub(crate) fn supports(&self, alg: &str) -> bool {
        matches!(
            (self, alg),
            (Self::Rsa { .. }, "RS256") | (Self::P256 { .. }, "ES256")
        )
    }

    fn verify(&self, alg: &str, message: &[u8], sig: &[u8]) -> bool {
        match (self, alg) {
            (Self::Rsa { n, e }, "RS256") => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                .is_ok(),
            (Self::P256 { point }, "ES256") => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// The emulator's token signing key (RSA 2048, RS256), persisted as `signing-key.pem` (PKCS#8)
/// so tokens and the JWKS survive a restart.
pub(crate) struct SigningKey {
    pair: RsaKeyPair,
    kid: String,
    n: Vec<u8>,
    e: Vec<u8>,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads `signing-key.pem` from `dir`, or generates and writes it.
    pub(crate) async fn load_or_generate(dir: &Path) -> Result<Self> {
        let path = dir.join(SIGNING_KEY_FILE);
        match tokio::fs::read(&path).await {
            Ok(pem) => {
                let der = pkcs8_from_pem(&pem)
                    .ok_or_else(|| Error::SigningKey(format!("{} holds no PKCS#8 key", path.display())))?;
                Self::from_pkcs8(&der)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (der, pem) = tokio::task::spawn_blocking(generate_rsa_pkcs8)
                    .await
                    .map_err(|e| Error::SigningKey(e.to_string()))??;
                let key = Self::from_pkcs8(&der)?;
                write_atomic(&path, pem.as_bytes(), true).await?;
                tracing::info!(kid = %key.kid, "generated a new token signing key");
                Ok(key)
            }
            Err(source) => Err(Error::ReadFile { path, source }),
        }
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| Error::SigningKey(e.to_string()))?;
        let components = signature::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        let (n, e) = (components.n, components.e);
        // RFC 7638 thumbprint: members in lexicographic order, no whitespace.
        let thumbprint_input = format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(&e), b64(&n));
        let kid = b64(&Sha256::digest(thumbprint_input.as_bytes()));
        Ok(Self {
            pair,
            kid,
            n,
            e,
            rng: SystemRandom::new(),
        })
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, with the `issuer` member Entra's JWKS entries carry.
    pub(crate) fn jwk(&self, issuer: &str) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64(&self.n),
            "e": b64(&self.e),
            "issuer": issuer,
        })
    }

    pub(crate) fn public_key(&self) -> PublicKey {
        PublicKey::Rsa {
            n: self.n.clone(),
            e: self.e.clone(),
        }
    }

    /// Signs `claims` as an RS256 JWT with this key's `kid`.
    pub(crate) fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({ "typ": "JWT", "alg": "RS256", "kid": self.kid, "x5t": self.kid });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0u8; self.pair.public().modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &self.rng,
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|e| Error::SigningKey(e.to_string()))?;
        Ok(format!("{input}.{}", b64(&sig)))
    }
}

fn pkcs8_from_pem(pem: &[u8]) -> Option<Vec<u8>> {
    let mut reader = pem;
    match rustls_pemfile::private_key(&mut reader).ok()?? {
        rustls::pki_types::PrivateKeyDer::Pkcs8(der) => Some(der.secret_pkcs8_der().to_vec()),
        _ => None,
    }
}

/// Generates an RSA-2048 key: (PKCS#8 DER, PKCS#8 PEM). `ring` cannot generate RSA keys.
pub(crate) fn generate_rsa_pkcs8() -> Result<(Vec<u8>, String)> {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
        .map_err(|e| Error::SigningKey(e.to_string()))?;
    let der = key.to_pkcs8_der().map_err(|e| Error::SigningKey(e.to_string()))?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| Error::SigningKey(e.to_string()))?;
    Ok((der.as_bytes().to_vec(), pem.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn signs_and_verifies_and_survives_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::load_or_generate(dir.path()).await.expect("generates");
        let token = key.sign(&json!({"aud": "x", "n": 1})).expect("signs");
        let jwt = Jwt::parse(&token).expect("parses");
        assert_eq!(jwt.alg(), Some("RS256"));
        assert_eq!(jwt.kid(), Some(key.kid()));
        assert!(jwt.verify(&key.public_key()));
        assert_eq!(jwt.audiences(), vec!["x".to_string()]);

        let reloaded = SigningKey::load_or_generate(dir.path()).await.expect("loads");
        assert_eq!(reloaded.kid(), key.kid());
        assert!(jwt.verify(&PublicKey::from_jwk(&reloaded.jwk("iss")).expect("jwk")));

        let mut tampered = token.clone();
        tampered.insert(token.find('.').expect("dot") + 1, 'e');
        assert!(Jwt::parse(&tampered).is_none_or(|j| !j.verify(&key.public_key())));
    }

    #[test]
    fn rejects_what_is_not_a_jws() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            "e30.!!.",
            "W10.e30.",
            "e30.e30.%%",
        ] {
            assert!(Jwt::parse(bad).is_none(), "{bad}");
        }
        assert!(Jwt::parse("e30.e30.").is_some());
    }
}
