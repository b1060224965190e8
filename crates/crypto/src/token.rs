//! Bearer tokens of the API: `cfr_<id>_<secret>`. The store keeps only SHA-256 of the secret
//! (the secret is 256 random bits, so a fast hash is enough); checks are constant-time.

use coffer_core::secret::SecretToken;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const TOKEN_PREFIX: &str = "cfr_";

/// A freshly minted token: its public id, its full text (shown once) and the hash to store.
pub struct MintedToken {
    pub id: String,
    pub token: SecretToken,
    pub secret_hash: [u8; 32],
}

pub fn mint_token() -> MintedToken {
    let id = hex::encode(crate::random_array::<8>());
    let secret = hex::encode(crate::random_array::<32>());
    let secret_hash = hash_secret(&secret);
    MintedToken {
        token: SecretToken::new(format!("{TOKEN_PREFIX}{id}_{secret}")),
        id,
        secret_hash,
    }
}

/// Splits a presented token into (id, secret hash). `None` for anything not shaped like ours.
pub fn parse_token(presented: &str) -> Option<(String, [u8; 32])> {
    let rest = presented.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hexish(id, 16) || !hexish(secret, 64) {
        return None;
    }
    Some((id.to_string(), hash_secret(secret)))
}

fn hash_secret(secret: &str) -> [u8; 32] {
    sha256(secret.as_bytes())
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Constant-time equality of two hashes or MACs.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mint_then_parse() {
        let t = mint_token();
        let (id, hash) = parse_token(t.token.expose()).unwrap();
        assert_eq!(id, t.id);
        assert!(ct_eq(&hash, &t.secret_hash));
        assert!(parse_token("cfr_zz_yy").is_none());
        assert!(parse_token("").is_none());
        let mut altered = t.token.expose().to_string();
        altered.pop();
        altered.push('x');
        assert!(parse_token(&altered).is_none());
    }
}
