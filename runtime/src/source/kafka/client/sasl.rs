//! SASL over Kafka's own requests (SaslHandshake v1, then SaslAuthenticate):
//! PLAIN, and SCRAM-SHA-256/512 as RFC 5802 describes it.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use ring::{digest, hmac, pbkdf2};

use super::KafkaError;
use super::conn::BrokerConn;
use super::settings::{Mechanism, Sasl};

/// Authenticates `conn` with `credentials`.
pub async fn authenticate(conn: &mut BrokerConn, credentials: &Sasl) -> Result<(), KafkaError> {
    let address = conn.address().to_owned();
    let failed = |message: String| KafkaError::Auth { address: address.clone(), message };
    let mut handshake = SaslHandshakeRequest::default();
    handshake.mechanism = StrBytes::from_static_str(credentials.mechanism.name());
    let (answer, _) = conn.request(&handshake, 1).await?;
    if answer.error_code != 0 {
        let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(failed(format!(
            "the broker does not offer {} (it offers {offered:?})",
            credentials.mechanism.name()
        )));
    }
    match credentials.mechanism {
        Mechanism::Plain => {
            step(conn, plain_message(&credentials.username, &credentials.password)).await?;
            Ok(())
        }
        Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
            let mut scram = Scram::new(credentials.mechanism, &credentials.username, &credentials.password, &nonce());
            let server_first = step(conn, scram.client_first().into_bytes()).await?;
            let client_final = scram.client_final(&server_first).map_err(failed)?;
            let server_final = step(conn, client_final.into_bytes()).await?;
            scram.verify_server_final(&server_final).map_err(failed)
        }
    }
}

async fn step(conn: &mut BrokerConn, bytes: Vec<u8>) -> Result<Vec<u8>, KafkaError> {
    let mut request = SaslAuthenticateRequest::default();
    request.auth_bytes = Bytes::from(bytes);
    let (answer, _) = conn.request(&request, 2).await?;
    if let Some(error) = ResponseError::try_from_code(answer.error_code) {
        let detail = answer.error_message.as_ref().map(|m| m.to_string()).unwrap_or_default();
        // The broker's message says why (e.g. wrong credentials); the password is never in it.
        return Err(KafkaError::Auth { address: conn.address().to_owned(), message: format!("{error}: {detail}") });
    }
    if answer.session_lifetime_ms > 0 {
        conn.expire_after(Duration::from_millis(answer.session_lifetime_ms as u64));
    }
    Ok(answer.auth_bytes.to_vec())
}

/// PLAIN's one message (RFC 4616): no authorization identity, then the user and password.
fn plain_message(username: &str, password: &str) -> Vec<u8> {
    format!("\0{username}\0{password}").into_bytes()
}

fn nonce() -> String {
    let mut bytes = [0u8; 24];
    use ring::rand::SecureRandom;
    // The system's generator only fails when the OS has none; a clock-seeded nonce still differs per attempt.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    BASE64.encode(bytes)
}

/// One SCRAM exchange (RFC 5802, no channel binding).
struct Scram {
    mechanism: Mechanism,
    password: String,
    client_first_bare: String,
    client_nonce: String,
    server_signature: Option<Vec<u8>>,
}

impl Scram {
    fn new(mechanism: Mechanism, username: &str, password: &str, client_nonce: &str) -> Self {
        let user = username.replace('=', "=3D").replace(',', "=2C");
        Self {
            mechanism,
            password: password.to_owned(),
            client_first_bare: format!("n={user},r={client_nonce}"),
            client_nonce: client_nonce.to_owned(),
            server_signature: None,
        }
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    fn algorithms(&self) -> (hmac::Algorithm, pbkdf2::Algorithm, &'static digest::Algorithm) {
        match self.mechanism {
            Mechanism::ScramSha512 => (hmac::HMAC_SHA512, pbkdf2::PBKDF2_HMAC_SHA512, &digest::SHA512),
            _ => (hmac::HMAC_SHA256, pbkdf2::PBKDF2_HMAC_SHA256, &digest::SHA256),
        }
    }

    fn client_final(&mut self, server_first: &[u8]) -> Result<String, String> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| "the server's first SCRAM message is not text")?;
        let attribute = |name: char| {
            server_first.split(',').find_map(|part| part.strip_prefix(name).and_then(|p| p.strip_prefix('=')))
        };
        if let Some(error) = attribute('e') {
            return Err(format!("the broker refused: {error}"));
        }
        let nonce = attribute('r').ok_or("the server's first SCRAM message has no nonce")?;
        if !nonce.starts_with(&self.client_nonce) {
            return Err("the server's SCRAM nonce does not extend ours".to_owned());
        }
        let salt = BASE64
            .decode(attribute('s').ok_or("the server's first SCRAM message has no salt")?)
            .map_err(|_| "the SCRAM salt is not base64")?;
        let iterations: u32 = attribute('i')
            .and_then(|i| i.parse().ok())
            .filter(|i| *i > 0)
            .ok_or("the server's first SCRAM message has no iteration count")?;
        let (hmac_algorithm, pbkdf2_algorithm, digest_algorithm) = self.algorithms();
        let mut salted = vec![0u8; digest_algorithm.output_len()];
        let rounds = std::num::NonZeroU32::new(iterations).ok_or("zero SCRAM iterations")?;
        pbkdf2::derive(pbkdf2_algorithm, rounds, &salt, self.password.as_bytes(), &mut salted);
        let salted_key = hmac::Key::new(hmac_algorithm, &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(digest_algorithm, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature =
            hmac::sign(&hmac::Key::new(hmac_algorithm, stored_key.as_ref()), auth_message.as_bytes());
        let proof: Vec<u8> =
            client_key.as_ref().iter().zip(client_signature.as_ref()).map(|(key, signature)| key ^ signature).collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        let server_signature =
            hmac::sign(&hmac::Key::new(hmac_algorithm, server_key.as_ref()), auth_message.as_bytes());
        self.server_signature = Some(server_signature.as_ref().to_vec());
        Ok(format!("{without_proof},p={}", BASE64.encode(proof)))
    }

    fn verify_server_final(&self, server_final: &[u8]) -> Result<(), String> {
        let server_final =
            std::str::from_utf8(server_final).map_err(|_| "the server's final SCRAM message is not text")?;
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(format!("the broker refused: {error}"));
        }
        let signature = server_final
            .strip_prefix("v=")
            .and_then(|v| BASE64.decode(v.split(',').next().unwrap_or_default()).ok())
            .ok_or("the server's final SCRAM message has no signature")?;
        if Some(signature) != self.server_signature {
            return Err("the broker's SCRAM signature is wrong: it does not know the password".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 example exchange of RFC 7677, section 3.
    #[test]
    fn scram_sha256_matches_rfc_7677() {
        let mut scram = Scram::new(Mechanism::ScramSha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(scram.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            scram.client_final(server_first).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        scram.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        assert!(scram.verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").is_err());
    }

    #[test]
    fn plain_sends_user_and_password_without_an_authorization_identity() {
        assert_eq!(plain_message("cdc", "pw"), b"\0cdc\0pw");
    }

    #[test]
    fn scram_refuses_a_foreign_nonce_and_names_server_errors() {
        let mut scram = Scram::new(Mechanism::ScramSha512, "u,=", "p", "abc");
        assert_eq!(scram.client_first(), "n,,n=u=2C=3D,r=abc");
        assert!(scram.client_final(b"r=xyz,s=AAAA,i=4096").unwrap_err().contains("nonce"));
        assert!(scram.client_final(b"e=unknown-user").unwrap_err().contains("unknown-user"));
    }
}
