//! The web client's end-to-end format (docs/E2E.md), checked by an
//! independent implementation: the test vectors that `web/crypto.js` sealed
//! (tests/web/make-vectors.mjs) decrypt here with RustCrypto, sealing again
//! gives the same bytes, and any change to what the AAD binds fails.

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use hkdf::Hkdf;
use serde::Deserialize;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Deserialize)]
struct Vectors {
    keys: std::collections::HashMap<String, Keys>,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Keys {
    private_hex: String,
    public_base64: String,
}

#[derive(Deserialize)]
struct Vector {
    sender: String,
    recipient: String,
    id: String,
    iv_hex: String,
    plaintext: String,
    content: String,
}

#[derive(Deserialize)]
struct Envelope {
    v: u32,
    id: String,
    spk: String,
    rpk: String,
    iv: String,
    ct: String,
}

const LABEL: &str = "secchat-e2e-v1";

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn b64(text: &str) -> Vec<u8> {
    STANDARD.decode(text).unwrap()
}

/// Each field as a big-endian u16 length and its bytes.
fn length_prefixed(fields: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for field in fields {
        out.extend_from_slice(&u16::try_from(field.len()).unwrap().to_be_bytes());
        out.extend_from_slice(field);
    }
    out
}

fn secret(keys: &Keys) -> StaticSecret {
    StaticSecret::from(<[u8; 32]>::try_from(hex(&keys.private_hex)).unwrap())
}

/// The AES-256-GCM key of messages from `spk`'s owner to `rpk`'s, derived by
/// the holder of `own` (either of the two).
fn message_key(own: &StaticSecret, peer: &[u8], spk: &[u8], rpk: &[u8]) -> Aes256Gcm {
    let peer = PublicKey::from(<[u8; 32]>::try_from(peer).unwrap());
    let shared = own.diffie_hellman(&peer);
    assert!(shared.was_contributory());
    let info = length_prefixed(&[format!("{LABEL} key").as_bytes(), spk, rpk]);
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&[]), shared.as_bytes())
        .expand(&info, &mut key)
        .unwrap();
    Aes256Gcm::new(&key.into())
}

fn aad(sender: &str, recipient: &str, id: &str) -> Vec<u8> {
    length_prefixed(&[
        LABEL.as_bytes(),
        sender.as_bytes(),
        recipient.as_bytes(),
        id.as_bytes(),
    ])
}

fn load() -> Vectors {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/e2e-vectors.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_web_clients_vectors_decrypt_and_reseal_byte_for_byte() {
    let all = load();
    assert!(all.vectors.len() >= 4);
    for v in &all.vectors {
        let (sender, recipient) = (&all.keys[&v.sender], &all.keys[&v.recipient]);
        // The published public keys are the private keys' own.
        for keys in [sender, recipient] {
            let derived = PublicKey::from(&secret(keys));
            assert_eq!(STANDARD.encode(derived.as_bytes()), keys.public_base64);
        }
        let e: Envelope = serde_json::from_str(&v.content).unwrap();
        assert_eq!((e.v, e.id.as_str()), (1, v.id.as_str()));
        assert_eq!(e.spk, sender.public_base64);
        assert_eq!(e.rpk, recipient.public_base64);
        let (spk, rpk, iv) = (b64(&e.spk), b64(&e.rpk), b64(&e.iv));
        assert_eq!(iv, hex(&v.iv_hex));
        let binding = aad(&v.sender, &v.recipient, &v.id);

        // The recipient decrypts with its private key and the sender's public key.
        let opened = message_key(&secret(recipient), &spk, &spk, &rpk)
            .decrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &b64(&e.ct),
                    aad: &binding,
                },
            )
            .expect("the recipient decrypts");
        assert_eq!(String::from_utf8(opened).unwrap(), v.plaintext);

        // The sender's side seals the same bytes.
        let sealed = message_key(&secret(sender), &rpk, &spk, &rpk)
            .encrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: v.plaintext.as_bytes(),
                    aad: &binding,
                },
            )
            .unwrap();
        assert_eq!(STANDARD.encode(sealed), e.ct);
    }
}

#[test]
fn a_vector_fails_under_any_other_binding_or_with_a_bit_changed() {
    let all = load();
    let v = &all.vectors[0];
    let e: Envelope = serde_json::from_str(&v.content).unwrap();
    let (spk, rpk, iv, ct) = (b64(&e.spk), b64(&e.rpk), b64(&e.iv), b64(&e.ct));
    let key = message_key(&secret(&all.keys[&v.recipient]), &spk, &spk, &rpk);
    let opens = |aad: Vec<u8>, ct: &[u8]| {
        key.decrypt(Nonce::from_slice(&iv), Payload { msg: ct, aad: &aad })
            .is_ok()
    };
    assert!(opens(aad(&v.sender, &v.recipient, &v.id), &ct));
    // Another recipient, another sender, another id: each refused.
    assert!(!opens(aad(&v.sender, "carol", &v.id), &ct));
    assert!(!opens(aad("mallory", &v.recipient, &v.id), &ct));
    assert!(!opens(aad(&v.sender, &v.recipient, "another-id"), &ct));
    assert!(!opens(aad(&v.recipient, &v.sender, &v.id), &ct));
    for i in 0..ct.len() {
        let mut flipped = ct.clone();
        flipped[i] ^= 1;
        assert!(!opens(aad(&v.sender, &v.recipient, &v.id), &flipped));
    }
    // The key of the other direction is another key.
    let reverse = message_key(&secret(&all.keys[&v.recipient]), &spk, &rpk, &spk);
    assert!(
        reverse
            .decrypt(
                Nonce::from_slice(&iv),
                Payload {
                    msg: &ct,
                    aad: &aad(&v.sender, &v.recipient, &v.id)
                }
            )
            .is_err()
    );
}
