//! Microbenchmarks of coffer's crypto path next to the raw primitives it is built from, so
//! that each operation can be compared with its floor.
//!
//! ```text
//! cargo bench -p coffer-crypto --bench crypto             # full run (~3 min)
//! cargo bench -p coffer-crypto --bench crypto -- --quick  # short run (CI smoke)
//! ```
//!
//! The measurement is the benchmark thread's **CPU time** (`CLOCK_THREAD_CPUTIME_ID`), not
//! wall time: on a 2-core machine shared with builds, wall time counts the moments the thread
//! waits for a core, CPU time does not. Every operation here is single-threaded CPU work, so on
//! a quiet machine the two agree. `COFFER_BENCH_WALL_TIME=1` measures wall time instead.
//!
//! The floor of each coffer operation, in primitives:
//! * seal (one write, any number of values): one HPKE encapsulation (an X25519 key generation
//!   plus one X25519 agreement, HKDF-SHA256 key schedule, one export) plus one
//!   XChaCha20-Poly1305 AEAD per value;
//! * open (values of one write): one X25519 agreement + key schedule, then one AEAD per value;
//! * boot bundle: HPKE single-shot seal (keygen + agreement) and open (one agreement) of
//!   the concatenated values;
//! * digest: one HMAC-SHA256;
//! * machine token: one Ed25519 verification (the biscuit's authority block) and a Datalog run
//!   over its handful of facts.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use coffer_core::SecretValue;
use coffer_crypto::bundle::{open_bundle, seal_bundle};
use coffer_crypto::machine_token::{
    mint_machine_token, verify_machine_token, ControlPlaneKey, MachineClaims,
};
use coffer_crypto::{digest_hex, open_values, seal_values, DigestKey, PrivateKey, ValueContext};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{black_box, Criterion, Throughput};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

const APP_ID: &str = "0190f5c2-7b1e-7c3a-9d2e-4f6a8b1c2d3e";
const VALUE_LEN: usize = 40;

fn value(i: usize) -> SecretValue {
    let mut v = format!("value-{i:04}-").into_bytes();
    v.resize(VALUE_LEN, b'x');
    SecretValue::new(v)
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("SECRET_{i}")).collect()
}

/// The calling thread's CPU time, formatted like wall time.
struct ThreadCpuTime(WallTime);

impl Measurement for ThreadCpuTime {
    type Intermediate = cpu_time::ThreadTime;
    type Value = Duration;
    fn start(&self) -> Self::Intermediate {
        cpu_time::ThreadTime::now()
    }
    fn end(&self, start: Self::Intermediate) -> Self::Value {
        start.elapsed()
    }
    fn add(&self, a: &Self::Value, b: &Self::Value) -> Self::Value {
        *a + *b
    }
    fn zero(&self) -> Self::Value {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Self::Value) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.0.formatter()
    }
}

fn coffer_ops<M: Measurement>(c: &mut Criterion<M>) {
    let (sk, pk) = PrivateKey::generate();
    let mut g = c.benchmark_group("coffer");

    for n in [1usize, 10, 50] {
        let names = names(n);
        let values: Vec<SecretValue> = (0..n).map(value).collect();
        let pairs: Vec<(&str, &SecretValue)> = names
            .iter()
            .map(String::as_str)
            .zip(values.iter())
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        if n != 50 {
            g.bench_function(format!("seal_values/{n}x40B"), |b| {
                b.iter(|| seal_values(black_box(&pk), APP_ID, 7, black_box(&pairs)).unwrap())
            });
        }
        if n != 10 {
            // Opening `n` values of one write: one decapsulation shared by all of them.
            let sealed = seal_values(&pk, APP_ID, 7, &pairs).unwrap();
            let items: Vec<(ValueContext<'_>, &[u8])> = names
                .iter()
                .zip(&sealed)
                .map(|(name, ct)| {
                    (
                        ValueContext {
                            app_id: APP_ID,
                            name,
                            version: 7,
                        },
                        ct.0.as_slice(),
                    )
                })
                .collect();
            g.bench_function(format!("open_values/{n}x40B"), |b| {
                b.iter(|| open_values(black_box(&sk), black_box(&items)).unwrap())
            });
        }
    }

    // One boot bundle of 50 values: the vault seals to the agent's one-time key, the agent
    // opens it. The one-time key pair is made by the agent, so it is timed separately.
    let names50 = names(50);
    let values50: Vec<SecretValue> = (0..50).map(value).collect();
    let entries: Vec<(&str, &SecretValue)> = names50
        .iter()
        .map(String::as_str)
        .zip(values50.iter())
        .collect();
    let (agent_sk, agent_pk) = PrivateKey::generate();
    let context: [&[u8]; 3] = [APP_ID.as_bytes(), b"machine-1", &7i64.to_be_bytes()];
    g.throughput(Throughput::Elements(50));
    g.bench_function("bundle/seal/50x40B", |b| {
        b.iter(|| seal_bundle(black_box(&agent_pk), &context, black_box(&entries)).unwrap())
    });
    let bundle = seal_bundle(&agent_pk, &context, &entries).unwrap();
    g.bench_function("bundle/open/50x40B", |b| {
        b.iter(|| open_bundle(black_box(&agent_sk), &context, black_box(&bundle)).unwrap())
    });
    g.bench_function("bundle/seal+open/50x40B", |b| {
        b.iter(|| {
            let bundle = seal_bundle(black_box(&agent_pk), &context, &entries).unwrap();
            open_bundle(&agent_sk, &context, &bundle).unwrap()
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_time_keypair", |b| b.iter(PrivateKey::generate));

    // The vault's first check of a boot: the control plane's signature on the machine token
    // (Ed25519) and its Datalog (kind, expiry, the claims).
    let cp = ControlPlaneKey::generate();
    let claims = MachineClaims {
        app_id: "0190f5c27b1e7c3a9d2e4f6a8b1c2d3e".into(),
        machine_id: "0190f5c27b1e7c3a9d2e4f6a8b1c2d3f".into(),
        host_id: "0190f5c27b1e7c3a9d2e4f6a8b1c2d40".into(),
        host_key: "ab".repeat(32),
        expires_at: 4_102_444_800,
    };
    // The control plane's part of every boot grant.
    g.bench_function("machine_token/mint", |b| {
        b.iter(|| mint_machine_token(&cp, black_box(&claims)).unwrap())
    });
    let token = mint_machine_token(&cp, &claims).unwrap();
    let cp_public = cp.public_key();
    let now = std::time::SystemTime::now();
    g.bench_function("machine_token/verify", |b| {
        b.iter(|| verify_machine_token(&cp_public, black_box(&token), now).unwrap())
    });

    let dk = DigestKey::generate();
    let v = value(0);
    g.bench_function("digest_hex/40B", |b| {
        b.iter(|| digest_hex(black_box(&dk), black_box(&v)))
    });
    g.finish();
}

fn primitives<M: Measurement>(c: &mut Criterion<M>) {
    let mut g = c.benchmark_group("primitive");
    g.throughput(Throughput::Elements(1));

    // Same crate and feature set as hpke uses inside coffer (see Cargo.toml).
    let a = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
    let b_pub = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(
        rand_core::OsRng,
    ));
    g.bench_function("x25519/agreement", |b| {
        b.iter(|| black_box(&a).diffie_hellman(black_box(&b_pub)))
    });
    // The floor of a machine token's check (and of the host's signature on a boot request).
    let signer = ed25519_dalek::SigningKey::from_bytes(&coffer_crypto::random_array::<32>());
    let message = [7u8; 64];
    let signature = ed25519_dalek::Signer::sign(&signer, &message);
    let verifier = signer.verifying_key();
    g.bench_function("ed25519/verify_strict", |b| {
        b.iter(|| {
            verifier
                .verify_strict(black_box(&message), black_box(&signature))
                .unwrap()
        })
    });
    g.bench_function("x25519/public_key_from_secret", |b| {
        b.iter(|| x25519_dalek::PublicKey::from(black_box(&a)))
    });

    let cipher = XChaCha20Poly1305::new(&[7u8; 32].into());
    let nonce = XNonce::from([9u8; 24]);
    let msg = [0x41u8; VALUE_LEN];
    let aad = b"coffer/v1/value\0\0\0\x24app-id-0000000000000000000000000000\0\0\0\x08SECRET_0\0\0\0\x08\0\0\0\0\0\0\0\x07";
    g.bench_function("xchacha20poly1305/seal/40B", |b| {
        b.iter(|| {
            cipher
                .encrypt(
                    black_box(&nonce),
                    Payload {
                        msg: black_box(&msg),
                        aad,
                    },
                )
                .unwrap()
        })
    });
    let ct = cipher.encrypt(&nonce, Payload { msg: &msg, aad }).unwrap();
    g.bench_function("xchacha20poly1305/open/40B", |b| {
        b.iter(|| {
            cipher
                .decrypt(
                    black_box(&nonce),
                    Payload {
                        msg: black_box(&ct),
                        aad,
                    },
                )
                .unwrap()
        })
    });
    g.bench_function("xchacha20poly1305/new_key", |b| {
        b.iter(|| XChaCha20Poly1305::new(black_box(&[7u8; 32].into())))
    });

    let key = [3u8; 32];
    g.bench_function("hmac_sha256/40B", |b| {
        b.iter(|| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(black_box(&key)).unwrap();
            mac.update(black_box(&msg));
            mac.finalize().into_bytes()
        })
    });
    g.bench_function("os_random/24B", |b| {
        b.iter(coffer_crypto::random_array::<24>)
    });
    g.finish();
}

fn run<M: Measurement>(mut c: Criterion<M>) {
    coffer_ops(&mut c);
    primitives(&mut c);
}

fn main() {
    let wall = std::env::var_os("COFFER_BENCH_WALL_TIME").is_some_and(|v| v != "0");
    if wall {
        run(Criterion::default().configure_from_args());
    } else {
        run(Criterion::default()
            .with_measurement(ThreadCpuTime(WallTime))
            .configure_from_args());
    }
    Criterion::default().configure_from_args().final_summary();
}
