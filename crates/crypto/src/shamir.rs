//! Unseal key shares: the vault's root key split with Shamir's scheme over GF(256) (vsss-rs),
//! so that no one person holds it and any `threshold` of the `shares` holders rebuild it.
//!
//! A share is written `cofferus1_` followed by hex: the share's identifier byte, then 32
//! bytes, one per byte of the key. Fewer than `threshold` shares say nothing about the key;
//! a wrong or mistyped share rebuilds a wrong key, which the vault tells apart by the
//! fingerprint the store recorded (`RootKey::fingerprint`).

use crate::RootKey;
use coffer_core::SecretBytes;
use zeroize::Zeroizing;

const PREFIX: &str = "cofferus1_";
/// The identifier byte and one byte per byte of the root key.
const SHARE_LEN: usize = 1 + 32;

/// The most shares a root key is split into (the identifiers are one byte, never 0).
pub const MAX_SHARES: usize = 255;

/// One holder's share of the root key. Its `Debug` shows nothing of it.
pub struct UnsealShare(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for UnsealShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnsealShare([REDACTED])")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareError {
    #[error("a root key is split into 1 to 255 shares, at least `threshold` of them, with a threshold of at least 1")]
    Parameters,
    #[error("not an unseal share: a share is `cofferus1_` followed by 66 hex characters")]
    Malformed,
    #[error("two of the shares are the same share")]
    Repeated,
}

impl UnsealShare {
    /// The text an operator keeps.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{PREFIX}{}", hex::encode(&*self.0)))
    }

    /// Reads a share's text (surrounding white space ignored).
    pub fn parse(text: &str) -> Result<Self, ShareError> {
        let hex_part = text
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(ShareError::Malformed)?;
        let mut bytes = Zeroizing::new(vec![0u8; SHARE_LEN]);
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| ShareError::Malformed)?;
        if bytes[0] == 0 {
            return Err(ShareError::Malformed);
        }
        Ok(Self(bytes))
    }

    /// The share's identifier (1–255): which holder's share it is, not secret.
    pub fn id(&self) -> u8 {
        self.0[0]
    }
}

/// Splits `root` into `shares` shares, any `threshold` of which rebuild it.
pub fn split(
    root: &RootKey,
    threshold: usize,
    shares: usize,
) -> Result<Vec<UnsealShare>, ShareError> {
    if threshold == 0 || threshold > shares || shares > MAX_SHARES {
        return Err(ShareError::Parameters);
    }
    if threshold == 1 {
        // Each share would be the key itself (vsss-rs refuses a threshold of 1).
        return Ok((1..=shares as u8)
            .map(|id| {
                let mut bytes = Zeroizing::new(Vec::with_capacity(SHARE_LEN));
                bytes.push(id);
                bytes.extend_from_slice(root.expose());
                UnsealShare(bytes)
            })
            .collect());
    }
    let rng = rand_core_010::UnwrapErr(getrandom_04::SysRng);
    let split = vsss_rs::Gf256::split_bytes(threshold, shares, root.expose(), rng)
        .map_err(|_| ShareError::Parameters)?;
    Ok(split
        .into_iter()
        .map(|s| UnsealShare(Zeroizing::new(s)))
        .collect())
}

/// Rebuilds a root key from shares. It is the store's key only if the shares were at least
/// the threshold, all of one split, and intact: check its fingerprint.
pub fn combine(shares: &[UnsealShare]) -> Result<RootKey, ShareError> {
    let mut ids: Vec<u8> = shares.iter().map(UnsealShare::id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(ShareError::Repeated);
    }
    let key_bytes: Zeroizing<Vec<u8>> = match shares {
        [] => return Err(ShareError::Malformed),
        [one] => Zeroizing::new(one.0[1..].to_vec()),
        _ => {
            let parts: Vec<Vec<u8>> = shares.iter().map(|s| s.0.to_vec()).collect();
            let combined = vsss_rs::Gf256::combine_bytes(&parts).map_err(|_| ShareError::Malformed);
            for mut p in parts {
                zeroize::Zeroize::zeroize(&mut p);
            }
            Zeroizing::new(combined?)
        }
    };
    let mut key = [0u8; 32];
    if key_bytes.len() != key.len() {
        return Err(ShareError::Malformed);
    }
    key.copy_from_slice(&key_bytes);
    let secret = SecretBytes::new(key);
    zeroize::Zeroize::zeroize(&mut key);
    Ok(RootKey::from_secret_bytes(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(shares: &[UnsealShare]) -> Vec<String> {
        shares.iter().map(|s| s.to_text().to_string()).collect()
    }

    #[test]
    fn any_threshold_of_the_shares_rebuilds_the_key() {
        let root = RootKey::generate();
        let shares = split(&root, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        let all = texts(&shares);
        for t in &all {
            assert!(t.starts_with("cofferus1_") && t.len() == 10 + 66, "{t}");
            assert!(!t.contains(&hex::encode(root.expose())));
        }
        let parse = |i: usize| UnsealShare::parse(&all[i]).unwrap();
        for picks in [[0, 1, 2], [4, 2, 0], [1, 3, 4], [2, 3, 4]] {
            let picked: Vec<UnsealShare> = picks.iter().map(|&i| parse(i)).collect();
            assert_eq!(combine(&picked).unwrap().fingerprint(), root.fingerprint());
        }
        // All five rebuild it too; two do not.
        let five: Vec<UnsealShare> = (0..5).map(parse).collect();
        assert_eq!(combine(&five).unwrap().fingerprint(), root.fingerprint());
        let two = [parse(0), parse(1)];
        assert_ne!(
            combine(&two).map(|k| k.fingerprint()).ok(),
            Some(root.fingerprint())
        );
    }

    #[test]
    fn a_threshold_of_one_gives_every_holder_the_key() {
        let root = RootKey::generate();
        let shares = split(&root, 1, 2).unwrap();
        for s in &shares {
            let one = [UnsealShare::parse(&s.to_text()).unwrap()];
            assert_eq!(combine(&one).unwrap().fingerprint(), root.fingerprint());
        }
    }

    #[test]
    fn bad_parameters_and_bad_shares_are_refused() {
        let root = RootKey::generate();
        for (t, n) in [(0, 3), (4, 3), (2, 256)] {
            assert_eq!(split(&root, t, n).unwrap_err(), ShareError::Parameters);
        }
        let good = split(&root, 2, 3).unwrap()[0].to_text().to_string();
        for bad in [
            "",
            "cofferus1_",
            &good[..good.len() - 2],
            &format!("{good}00"),
            &good.replace("cofferus1_", "cofferus2_"),
            &format!("cofferus1_00{}", &good[12..]),
            &good
                .replace("cofferus1_", "cofferus1_zz")
                .chars()
                .take(good.len())
                .collect::<String>(),
        ] {
            assert_eq!(
                UnsealShare::parse(bad).unwrap_err(),
                ShareError::Malformed,
                "{bad:?}"
            );
        }
        assert!(UnsealShare::parse(&format!("  {good}\n")).is_ok());
        let twice = [
            UnsealShare::parse(&good).unwrap(),
            UnsealShare::parse(&good).unwrap(),
        ];
        assert_eq!(combine(&twice).unwrap_err(), ShareError::Repeated);
        assert_eq!(format!("{:?}", twice[0]), "UnsealShare([REDACTED])");
    }
}
