//! Machine tokens and host signatures: how the vault knows a decrypt request comes from the host
//! that runs a live machine of the app.
//!
//! * The control plane signs a **machine token** (a biscuit, Ed25519) for one boot: facts
//!   `kind("machine")`, `app(ID)`, `machine(ID)`, `host(ID)`, `host_key(HEX)` and a check that
//!   the current time is before its expiry (minutes). The vault verifies it with the control
//!   plane's *public* key alone.
//! * The host proves possession of the key named in `host_key` by signing its decrypt request
//!   with its Ed25519 host key, so a token copied to another host — even a registered one — is
//!   useless there.
//! * Revocation (a destroyed machine) is checked by the vault against the store; a token does
//!   not outlive its machine.
//! * **Log grants** are the same kind of biscuit with `kind("logs")`: the control plane's
//!   permission, checked by an agent, to read one machine's logs for a minute.

use base64::Engine as _;
use biscuit_auth::builder::{
    date, fact, pred, rule, string, var, Algorithm, AuthorizerBuilder, Policy, PolicyKind, Term,
};
use biscuit_auth::datalog::RunLimits;
use biscuit_auth::{Biscuit, KeyPair};
use coffer_core::SecretBytes;
use ed25519_dalek::{Signer, Verifier};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed or not signed by this control plane")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not a {0} token")]
    WrongKind(&'static str),
    #[error("the host signature does not match the token's host key")]
    BadSignature,
}

/// Authorization in the vault is a handful of facts; the default 1 ms limit is too tight for a
/// loaded test machine and buys nothing here.
fn limits() -> RunLimits {
    RunLimits {
        max_facts: 100,
        max_iterations: 100,
        max_time: Duration::from_millis(250),
    }
}

/// The control plane's signing key.
pub struct ControlPlaneKey(KeyPair);

impl std::fmt::Debug for ControlPlaneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ControlPlaneKey(public {})", self.public_key_hex())
    }
}

impl ControlPlaneKey {
    pub fn generate() -> Self {
        Self(KeyPair::new_with_algorithm(Algorithm::Ed25519))
    }

    pub fn from_secret_bytes(bytes: &SecretBytes<32>) -> Result<Self, TokenError> {
        let sk = biscuit_auth::PrivateKey::from_bytes(bytes.expose(), Algorithm::Ed25519)
            .map_err(|_| TokenError::Invalid)?;
        Ok(Self(KeyPair::from(&sk)))
    }

    pub fn to_secret_bytes(&self) -> SecretBytes<32> {
        SecretBytes::from_slice(&self.0.private().to_bytes()).expect("Ed25519 keys are 32 bytes")
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0.public().to_bytes())
    }

    pub fn public_key(&self) -> ControlPlanePublicKey {
        ControlPlanePublicKey(self.0.public())
    }
}

#[derive(Clone, Copy)]
pub struct ControlPlanePublicKey(biscuit_auth::PublicKey);

impl std::fmt::Debug for ControlPlanePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ControlPlanePublicKey({})",
            hex::encode(self.0.to_bytes())
        )
    }
}

impl ControlPlanePublicKey {
    pub fn from_hex(s: &str) -> Result<Self, TokenError> {
        let bytes = hex::decode(s.trim()).map_err(|_| TokenError::Invalid)?;
        biscuit_auth::PublicKey::from_bytes(&bytes, Algorithm::Ed25519)
            .map(Self)
            .map_err(|_| TokenError::Invalid)
    }
}

/// What a machine token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineClaims {
    pub app_id: String,
    pub machine_id: String,
    pub host_id: String,
    /// The host's Ed25519 public key, hex.
    pub host_key: String,
    /// Unix seconds.
    pub expires_at: i64,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Ids and keys are put into Datalog as strings; refusing anything but `[0-9a-f]` makes
/// injection impossible whatever the caller passes.
fn hex_id(s: &str) -> Result<&str, TokenError> {
    if !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(s)
    } else {
        Err(TokenError::Invalid)
    }
}

fn datalog_time(unix_secs: i64) -> Result<String, TokenError> {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix_secs).map_err(|_| TokenError::Invalid)?;
    t.format(&time::format_description::well_known::Rfc3339)
        .map_err(|_| TokenError::Invalid)
}

fn mint(
    key: &ControlPlaneKey,
    kind: &str,
    facts: &[(&str, &str)],
    expires_at: i64,
) -> Result<String, TokenError> {
    let mut code = format!("kind(\"{kind}\");\n");
    for (name, value) in facts {
        code.push_str(&format!("{name}(\"{}\");\n", hex_id(value)?));
    }
    code.push_str(&format!(
        "expires({});\ncheck if time($t), $t <= {};\n",
        expires_at,
        datalog_time(expires_at)?
    ));
    let token = Biscuit::builder()
        .code(&code)
        .and_then(|b| b.build(&key.0))
        .map_err(|_| TokenError::Invalid)?;
    token.to_base64().map_err(|_| TokenError::Invalid)
}

/// Verifies signature, kind and expiry; returns the authority block's facts by name.
fn verify(
    key: &ControlPlanePublicKey,
    token: &str,
    kind: &'static str,
    now: SystemTime,
    names: &[&str],
) -> Result<(Vec<String>, i64), TokenError> {
    if token.len() > 4096 {
        return Err(TokenError::Invalid);
    }
    let biscuit = Biscuit::from_base64(token, key.0).map_err(|_| TokenError::Invalid)?;
    // Machine tokens are never attenuated: a token with extra blocks is not one of ours.
    if biscuit.block_count() != 1 {
        return Err(TokenError::Invalid);
    }
    // A clock before 1970 cannot judge an expiry (and biscuit's `date` would panic on it).
    if now < UNIX_EPOCH {
        return Err(TokenError::Invalid);
    }
    // Built from terms, never parsed from text: parsing Datalog was most of a check's cost
    // after the signature (BENCHMARKS.md, "What was changed").
    let v = || var("v");
    let mut authorizer = AuthorizerBuilder::new()
        .fact(fact("time", &[date(&now)]))
        .and_then(|b| {
            b.policy(Policy {
                queries: vec![rule(
                    "allow",
                    &[] as &[Term],
                    &[pred("kind", &[string(kind)])],
                )],
                kind: PolicyKind::Allow,
            })
        })
        .map(|b| b.set_limits(limits()))
        .and_then(|b| b.build(&biscuit))
        .map_err(|_| TokenError::Invalid)?;
    // `data($v) <- name($v)`: every value of the authority block's fact `name`.
    let query = |name: &str| rule("data", &[v()], &[pred(name, &[v()])]);
    let expires: Vec<(i64,)> = authorizer
        .query(query("expires"))
        .map_err(|_| TokenError::Invalid)?;
    let expires_at = match expires.as_slice() {
        [(e,)] => *e,
        _ => return Err(TokenError::Invalid),
    };
    let kinds: Vec<(String,)> = authorizer
        .query(query("kind"))
        .map_err(|_| TokenError::Invalid)?;
    if kinds.len() != 1 || kinds[0].0 != kind {
        return Err(TokenError::WrongKind(kind));
    }
    if authorizer.authorize().is_err() {
        // The only check in the token is its expiry, and the kind matched.
        return Err(if expires_at < unix(now) {
            TokenError::Expired
        } else {
            TokenError::Invalid
        });
    }
    let mut values = Vec::with_capacity(names.len());
    for name in names {
        let rows: Vec<(String,)> = authorizer
            .query(query(name))
            .map_err(|_| TokenError::Invalid)?;
        match rows.as_slice() {
            [(value,)] => values.push(value.clone()),
            _ => return Err(TokenError::Invalid),
        }
    }
    Ok((values, expires_at))
}

pub fn mint_machine_token(
    key: &ControlPlaneKey,
    claims: &MachineClaims,
) -> Result<String, TokenError> {
    mint(
        key,
        "machine",
        &[
            ("app", &claims.app_id),
            ("machine", &claims.machine_id),
            ("host", &claims.host_id),
            ("host_key", &claims.host_key),
        ],
        claims.expires_at,
    )
}

pub fn verify_machine_token(
    key: &ControlPlanePublicKey,
    token: &str,
    now: SystemTime,
) -> Result<MachineClaims, TokenError> {
    let (v, expires_at) = verify(
        key,
        token,
        "machine",
        now,
        &["app", "machine", "host", "host_key"],
    )?;
    let mut v = v.into_iter();
    let mut next = || v.next().expect("one value per name");
    Ok(MachineClaims {
        app_id: next(),
        machine_id: next(),
        host_id: next(),
        host_key: next(),
        expires_at,
    })
}

/// Permission to read one machine's logs on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsClaims {
    pub machine_id: String,
    pub host_id: String,
    pub expires_at: i64,
}

pub fn mint_logs_grant(key: &ControlPlaneKey, claims: &LogsClaims) -> Result<String, TokenError> {
    mint(
        key,
        "logs",
        &[("machine", &claims.machine_id), ("host", &claims.host_id)],
        claims.expires_at,
    )
}

pub fn verify_logs_grant(
    key: &ControlPlanePublicKey,
    token: &str,
    now: SystemTime,
) -> Result<LogsClaims, TokenError> {
    let (v, expires_at) = verify(key, token, "logs", now, &["machine", "host"])?;
    Ok(LogsClaims {
        machine_id: v[0].clone(),
        host_id: v[1].clone(),
        expires_at,
    })
}

/// A host's identity key (Ed25519), kept by its agent.
pub struct HostKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostKey(public {})", self.public_key_hex())
    }
}

impl HostKey {
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&crate::random_array()))
    }

    pub fn from_secret_bytes(bytes: &SecretBytes<32>) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(bytes.expose()))
    }

    pub fn to_secret_bytes(&self) -> SecretBytes<32> {
        SecretBytes::new(self.0.to_bytes())
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.0.verifying_key().to_bytes())
    }

    pub fn sign_hex(&self, message: &[u8]) -> String {
        hex::encode(self.0.sign(message).to_bytes())
    }
}

/// Checks `signature_hex` over `message` against the host key named in a token.
pub fn verify_host_signature(
    host_key_hex: &str,
    message: &[u8],
    signature_hex: &str,
) -> Result<(), TokenError> {
    let pk: [u8; 32] = hex::decode(host_key_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(TokenError::BadSignature)?;
    let sig: [u8; 64] = hex::decode(signature_hex)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(TokenError::BadSignature)?;
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).map_err(|_| TokenError::BadSignature)?;
    vk.verify(message, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| TokenError::BadSignature)
}

/// The bytes a host signs for a decrypt request: every field of the request, length-prefixed.
pub fn decrypt_request_message(
    machine_token: &str,
    machine_id: &str,
    one_time_public_key: &str,
    issued_at: i64,
    ciphertexts: &[(&str, i64, &str)],
) -> Vec<u8> {
    let mut parts: Vec<Vec<u8>> = vec![
        machine_token.as_bytes().to_vec(),
        machine_id.as_bytes().to_vec(),
        one_time_public_key.as_bytes().to_vec(),
        issued_at.to_be_bytes().to_vec(),
    ];
    for (name, version, ct) in ciphertexts {
        parts.push(name.as_bytes().to_vec());
        parts.push(version.to_be_bytes().to_vec());
        parts.push(ct.as_bytes().to_vec());
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    crate::token::sha256(&crate::encode_context(b"coffer/v1/decrypt-request", &refs)).to_vec()
}

/// Standard base64, used for ciphertexts and bundles on the wire.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(host_key: &str) -> MachineClaims {
        MachineClaims {
            app_id: "aa".repeat(16),
            machine_id: "bb".repeat(8),
            host_id: "cc".repeat(8),
            host_key: host_key.into(),
            expires_at: unix(SystemTime::now()) + 300,
        }
    }

    #[test]
    fn mint_verify_and_refuse() {
        let cp = ControlPlaneKey::generate();
        let hk = HostKey::generate();
        let c = claims(&hk.public_key_hex());
        let t = mint_machine_token(&cp, &c).unwrap();
        let now = SystemTime::now();
        assert_eq!(verify_machine_token(&cp.public_key(), &t, now).unwrap(), c);

        // Expired.
        let later = now + Duration::from_secs(301);
        assert_eq!(
            verify_machine_token(&cp.public_key(), &t, later).unwrap_err(),
            TokenError::Expired
        );
        // Another control plane.
        let other = ControlPlaneKey::generate();
        assert_eq!(
            verify_machine_token(&other.public_key(), &t, now).unwrap_err(),
            TokenError::Invalid
        );
        // Altered: any character changed.
        let mut bytes = t.clone().into_bytes();
        bytes[40] = if bytes[40] == b'A' { b'B' } else { b'A' };
        assert!(
            verify_machine_token(&cp.public_key(), &String::from_utf8(bytes).unwrap(), now)
                .is_err()
        );
        // A logs grant is not a machine token and vice versa.
        let g = mint_logs_grant(
            &cp,
            &LogsClaims {
                machine_id: c.machine_id.clone(),
                host_id: c.host_id.clone(),
                expires_at: c.expires_at,
            },
        )
        .unwrap();
        assert_eq!(
            verify_machine_token(&cp.public_key(), &g, now).unwrap_err(),
            TokenError::WrongKind("machine")
        );
        assert_eq!(
            verify_logs_grant(&cp.public_key(), &t, now).unwrap_err(),
            TokenError::WrongKind("logs")
        );
        assert_eq!(
            verify_logs_grant(&cp.public_key(), &g, now)
                .unwrap()
                .machine_id,
            c.machine_id
        );
        // Attenuated (an extra block) is refused too.
        let b = Biscuit::from_base64(&t, cp.0.public()).unwrap();
        let extra = b
            .append(
                biscuit_auth::builder::BlockBuilder::new()
                    .code("check if true;")
                    .unwrap(),
            )
            .unwrap();
        assert!(verify_machine_token(&cp.public_key(), &extra.to_base64().unwrap(), now).is_err());

        // Signed by this control plane, but with a claim twice: which one would count?
        let twice = Biscuit::builder()
            .code(format!(
                "kind(\"machine\"); app(\"{}\"); app(\"ff\"); machine(\"{}\"); \
                 host(\"{}\"); host_key(\"{}\"); expires({});",
                c.app_id, c.machine_id, c.host_id, c.host_key, c.expires_at
            ))
            .unwrap()
            .build(&cp.0)
            .unwrap()
            .to_base64()
            .unwrap();
        assert_eq!(
            verify_machine_token(&cp.public_key(), &twice, now).unwrap_err(),
            TokenError::Invalid
        );
        // A clock before 1970 judges nothing (and does not panic).
        let before_1970 = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            verify_machine_token(&cp.public_key(), &t, before_1970).unwrap_err(),
            TokenError::Invalid
        );
    }

    #[test]
    fn refuses_non_hex_ids() {
        let cp = ControlPlaneKey::generate();
        let mut c = claims("ab");
        c.app_id = "x\"); allow if true; //".into();
        assert!(mint_machine_token(&cp, &c).is_err());
    }

    #[test]
    fn host_signature_binds_request() {
        let hk = HostKey::generate();
        let m = decrypt_request_message("tok", "m1", "pk", 5, &[("A", 1, "Y3Q=")]);
        let sig = hk.sign_hex(&m);
        assert!(verify_host_signature(&hk.public_key_hex(), &m, &sig).is_ok());
        let m2 = decrypt_request_message("tok", "m1", "pk", 5, &[("B", 1, "Y3Q=")]);
        assert!(verify_host_signature(&hk.public_key_hex(), &m2, &sig).is_err());
        let other = HostKey::generate();
        assert!(verify_host_signature(&other.public_key_hex(), &m, &sig).is_err());
        let hk2 = HostKey::from_secret_bytes(&hk.to_secret_bytes());
        assert_eq!(hk2.public_key_hex(), hk.public_key_hex());
    }

    #[test]
    fn control_plane_key_round_trips() {
        let cp = ControlPlaneKey::generate();
        let cp2 = ControlPlaneKey::from_secret_bytes(&cp.to_secret_bytes()).unwrap();
        assert_eq!(cp.public_key_hex(), cp2.public_key_hex());
        assert!(ControlPlanePublicKey::from_hex(&cp.public_key_hex()).is_ok());
    }
}
