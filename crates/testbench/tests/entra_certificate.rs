//! Entra emulator: client assertions signed with a registered certificate, shaped exactly as
//! azure_identity's `ClientCertificateCredential` sends them (RS256, standard-base64 SHA-1
//! `x5t`, `aud` = token endpoint, `iss` = `sub` = client id), over real HTTPS.
#![allow(clippy::too_many_lines)] // one scenario: the accepted shape, then each forgery in turn

use std::time::Duration;

use base64::Engine as _;
use rcgen::{CertificateParams, KeyPair, PKCS_RSA_SHA256, SigningKey as _};
use serde_json::{Value, json};
use testbench::{EntraClient, EntraCredential, Testbench, TestbenchConfig};

const CLIENT_ID: &str = "testbench-cert-client";
const SCOPE: &str = "https://monitor.azure.com/.default";

struct Identity {
    key: KeyPair,
    der: Vec<u8>,
}

fn identity() -> Identity {
    let key = KeyPair::generate_for(&PKCS_RSA_SHA256).expect("RSA key generation (aws-lc-rs)");
    let cert = CertificateParams::new(vec!["testbench-cert-client".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Identity {
        key,
        der: cert.der().to_vec(),
    }
}

fn thumbprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An assertion as azure_identity builds it, signed by `signer` with header `x5t`.
fn assertion(key: &KeyPair, x5t: &str, claims: &Value) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "x5t": x5t});
    let signed = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = key.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", b64url(&signature))
}

fn claims(aud: &str) -> Value {
    let now = now_secs();
    json!({"aud": aud, "exp": now + 300, "iss": CLIENT_ID, "jti": "00000000-0000-0000-0000-000000000001", "nbf": now, "sub": CLIENT_ID})
}

async fn start(registered: &Identity) -> (Testbench, reqwest::Client, String) {
    let mut config = TestbenchConfig::default();
    config.entra.clients.push(EntraClient {
        client_id: CLIENT_ID.to_owned(),
        credential: EntraCredential::Certificate {
            certificate_der: registered.der.clone(),
        },
    });
    let tb = Testbench::start(config).await.unwrap();
    let ca = reqwest::Certificate::from_pem(tb.ca_pem().as_bytes()).unwrap();
    let c = reqwest::Client::builder()
        .tls_certs_only([ca])
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let endpoint = tb
        .url()
        .join(&format!("{}/oauth2/v2.0/token", tb.entra().tenant_id()))
        .unwrap()
        .to_string();
    (tb, c, endpoint)
}

async fn post(c: &reqwest::Client, endpoint: &str, assertion: &str) -> (u16, Value) {
    let resp = c
        .post(endpoint)
        .form(&[
            ("client_id", CLIENT_ID),
            ("scope", SCOPE),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn assert_refused(outcome: &(u16, Value), code: u64) {
    let (status, body) = outcome;
    assert_eq!(*status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert_eq!(body["error_codes"], json!([code]), "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with(&format!("AADSTS{code}:")),
        "{body}"
    );
}

#[tokio::test]
async fn signed_certificate_assertion_gets_a_token_and_forgeries_are_refused() {
    let registered = identity();
    let (tb, c, endpoint) = start(&registered).await;
    let x5t = thumbprint(&registered.der);

    // Accepted: the exact shape azure_identity sends.
    let (status, body) = post(
        &c,
        &endpoint,
        &assertion(&registered.key, &x5t, &claims(&endpoint)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(tb.entra().tokens_issued(), 1);
    // The base64url thumbprint of RFC 7515 is accepted too.
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        &registered.der,
    );
    let x5t_url = b64url(digest.as_ref());
    let (status, body) = post(
        &c,
        &endpoint,
        &assertion(&registered.key, &x5t_url, &claims(&endpoint)),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Tampered: claims changed after signing (sub/iss still right, so only the signature fails).
    let good = assertion(&registered.key, &x5t, &claims(&endpoint));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged = claims(&endpoint);
    forged["exp"] = json!(now_secs() + 86_400);
    parts[1] = b64url(forged.to_string().as_bytes());
    assert_refused(&post(&c, &endpoint, &parts.join(".")).await, 700_027);

    // Signed by another key but presenting the registered thumbprint: signature check fails.
    let other = identity();
    assert_refused(
        &post(
            &c,
            &endpoint,
            &assertion(&other.key, &x5t, &claims(&endpoint)),
        )
        .await,
        700_027,
    );
    // Another certificate's thumbprint: key not found.
    let outcome = post(
        &c,
        &endpoint,
        &assertion(&other.key, &thumbprint(&other.der), &claims(&endpoint)),
    )
    .await;
    assert_refused(&outcome, 700_027);
    assert!(
        outcome.1["error_description"]
            .as_str()
            .unwrap()
            .contains("The key was not found"),
        "{}",
        outcome.1
    );

    // Wrong audience (correctly signed): 700023.
    assert_refused(
        &post(
            &c,
            &endpoint,
            &assertion(
                &registered.key,
                &x5t,
                &claims("https://login.microsoftonline.com/other/oauth2/v2.0/token"),
            ),
        )
        .await,
        700_023,
    );

    // Expired (correctly signed): 700024.
    let mut expired = claims(&endpoint);
    expired["exp"] = json!(now_secs() - 10);
    assert_refused(
        &post(&c, &endpoint, &assertion(&registered.key, &x5t, &expired)).await,
        700_024,
    );

    // iss/sub of another application: 700021.
    let mut foreign = claims(&endpoint);
    foreign["iss"] = json!("someone-else");
    foreign["sub"] = json!("someone-else");
    assert_refused(
        &post(&c, &endpoint, &assertion(&registered.key, &x5t, &foreign)).await,
        700_021,
    );

    // Not RS256: refused before any key lookup.
    let header = json!({"alg": "none", "x5t": x5t});
    let unsigned = format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims(&endpoint).to_string().as_bytes())
    );
    assert_refused(&post(&c, &endpoint, &unsigned).await, 700_027);

    // Not a JWT at all.
    assert_refused(&post(&c, &endpoint, "not-a-jwt").await, 50_027);

    // A client secret does not authenticate a certificate client.
    let resp = c
        .post(&endpoint)
        .form(&[
            ("client_id", CLIENT_ID),
            ("scope", SCOPE),
            ("client_secret", "guess"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error_codes"], json!([7_000_218]), "{body}");

    assert_eq!(tb.entra().tokens_issued(), 2);
}
