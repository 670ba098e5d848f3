//! The tests' OAuth provider is the one `vault demo` runs: `tokenvault::devprovider`.

pub use tokenvault::devprovider::{CLIENT_ID, CLIENT_SECRET, Fault, OfflineRule, PUBLIC_CLIENT_ID};

pub type FakeOAuth = tokenvault::devprovider::DevProvider;

/// Starts the provider; the test fails if it cannot.
pub fn start(offline_rule: OfflineRule) -> FakeOAuth {
    FakeOAuth::start(offline_rule).expect("start the OAuth provider")
}

/// Makes `fake` trust the service-account key in tests/fixtures.
pub fn trust_fixture_service_account(fake: &FakeOAuth) {
    use ring::signature::KeyPair;
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let key: serde_json::Value =
        serde_json::from_str(include_str!("../../fixtures/service-account.json")).unwrap();
    let der = PrivatePkcs8KeyDer::from_pem_slice(key["private_key"].as_str().unwrap().as_bytes())
        .unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    fake.trust_service_account(
        key["client_email"].as_str().unwrap(),
        pair.public_key().as_ref().to_vec(),
    );
}
