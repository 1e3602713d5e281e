//! The identity pieces of a worker's connections: reading the ICE username and checking
//! the integrity of STUN requests before the library sees them, the worker's DTLS
//! certificate, and the random ufrags, passwords and channel labels.
//!
//! Pure functions of their input (and the OS's randomness); no connection state.

use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};

/// The USERNAME of a STUN message, if `data` is one.
pub(super) fn stun_username(data: &[u8]) -> Option<&str> {
    // STUN: top two bits zero, magic cookie at bytes 4..8.
    if data.len() < 20 || data[0] & 0xc0 != 0 || data[4..8] != [0x21, 0x12, 0xa4, 0x42] {
        return None;
    }
    let mut rest = &data[20..];
    while rest.len() >= 4 {
        let kind = u16::from_be_bytes([rest[0], rest[1]]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let value = rest.get(4..4 + len)?;
        if kind == 0x0006 {
            return std::str::from_utf8(value).ok();
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

/// Whether `data` is a STUN message whose MESSAGE-INTEGRITY is keyed by `password`.
pub(super) fn stun_authentic(
    data: &[u8],
    password: &str,
    crypto: &dyn rtc::crypto::RTCCrypto,
) -> bool {
    use rtc::stun::integrity::MessageIntegrity;
    let mut message = rtc::stun::message::Message::new();
    message.unmarshal_binary(data).is_ok()
        && MessageIntegrity::check(&mut message, password.as_bytes(), crypto).is_ok()
}

pub(super) fn generate_certificate() -> Result<RTCCertificate, String> {
    let provider = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
    let params = CertificateParams::new(vec!["superpeer".to_owned()]).map_err(|e| e.to_string())?;
    RTCCertificate::generate(
        provider.crypto(),
        rtc::crypto::SignatureScheme::EcdsaP256Sha256,
        params,
    )
    .map_err(|e| e.to_string())
}

const TOKEN_SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// simple-peer's channel labels are 40 of these.
const HEX_SYMBOLS: &[u8] = b"0123456789abcdef";

pub(super) fn random_token(len: usize) -> String {
    random_text(len, TOKEN_SYMBOLS)
}

pub(super) fn random_hex(len: usize) -> String {
    random_text(len, HEX_SYMBOLS)
}

fn random_text(len: usize, symbols: &[u8]) -> String {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    (0..len).map(|_| char::from(symbols[rng.random_range(0..symbols.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::stun_username;

    #[test]
    fn finds_the_username_of_a_binding_request() {
        let mut message = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
        message.extend([7u8; 12]);
        message.extend([0x00, 0x06, 0x00, 0x09]);
        message.extend(b"abc:defgh\0\0\0");
        assert_eq!(stun_username(&message), Some("abc:defgh"));
        assert_eq!(stun_username(b"\x16\xfe\xfd not stun at all......"), None);
        assert_eq!(stun_username(&message[..22]), None);
    }
}
