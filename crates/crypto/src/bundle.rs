//! A boot bundle: the decrypted values of one machine, sealed by the vault to the one-time
//! public key of the asking agent (HPKE single-shot, base mode). Only that agent, which made
//! the key pair for this one boot and drops it afterwards, can open it.
//!
//! Plaintext layout before sealing: repeated `[u32 name_len][name][u32 value_len][value]`.
//! `context` (app id, machine id, secrets version) is the HPKE `info`, so a bundle made for one
//! boot does not open as another's.

use crate::keys::{AppKem, PrivateKey, PublicKey};
use crate::{encode_context, CryptoError};
use coffer_core::SecretValue;
use hpke::{aead::ChaCha20Poly1305 as HpkeAead, kdf::HkdfSha256, Deserializable, Kem};
use hpke::{OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

pub fn seal_bundle(
    recipient: &PublicKey,
    context: &[&[u8]],
    entries: &[(&str, &SecretValue)],
) -> Result<Vec<u8>, CryptoError> {
    let mut plain = Zeroizing::new(Vec::with_capacity(
        entries.iter().map(|(n, v)| 8 + n.len() + v.len()).sum(),
    ));
    for (name, value) in entries {
        plain.extend_from_slice(&(name.len() as u32).to_be_bytes());
        plain.extend_from_slice(name.as_bytes());
        plain.extend_from_slice(&(value.len() as u32).to_be_bytes());
        plain.extend_from_slice(value.expose_bytes());
    }
    let info = encode_context(b"coffer/v1/bundle", context);
    let (enc, ct) = hpke::single_shot_seal::<HpkeAead, HkdfSha256, AppKem, _>(
        &OpModeS::Base,
        &recipient.0,
        &info,
        &plain,
        b"",
        &mut rand_core::OsRng,
    )
    .map_err(|_| CryptoError::Malformed("public key"))?;
    let mut out = enc.to_bytes().to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

pub fn open_bundle(
    recipient: &PrivateKey,
    context: &[&[u8]],
    bundle: &[u8],
) -> Result<Vec<(String, SecretValue)>, CryptoError> {
    if bundle.len() < 32 + 16 {
        return Err(CryptoError::Malformed("bundle"));
    }
    let enc = <AppKem as Kem>::EncappedKey::from_bytes(&bundle[..32])
        .map_err(|_| CryptoError::Malformed("bundle"))?;
    let info = encode_context(b"coffer/v1/bundle", context);
    let plain = Zeroizing::new(
        hpke::single_shot_open::<HpkeAead, HkdfSha256, AppKem>(
            &OpModeR::Base,
            &recipient.0,
            &enc,
            &info,
            &bundle[32..],
            b"",
        )
        .map_err(|_| CryptoError::Integrity)?,
    );
    let mut out = Vec::new();
    let mut rest: &[u8] = &plain;
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, CryptoError> {
        let bad = CryptoError::Malformed("bundle");
        let len_bytes: [u8; 4] = rest
            .get(..4)
            .ok_or(bad.clone())?
            .try_into()
            .map_err(|_| bad.clone())?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        let field = rest.get(4..4 + len).ok_or(bad)?.to_vec();
        *rest = &rest[4 + len..];
        Ok(field)
    };
    while !rest.is_empty() {
        let name =
            String::from_utf8(take(&mut rest)?).map_err(|_| CryptoError::Malformed("bundle"))?;
        let value = SecretValue::new(take(&mut rest)?);
        out.push((name, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_one_time_key_and_context_open_it() {
        let (sk, pk) = PrivateKey::generate();
        let v = SecretValue::from_str_value("s3cret");
        let e = SecretValue::new(vec![]);
        let b = seal_bundle(&pk, &[b"app", b"m1"], &[("A", &v), ("EMPTY", &e)]).unwrap();
        let opened = open_bundle(&sk, &[b"app", b"m1"], &b).unwrap();
        assert_eq!(opened.len(), 2);
        assert_eq!(opened[0].0, "A");
        assert_eq!(opened[0].1.expose_bytes(), b"s3cret");
        assert!(opened[1].1.is_empty());
        assert_eq!(
            open_bundle(&sk, &[b"app", b"m2"], &b).unwrap_err(),
            CryptoError::Integrity
        );
        let (other, _) = PrivateKey::generate();
        assert_eq!(
            open_bundle(&other, &[b"app", b"m1"], &b).unwrap_err(),
            CryptoError::Integrity
        );
    }
}
