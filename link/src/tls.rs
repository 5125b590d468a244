//! TLS 1.3 identities: a node's TLS key is its Ed25519 identity key.
//!
//! A node presents a self-signed X.509 certificate whose subject public key is its Ed25519
//! identity key. The connecting side accepts the certificate only if that key is exactly the one
//! it expected (from the roster), and rustls then checks the handshake signature with the same
//! key, which proves the peer holds it. Nothing else in the certificate — names, dates, its own
//! signature — carries meaning, so nothing else is checked.

use std::sync::Arc;

use allium_onion::{IdentityKeypair, IdentityPublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use subtle::ConstantTimeEq;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::LinkError;

/// ALPN protocol name: the link and packet format version.
pub const ALPN: &[u8] = b"allium/1";

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410 §7), followed by the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Object identifier of Ed25519 (RFC 8410), DER-encoded content bytes.
const OID_ED25519: &[u64] = &[1, 3, 101, 112];

/// Certificate and key material a node presents. The key is zeroized on drop.
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
    public: IdentityPublicKey,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// The certificate of `identity`.
    pub fn new(identity: &IdentityKeypair) -> Result<Self, LinkError> {
        let mut pkcs8 = zeroize::Zeroizing::new(Vec::with_capacity(48));
        pkcs8.extend_from_slice(&PKCS8_ED25519_PREFIX);
        pkcs8.extend_from_slice(identity.seed().as_ref());
        let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(pkcs8.as_slice()),
            &rcgen::PKCS_ED25519,
        )
        .map_err(|e| {
            LinkError::Tls(format!(
                "identity key refused by the certificate builder: {e}"
            ))
        })?;
        let params = rcgen::CertificateParams::new(vec!["allium".to_string()])
            .map_err(|e| LinkError::Tls(format!("certificate parameters: {e}")))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| LinkError::Tls(format!("certificate signing: {e}")))?;
        Ok(TlsIdentity {
            cert: cert.der().clone(),
            pkcs8,
            public: identity.public(),
        })
    }

    /// The identity this certificate presents.
    pub fn public(&self) -> &IdentityPublicKey {
        &self.public
    }

    /// The key of the endpoint's QUIC stateless resets, derived from the identity so that a
    /// restarted node can reset connections its previous run had: peers learn at once that the
    /// old connection is gone instead of waiting for its idle time-out.
    pub(crate) fn stateless_reset_key(&self) -> zeroize::Zeroizing<[u8; 32]> {
        use blake2::digest::{FixedOutput, KeyInit, Update};
        let seed = &self.pkcs8[PKCS8_ED25519_PREFIX.len()..];
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        if let Ok(mut mac) = blake2::Blake2bMac::<blake2::digest::consts::U32>::new_from_slice(seed)
        {
            mac.update(b"allium/v1/quic-stateless-reset");
            out.copy_from_slice(&mac.finalize_fixed());
        }
        out
    }

    pub(crate) fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.to_vec()))
    }
}

/// The Ed25519 identity key a certificate carries as its subject public key.
pub fn certificate_identity(der: &[u8]) -> Result<IdentityPublicKey, rustls::Error> {
    let bad = |why: &str| rustls::Error::General(format!("peer certificate: {why}"));
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|_| bad("not a DER X.509 certificate"))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let spki = &cert.tbs_certificate.subject_pki;
    let is_ed25519 = spki
        .algorithm
        .algorithm
        .iter()
        .is_some_and(|arcs| arcs.eq(OID_ED25519.iter().copied()));
    if !is_ed25519 || spki.algorithm.parameters.is_some() {
        return Err(bad("subject key is not Ed25519"));
    }
    IdentityPublicKey::from_bytes(&spki.subject_public_key.data)
        .map_err(|_| bad("subject key is not a valid Ed25519 key"))
}

fn verify_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(rustls::Error::PeerMisbehaved(
            rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
        ));
    }
    certificate_identity(cert)?
        .verify(message, dss.signature())
        .map(|()| HandshakeSignatureValid::assertion())
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature))
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic)
}

/// Accepts a server only if it presents exactly the expected identity key.
#[derive(Debug)]
pub(crate) struct PinnedServerVerifier {
    expected: IdentityPublicKey,
}

impl PinnedServerVerifier {
    pub(crate) fn new(expected: IdentityPublicKey) -> Arc<Self> {
        Arc::new(PinnedServerVerifier { expected })
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "peer certificate: unexpected intermediates".into(),
            ));
        }
        let presented = certificate_identity(end_entity)?;
        if bool::from(presented.ct_eq(&self.expected)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Lets a connecting node prove its identity, and lets a client connect without one. Which
/// identities may do what is decided above the link, from the roster.
#[derive(Debug)]
pub(crate) struct OptionalClientVerifier;

impl ClientCertVerifier for OptionalClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(rustls::Error::General(
                "peer certificate: unexpected intermediates".into(),
            ));
        }
        certificate_identity(end_entity).map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
