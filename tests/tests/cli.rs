//! The CLI's contract with operators: `validate` lists every error with its location and
//! exits 78; a valid config prints with its secrets redacted.

use std::process::Command;

use e2e::bridge_bin;

#[test]
fn validate_lists_every_error_with_its_location_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "falcon:\n  cloud: us-1\n  client_id: abc\n  client_secret: inline-secret-value\n  app_id: not_valid!\n  colour: blue\nsentinel:\n  endpoint: http://insecure.example\n",
    )
    .unwrap();
    let output = Command::new(bridge_bin())
        .args(["validate", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "stderr:\n{stderr}");
    // Every error is reported, each with file:line:column.
    for needle in ["bad.yaml:4:", "client_secret", "bad.yaml:6:", "colour"] {
        assert!(stderr.contains(needle), "missing {needle:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("inline-secret-value"),
        "an inline secret must never be echoed:\n{stderr}"
    );
}

#[test]
fn validate_prints_a_valid_config_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, "file-secret-value").unwrap();
    let path = dir.path().join("good.yaml");
    std::fs::write(
        &path,
        format!(
            "falcon:\n  cloud: eu-1\n  client_id: abc\n  client_secret: {{ file: {} }}\n  app_id: fsb01\nbuffer:\n  type: disk\n  path: {}/buffer\nsentinel:\n  endpoint: https://dce.westeurope-1.ingest.monitor.azure.com\n  dcr_immutable_id: dcr-0123456789abcdef0123456789abcdef\n  credential:\n    type: workload_identity\ndead_letter:\n  type: directory\n  path: {}/dlq\n",
            secret_file.display(),
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    let output = Command::new(bridge_bin())
        .args(["validate", "--config"])
        .arg(&path)
        .env_clear()
        .env("FALCON_CLIENT_SECRET", "env-secret-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("api.eu-1.crowdstrike.com") || stdout.contains("eu-1"),
        "{stdout}"
    );
    assert!(!stdout.contains("file-secret-value"), "{stdout}");
    assert!(stdout.contains("file:"), "the reference is shown: {stdout}");
}
