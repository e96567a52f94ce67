use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;

/// The smallest valid config: only the required keys.
const MIN: &str = "\
    falcon:
  client_id: abc
  client_secret: { env: FALCON_CLIENT_SECRET }
  app_id: fsbridge01
sentinel:
  endpoint: https://dce.eastus-1.ingest.monitor.azure.com
  dcr_immutable_id: dcr-0123456789abcdef0123456789abcdef
  credential:
    type: workload_identity
";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn ok(yaml: &str) -> Config {
    match load_str(yaml, "t.yaml", &env(&[])) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

fn errors(yaml: &str) -> ConfigErrors {
    match load_str(yaml, "t.yaml", &env(&[])) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(errors) => errors,
    }
}

/// `MIN` with `extra` inserted after line `after` (1-based), for precise positions.
fn with_line(after: usize, extra: &str) -> String {
    let mut lines: Vec<&str> = MIN.lines().collect();
    lines.insert(after, extra);
    lines.join("\n") + "\n"
}

fn single(yaml: &str) -> ConfigError {
    let errors = errors(yaml);
    assert_eq!(errors.len(), 1, "expected one error, got:\n{errors}");
    errors.0[0].clone()
}

fn repo_config_files() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut files = vec![root.join("reference.yaml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("examples"))
        .expect("config/examples exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 3,
        "expected the examples disk, kafka, event-hubs: {examples:?}"
    );
    files.extend(examples);
    files
}

#[test]
fn every_repo_config_file_loads_with_an_empty_environment() {
    for file in repo_config_files() {
        if let Err(errors) = load(&file, &env(&[])) {
            panic!("{} does not validate:\n{errors}", file.display());
        }
    }
}

#[test]
fn printed_config_of_every_repo_file_loads_back_to_the_same_config() {
    for file in repo_config_files() {
        let config = load(&file, &env(&[])).expect("valid");
        let printed = config.redacted_yaml();
        let again = load_str(&printed, "printed", &env(&[])).unwrap_or_else(|e| {
            panic!(
                "printed config of {} does not load:\n{e}\n---\n{printed}",
                file.display()
            )
        });
        assert_eq!(again.redacted_yaml(), printed, "{}", file.display());
        assert_eq!(again.falcon, config.falcon);
        assert_eq!(again.sentinel, config.sentinel);
        assert_eq!(again.buffer, config.buffer);
    }
}

#[test]
fn reference_values_match_the_named_defaults() {
    // The reference file spells out every default; a config with only the required keys
    // must therefore print exactly like the reference loaded without its comments' extras.
    let min = ok(MIN);
    assert_eq!(min.falcon.cloud, Some(FalconCloud::Us1));
    assert_eq!(min.falcon.base_url.as_str(), "https://api.crowdstrike.com/");
    assert_eq!(min.falcon.read_idle_timeout, Duration::from_secs(90));
    assert_eq!(min.falcon.max_event_bytes, 16 * 1024 * 1024);
    assert_eq!(min.falcon.partitions, Partitions::All);
    assert_eq!(min.falcon.start, StartPosition::Earliest);
    assert_eq!(
        min.buffer,
        BufferConfig::Disk(DiskBufferConfig {
            path: "/var/lib/falcon-sentinel-bridge/buffer".into(),
            max_bytes: 10_737_418_240
        })
    );
    assert_eq!(min.sentinel.max_batch_bytes, 1_000_000);
    assert_eq!(min.sentinel.batch_linger, Duration::from_secs(1));
    assert_eq!(min.sentinel.retry_initial, Duration::from_millis(500));
    assert_eq!(min.sentinel.retry_max, Duration::from_mins(1));
    assert_eq!(min.sentinel.scope(), "https://monitor.azure.com/.default");
    assert_eq!(min.shutdown_grace, Duration::from_secs(25));
    assert_eq!(min.admin.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(min.health.interval, Duration::from_mins(1));

    let reference = load(&repo_config_files()[0], &env(&[])).expect("valid");
    assert_eq!(
        reference.falcon,
        min.falcon.clone_with_client_id(&reference.falcon.client_id)
    );
    assert_eq!(reference.buffer, min.buffer);
    assert_eq!(reference.dead_letter, min.dead_letter);
    assert_eq!(reference.admin, min.admin);
    assert_eq!(reference.shutdown_grace, min.shutdown_grace);
    assert_eq!(reference.health, min.health);
    assert_eq!(reference.log, min.log);
    assert_eq!(reference.tls, min.tls);
}

impl FalconConfig {
    fn clone_with_client_id(&self, client_id: &str) -> Self {
        Self {
            client_id: client_id.to_owned(),
            ..self.clone()
        }
    }
}

#[test]
fn unknown_key_at_depth_three_is_reported_with_position_path_and_suggestion() {
    let error = single(&with_line(9, "    tenant_idd: contoso.onmicrosoft.com"));
    assert_eq!(error.kind, ErrorKind::Parse);
    assert_eq!((error.line, error.column), (10, 5));
    assert_eq!(error.path, "sentinel.credential.tenant_idd");
    assert_eq!(error.message, "unknown key `tenant_idd`");
    assert!(
        error
            .hint
            .as_deref()
            .is_some_and(|h| h.starts_with("did you mean `tenant_id`?")),
        "{error}"
    );
    assert!(error.to_string().starts_with(
        "t.yaml:10:5: sentinel.credential.tenant_idd: unknown key `tenant_idd` (hint: did you mean"
    ));
}

#[test]
fn unknown_keys_are_reported_together_with_every_other_error() {
    let yaml = "\
falcon:
  cloud: us-1
  client_id: abc
  client_secret: inline-value
  app_id: not_valid!
  colour:
    nested: blue
sentinel:
  endpoint: http://insecure.example
";
    let errors = errors(yaml);
    let found: Vec<(usize, &str)> = errors
        .errors()
        .iter()
        .map(|e| (e.line, e.path.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (4, "falcon.client_secret"),
            (5, "falcon.app_id"),
            (6, "falcon.colour"),
            (8, "sentinel.dcr_immutable_id"),
            (8, "sentinel.credential"),
            (9, "sentinel.endpoint"),
        ],
        "{errors}"
    );
}

#[test]
fn every_unknown_key_is_reported_at_once() {
    let yaml = "\
falcon:
  clent_id: abc
  client_secret: { env: FALCON_CLIENT_SECRET }
  app_id: fsbridge01
sentinel:
  endpoint: https://dce.example.com
  dcr_immutable_id: dcr-0123456789abcdef0123456789abcdef
  credential: { type: workload_identity, tenant: x }
  batch_linger_secs: 1
buffer: { type: kafka, brokers: [a:1], security: { protocol: ssl, mechanism: plain } }
loggging: { level: info }
";
    let errors = errors(yaml);
    let found: Vec<(usize, usize, &str)> = errors
        .errors()
        .iter()
        .map(|e| (e.line, e.column, e.path.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (2, 3, "falcon.clent_id"),
            (8, 42, "sentinel.credential.tenant"),
            (9, 3, "sentinel.batch_linger_secs"),
            (10, 67, "buffer.security.mechanism"),
            (11, 1, "loggging"),
        ],
        "\n{errors}"
    );
    let suggestions: Vec<Option<&str>> = errors
        .errors()
        .iter()
        .map(|e| {
            e.hint
                .as_deref()
                .and_then(|h| h.strip_prefix("did you mean `")?.split('`').next())
        })
        .collect();
    assert_eq!(
        suggestions,
        [
            Some("client_id"),
            Some("tenant_id"),
            Some("batch_linger_ms"),
            Some("sasl_mechanism"),
            Some("log")
        ]
    );
}

#[test]
fn key_of_another_type_is_rejected_at_the_key() {
    let error = single(&with_line(9, "    resource_id: /subscriptions/x"));
    assert_eq!(
        (error.line, error.column, error.path.as_str()),
        (10, 5, "sentinel.credential.resource_id")
    );
    assert!(
        error
            .message
            .contains("not a key of credential type `workload_identity`"),
        "{error}"
    );
}

#[test]
fn inline_secret_is_rejected_with_a_hint_and_never_echoed() {
    let yaml = MIN.replace("{ env: FALCON_CLIENT_SECRET }", "hunter2-very-secret");
    let error = single(&yaml);
    assert_eq!(
        (error.line, error.column, error.path.as_str()),
        (3, 18, "falcon.client_secret")
    );
    assert!(error.message.contains("cannot be written inline"));
    assert!(
        error
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("{ env: VAR_NAME }"))
    );
    assert!(!error.to_string().contains("hunter2"));
}

#[test]
fn all_semantic_errors_are_reported_at_once_in_file_order() {
    let yaml = "\
        falcon:
  cloud: eu-1
  base_url: https://api.example.com
  client_id: abc
  client_secret: { file: relative/secret }
  app_id: fs-bridge
  read_idle_timeout_secs: 5
sentinel:
  endpoint: http://dce.example.com
  dcr_immutable_id: dcr-123
  max_concurrency: 0
  gzip_level: 13
  credential:
    type: managed_identity
    client_id: 00000000-0000-0000-0000-000000000000
    object_id: 00000000-0000-0000-0000-000000000001
admin:
  listen: localhost
";
    let errors = errors(yaml);
    let paths: Vec<&str> = errors.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "falcon.base_url",
            "falcon.client_secret.file",
            "falcon.app_id",
            "falcon.read_idle_timeout_secs",
            "sentinel.endpoint",
            "sentinel.dcr_immutable_id",
            "sentinel.max_concurrency",
            "sentinel.gzip_level",
            "sentinel.credential",
            "admin.listen",
        ],
        "\n{errors}"
    );
    assert!(
        errors
            .errors()
            .iter()
            .all(|e| e.kind == ErrorKind::Invalid && e.line > 0 && e.column > 0)
    );
    // Display: one error per line, each with file:line:column.
    let text = errors.to_string();
    assert_eq!(text.lines().count(), errors.len());
    assert!(text.lines().all(|l| l.starts_with("t.yaml:")), "{text}");
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with("t.yaml:3:3: falcon.base_url: ")),
        "{text}"
    );
}

#[test]
fn missing_required_keys_are_all_reported_at_their_parent() {
    let errors = errors("log:\n  level: info\n");
    let paths: Vec<&str> = errors.errors().iter().map(|e| e.path.as_str()).collect();
    for required in [
        "falcon.client_id",
        "falcon.client_secret",
        "falcon.app_id",
        "sentinel.endpoint",
        "sentinel.dcr_immutable_id",
        "sentinel.credential",
    ] {
        assert!(
            paths.contains(&required),
            "{required} missing from\n{errors}"
        );
    }
    assert!(
        errors
            .errors()
            .iter()
            .all(|e| e.message == "required key is missing" && (e.line, e.column) == (1, 1))
    );
}

#[test]
fn interpolation_substitutes_defaults_and_escapes() {
    let yaml = "\
        falcon:
  client_id: ${CID}
  client_secret: { env: FALCON_CLIENT_SECRET }
  app_id: ${APP:-fsdefault}
  member_cid: null
  proxy_url: \"http://proxy.example.com/$${literal}\"
sentinel:
  endpoint: ${EP:-https://dce.example.com}
  dcr_immutable_id: dcr-0123456789abcdef0123456789abcdef
  credential: { type: workload_identity }
# ${NOT_SET} in a whole-line comment is left alone
";
    let config = load_str(yaml, "t.yaml", &env(&[("CID", "from-env"), ("EP", "")])).expect("valid");
    assert_eq!(config.falcon.client_id, "from-env");
    assert_eq!(config.falcon.app_id, "fsdefault");
    assert_eq!(
        config.sentinel.endpoint.as_str(),
        "https://dce.example.com/"
    );
    let proxy = config.falcon.proxy_url.as_ref().expect("proxy");
    assert_eq!(proxy.expose().path(), "/$%7Bliteral%7D");
}

#[test]
fn unset_variable_is_an_error_at_its_position_and_all_are_reported() {
    let yaml = MIN
        .replace("client_id: abc", "client_id: ${FALCON_CLIENT_ID}")
        .replace("app_id: fsbridge01", "app_id: x${A}${B:-ok}${C}");
    let errors = errors(&yaml);
    let found: Vec<(usize, usize, &str)> = errors
        .errors()
        .iter()
        .map(|e| (e.line, e.column, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (2, 14, "environment variable FALCON_CLIENT_ID is not set"),
            (4, 12, "environment variable A is not set"),
            (4, 24, "environment variable C is not set"),
        ]
    );
    assert!(
        errors.errors()[0]
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("${FALCON_CLIENT_ID:-value}"))
    );
    assert!(
        errors
            .errors()
            .iter()
            .all(|e| e.kind == ErrorKind::Interpolation)
    );
}

#[test]
fn interpolated_values_with_line_breaks_and_bad_placeholders_are_rejected() {
    let yaml = MIN.replace("client_id: abc", "client_id: ${CID}");
    let error = match load_str(&yaml, "t.yaml", &env(&[("CID", "a\nb: c")])) {
        Err(errors) => errors.0[0].clone(),
        Ok(_) => panic!("a newline must not be interpolated"),
    };
    assert_eq!((error.line, error.column), (2, 14));
    assert!(error.message.contains("line break"));

    let error = single(&MIN.replace("client_id: abc", "client_id: ${1BAD}"));
    assert!(error.message.contains("not a valid placeholder"), "{error}");
    let error = single(&MIN.replace("client_id: abc", "client_id: ${OPEN"));
    assert!(error.message.contains("not closed"), "{error}");
}

#[test]
fn columns_after_an_interpolation_point_at_the_source() {
    // `${V}` (4 chars) becomes `toolongvalue` (12 chars): the error about `bogus` must still
    // point at column 25 of the source line, where the key is written.
    let yaml = format!("{MIN}health: {{ stream: ${{V}}, bogus: 1 }}\n");
    let error = match load_str(&yaml, "t.yaml", &env(&[("V", "toolongvalue")])) {
        Err(errors) => errors.0[0].clone(),
        Ok(_) => panic!("must fail"),
    };
    assert_eq!((error.line, error.column), (10, 25), "{error}");
}

#[test]
fn secrets_never_appear_in_debug_display_or_printed_config() {
    const VALUE: &str = "s3cr3t-value-7f1c";
    let yaml = MIN.replace(
        "    type: workload_identity\n",
        "    type: client_secret
    tenant_id: contoso.onmicrosoft.com
    client_id: 00000000-0000-0000-0000-000000000000
    client_secret: { env: AZURE_CLIENT_SECRET }
",
    );
    let test_env = env(&[
        ("FALCON_CLIENT_SECRET", VALUE),
        ("AZURE_CLIENT_SECRET", VALUE),
    ]);
    let config = load_str(&yaml, "t.yaml", &test_env).expect("valid");
    let secret = config
        .falcon
        .client_secret
        .resolve(&test_env)
        .expect("resolves");
    assert_eq!(secret.expose(), VALUE);
    assert_eq!(format!("{secret}"), "[redacted]");
    assert_eq!(format!("{secret:?}"), "[redacted]");
    assert!(!format!("{config:?}").contains(VALUE));
    let printed = config.redacted_yaml();
    assert!(!printed.contains(VALUE));
    assert!(printed.contains("env: FALCON_CLIENT_SECRET"), "{printed}");
    assert!(printed.contains("env: AZURE_CLIENT_SECRET"), "{printed}");
}

#[test]
fn proxy_password_is_masked_in_debug_and_printed_config() {
    let yaml = with_line(4, "  proxy_url: http://user:pa55word@proxy.internal:3128");
    let config = ok(&yaml);
    let proxy = config.falcon.proxy_url.as_ref().expect("proxy");
    assert_eq!(proxy.expose().password(), Some("pa55word"));
    assert!(!format!("{config:?}").contains("pa55word"));
    assert!(!config.redacted_yaml().contains("pa55word"));
}

#[test]
fn secret_resolution_reports_unset_and_reads_files_without_the_final_newline() {
    let unset = SecretRef::Env("NOPE".to_owned())
        .resolve(&env(&[]))
        .unwrap_err();
    assert!(matches!(unset, SecretError::EnvUnset { ref name } if name == "NOPE"));
    let empty = SecretRef::Env("E".to_owned())
        .resolve(&env(&[("E", "")]))
        .unwrap_err();
    assert!(matches!(empty, SecretError::Empty { .. }));

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("secret");
    std::fs::write(&file, "line-value\n").expect("write");
    let secret = SecretRef::File(file.clone())
        .resolve(&env(&[]))
        .expect("reads");
    assert_eq!(secret.expose(), "line-value");
    std::fs::write(
        &file,
        vec![b'x'; usize::try_from(MAX_SECRET_FILE_BYTES).expect("fits") + 1],
    )
    .expect("write");
    assert!(matches!(
        SecretRef::File(file).resolve(&env(&[])),
        Err(SecretError::TooLarge { .. })
    ));
}

#[test]
fn secret_reference_shape_is_checked() {
    let error = single(&MIN.replace("{ env: FALCON_CLIENT_SECRET }", "{ file: secrets/falcon }"));
    assert_eq!(error.path, "falcon.client_secret.file");
    assert!(error.message.contains("not an absolute path"));
    let error = single(&MIN.replace("{ env: FALCON_CLIENT_SECRET }", "{ env: \"\" }"));
    assert_eq!(error.path, "falcon.client_secret.env");
    let error = single(&MIN.replace("{ env: FALCON_CLIENT_SECRET }", "{ env: A, file: /b }"));
    assert!(error.message.contains("not both"));
    let error = single(&MIN.replace("{ env: FALCON_CLIENT_SECRET }", "{ vault: x }"));
    assert_eq!(error.path, "falcon.client_secret.vault");
}

#[test]
fn endpoints_must_be_https() {
    for (key, line) in [
        (
            "sentinel.endpoint",
            "  endpoint: http://dce.eastus-1.ingest.monitor.azure.com",
        ),
        (
            "sentinel.authority_host",
            "  authority_host: http://login.microsoftonline.com",
        ),
        ("sentinel.audience", "  audience: http://monitor.azure.com"),
    ] {
        let yaml = with_line(7, line);
        let yaml = if key == "sentinel.endpoint" {
            yaml.replace(
                "  endpoint: https://dce.eastus-1.ingest.monitor.azure.com\n",
                "",
            )
        } else {
            yaml
        };
        let error = single(&yaml);
        assert_eq!(error.path, key);
        assert!(error.message.contains("must use https"), "{error}");
    }
    let error = single(&with_line(4, "  base_url: http://api.example.com"));
    assert_eq!(error.path, "falcon.base_url");
    let error = single(&with_line(
        7,
        "  authority_host: https://user:pw@login.example.com",
    ));
    assert!(error.message.contains("credentials"), "{error}");
    assert!(!error.to_string().contains("pw@"));
    let config = ok(&with_line(4, "  base_url: https://127.0.0.1:8443"));
    assert_eq!(config.falcon.base_url.as_str(), "https://127.0.0.1:8443/");
    assert_eq!(config.falcon.cloud, None);
    assert!(
        config
            .redacted_yaml()
            .contains("base_url: https://127.0.0.1:8443/")
    );
}

#[test]
fn app_id_rules() {
    for good in ["a", "fsbridge01", "ABCdef0123456789ABCdef0123456789"] {
        ok(&MIN.replace("app_id: fsbridge01", &format!("app_id: {good}")));
    }
    for bad in [
        "fs-bridge",
        "fs_bridge",
        "ABCdef0123456789ABCdef01234567890",
        "\"\"",
        "brücke",
    ] {
        let error = single(&MIN.replace("app_id: fsbridge01", &format!("app_id: {bad}")));
        assert_eq!(
            (error.path.as_str(), error.line, error.column),
            ("falcon.app_id", 4, 11),
            "{bad}: {error}"
        );
    }
}

#[test]
fn ranges_are_enforced_with_the_reason() {
    let cases = [
        (
            4,
            "  read_idle_timeout_secs: 9",
            "falcon.read_idle_timeout_secs",
        ),
        (
            4,
            "  request_timeout_secs: 0",
            "falcon.request_timeout_secs",
        ),
        (7, "  max_batch_bytes: 1000001", "sentinel.max_batch_bytes"),
        (7, "  max_concurrency: 65", "sentinel.max_concurrency"),
        (7, "  gzip_level: 0", "sentinel.gzip_level"),
        (7, "  batch_linger_ms: 60001", "sentinel.batch_linger_ms"),
        (9, "shutdown_grace_secs: 0", "shutdown_grace_secs"),
    ];
    for (after, line, path) in cases {
        let error = single(&with_line(after, line));
        assert_eq!(error.path, path);
        assert!(error.message.contains("out of range"), "{error}");
        assert!(error.hint.is_some(), "{error}");
    }
    // Compressed mode allows up to 50 MiB decompressed.
    let config = ok(&with_line(
        7,
        "  batch_limit: compressed\n  max_batch_bytes: 20000000",
    ));
    assert_eq!(config.sentinel.max_batch_bytes, 20_000_000);
    assert_eq!(config.sentinel.batch_limit, BatchLimit::Compressed);
}

#[test]
fn type_errors_carry_friendly_messages() {
    let error = single(&with_line(4, "  read_idle_timeout_secs: 90s"));
    assert_eq!(
        (error.line, error.column, error.path.as_str()),
        (5, 27, "falcon.read_idle_timeout_secs")
    );
    assert!(
        error.message.contains("whole number")
            && error.hint.as_deref().is_some_and(|h| h.contains("unit")),
        "{error}"
    );
    let error = single(&with_line(4, "  region_autodiscovery: yes"));
    assert_eq!(error.message, "expected `true` or `false`");
    let error = single(&with_line(4, "  cloud: us-3"));
    assert_eq!((error.line, error.column), (5, 10));
    assert!(
        error
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("us-gov-2")),
        "{error}"
    );
    let error = single(&with_line(4, "  app_id: again"));
    assert_eq!(
        (error.line, error.column, error.path.as_str()),
        (5, 3, "falcon.app_id")
    );
    assert!(error.message.contains("appears twice"), "{error}");
    let error = single("");
    assert!(error.message.contains("empty"));
}

#[test]
fn partitions_start_and_streams() {
    let config = ok(&with_line(
        4,
        "  partitions: [3, 0]\n  start: { offset: 42 }",
    ));
    assert_eq!(config.falcon.partitions, Partitions::Only(vec![0, 3]));
    assert!(config.falcon.partitions.includes(3) && !config.falcon.partitions.includes(1));
    assert_eq!(config.falcon.start, StartPosition::Offset(42));
    let error = single(&with_line(4, "  partitions: [1, 1]"));
    assert!(error.message.contains("twice"));
    let error = single(&with_line(4, "  partitions: some"));
    assert_eq!(error.path, "falcon.partitions");

    let config = ok(&with_line(
        7,
        "  streams: { EppDetectionSummaryEvent: Custom-FalconDetections }",
    ));
    assert_eq!(
        config.sentinel.stream_for("eppdetectionsummaryevent"),
        "Custom-FalconDetections"
    );
    assert_eq!(config.sentinel.stream_for("Other"), "Custom-FalconEvents");
    let error = single(&with_line(7, "  streams: { A: FalconDetections }"));
    assert_eq!(error.path, "sentinel.streams.A");
}

#[test]
fn kafka_and_event_hubs_rules() {
    let base =
        MIN.to_owned() + "buffer:\n  type: kafka\n  brokers: [ns.servicebus.windows.net:9093]\n";
    let config = ok(&(base.clone()
        + "  security:\n    protocol: sasl_ssl\n    event_hubs_connection_string: { env: EH }\n"));
    let BufferConfig::Kafka(kafka) = &config.buffer else {
        panic!("kafka")
    };
    assert_eq!(kafka.security.sasl_mechanism, Some(SaslMechanism::Plain));
    assert_eq!(kafka.topic, "falcon-events");
    assert_eq!(kafka.security.oauth_scope, None);

    // OAUTHBEARER: the scope defaults to the namespace of the first broker.
    let config =
        ok(&(base.clone()
            + "  security:\n    protocol: sasl_ssl\n    sasl_mechanism: oauthbearer\n"));
    let BufferConfig::Kafka(kafka) = &config.buffer else {
        panic!("kafka")
    };
    assert_eq!(
        kafka.security.oauth_scope.as_deref(),
        Some("https://ns.servicebus.windows.net/.default")
    );
    let config = ok(&(base.clone()
        + "  security:\n    protocol: sasl_ssl\n    sasl_mechanism: oauthbearer\n    \
           oauth_scope: https://eh.example/.default\n"));
    let BufferConfig::Kafka(kafka) = &config.buffer else {
        panic!("kafka")
    };
    assert_eq!(
        kafka.security.oauth_scope.as_deref(),
        Some("https://eh.example/.default")
    );

    let error = single(
        &(base.clone()
            + "  security:\n    protocol: ssl\n    event_hubs_connection_string: { env: EH }\n"),
    );
    assert_eq!(error.path, "buffer.security.protocol");
    let errs = errors(
        &(base.clone()
            + "  security:\n    protocol: sasl_ssl\n    sasl_mechanism: scram-sha-512\n"),
    );
    let paths: Vec<&str> = errs.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["buffer.security.username", "buffer.security.password"],
        "{errs}"
    );
    let errors = errors(&(base.clone() + "  path: /x\n  security:\n    username: u\n"));
    let paths: Vec<&str> = errors.errors().iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["buffer.path", "buffer.security.username"],
        "{errors}"
    );
    let error = single(&(MIN.to_owned() + "buffer:\n  type: kafka\n  brokers: [nohost]\n"));
    assert_eq!(error.path, "buffer.brokers[0]");
    let error = single(
        &(base.clone()
            + "  security:\n    protocol: sasl_ssl\n    sasl_mechanism: oauthbearer\n    \
               username: u\n"),
    );
    assert_eq!(error.path, "buffer.security.username");
    assert!(error.message.contains("oauthbearer"), "{error}");
    let error = single(
        &(base.clone()
            + "  security:\n    protocol: sasl_ssl\n    sasl_mechanism: oauthbearer\n    \
               oauth_scope: https://ns.servicebus.windows.net\n"),
    );
    assert_eq!(error.path, "buffer.security.oauth_scope");
    let error = single(
        &(base.clone() + "  security:\n    protocol: ssl\n    oauth_scope: https://x/.default\n"),
    );
    assert_eq!(error.path, "buffer.security.oauth_scope");
}

#[test]
fn kafka_dead_letter_topic_rules() {
    let kafka = MIN.to_owned() + "buffer:\n  type: kafka\n  brokers: [kafka-0:9092]\n";
    // Default: a directory, even with the Kafka buffer.
    assert!(matches!(
        ok(&kafka).dead_letter,
        DeadLetterConfig::Directory { .. }
    ));
    let config = ok(&(kafka.clone() + "dead_letter:\n  type: kafka\n"));
    assert_eq!(
        config.dead_letter,
        DeadLetterConfig::Kafka {
            topic: "falcon-dead-letters".to_owned(),
            max_record_bytes: 512 * 1024,
        }
    );
    let config = ok(&(kafka.clone()
        + "dead_letter:\n  type: kafka\n  topic: dlq.falcon\n  max_record_bytes: 4096\n"));
    assert_eq!(
        config.dead_letter,
        DeadLetterConfig::Kafka {
            topic: "dlq.falcon".to_owned(),
            max_record_bytes: 4096,
        }
    );

    // Only with the Kafka buffer, said with a hint.
    let error = single(&(MIN.to_owned() + "dead_letter:\n  type: kafka\n"));
    assert_eq!(error.path, "dead_letter.type");
    assert!(error.message.contains("buffer.type: kafka"), "{error}");
    assert!(
        error
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("directory")),
        "{error}"
    );

    // The topic is a valid Kafka name, distinct from the buffer's topics.
    for topic in ["falcon-events", "falcon-events-checkpoints"] {
        let error =
            single(&(kafka.clone() + &format!("dead_letter:\n  type: kafka\n  topic: {topic}\n")));
        assert_eq!(error.path, "dead_letter.topic");
        assert!(error.message.contains("buffer.topic"), "{error}");
    }
    let error = single(&(kafka.clone() + "dead_letter:\n  type: kafka\n  topic: \"bad topic\"\n"));
    assert_eq!(error.path, "dead_letter.topic");

    // Keys of the other kind are named.
    let error = single(&(kafka.clone() + "dead_letter:\n  type: kafka\n  path: /x\n"));
    assert_eq!(error.path, "dead_letter.path");
    let error = single(&(kafka + "dead_letter:\n  topic: t\n"));
    assert_eq!(error.path, "dead_letter.topic");
    assert!(error.message.contains("directory"), "{error}");
}

#[test]
fn kafka_static_membership_and_librdkafka_options() {
    let base = MIN.to_owned() + "buffer:\n  type: kafka\n  brokers: [kafka-0:9092]\n";
    let config = ok(&(base.clone()
        + "  group_instance_id: bridge-0\n  librdkafka_options:\n    session.timeout.ms: 30000\n    \
           client.rack: \"eu-1a\"\n    socket.keepalive.enable: true\n"));
    let BufferConfig::Kafka(kafka) = &config.buffer else {
        panic!("kafka")
    };
    assert_eq!(kafka.group_instance_id.as_deref(), Some("bridge-0"));
    let options: Vec<(&str, &str)> = kafka
        .librdkafka_options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        options,
        [
            ("client.rack", "eu-1a"),
            ("session.timeout.ms", "30000"),
            ("socket.keepalive.enable", "true")
        ]
    );

    // What the guarantee rests on, what has a key of its own, and secrets are refused,
    // all reported together.
    let errs = errors(
        &(base.clone()
            + "  group_instance_id: \"bad id\"\n  librdkafka_options:\n    acks: 1\n    \
               enable.auto.commit: true\n    sasl.password: hunter2\n    group.instance.id: x\n"),
    );
    let mut paths: Vec<&str> = errs.errors().iter().map(|e| e.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "buffer.group_instance_id",
            "buffer.librdkafka_options.acks",
            "buffer.librdkafka_options.enable.auto.commit",
            "buffer.librdkafka_options.group.instance.id",
            "buffer.librdkafka_options.sasl.password",
        ],
        "{errs}"
    );
    assert!(!errs.to_string().contains("hunter2"), "{errs}");

    // Kafka keys under a disk buffer are named.
    let error = single(&(MIN.to_owned() + "buffer:\n  group_instance_id: a\n"));
    assert_eq!(error.path, "buffer.group_instance_id");
}

#[test]
fn check_files_reports_missing_and_non_pem_files_with_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.pem");
    std::fs::write(
        &good,
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let der = dir.path().join("ca.der");
    std::fs::write(&der, [0x30_u8, 0x82, 0x01]).expect("write");
    let missing = dir.path().join("missing.pem");
    let yaml = format!(
        "{MIN}tls:\n  extra_ca_files:\n    - {}\n    - {}\n    - {}\n",
        good.display(),
        der.display(),
        missing.display()
    );
    let config = ok(&yaml);
    let errors = config.check_files().expect_err("two bad files");
    let found: Vec<(&str, usize, usize)> = errors
        .errors()
        .iter()
        .map(|e| (e.path.as_str(), e.line, e.column))
        .collect();
    assert_eq!(
        found,
        [
            ("tls.extra_ca_files[1]", 13, 7),
            ("tls.extra_ca_files[2]", 14, 7)
        ],
        "{errors}"
    );
    assert!(errors.errors().iter().all(|e| e.kind == ErrorKind::File));

    let ok_config = ok(&format!(
        "{MIN}tls:\n  extra_ca_files: [{}]\n",
        good.display()
    ));
    ok_config.check_files().expect("good file passes");
}

#[test]
fn unreadable_config_file_is_a_read_error() {
    let error =
        load(std::path::Path::new("/nonexistent/bridge.yaml"), &env(&[])).expect_err("missing");
    assert_eq!(error.errors()[0].kind, ErrorKind::Read);
    assert_eq!(error.exit_code(), 66);
    assert_eq!(
        errors(MIN.replace("fsbridge01", "x-y").as_str()).exit_code(),
        64
    );
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/bridge.yaml: cannot open the config file")
    );
}

#[test]
fn empty_sections_take_defaults_and_other_shapes_are_explained() {
    let config = ok(&format!("{MIN}tls:\nhealth:\n"));
    assert!(config.tls.extra_ca_files.is_empty());
    assert!(config.health.enabled);

    let error = single(&format!("{MIN}---\nfalcon: {{}}\n"));
    assert_eq!(
        (error.line, error.message.as_str()),
        (11, "the file holds more than one YAML document")
    );
    let error = single("falcon: [1]\n");
    assert_eq!(
        (error.line, error.column, error.path.as_str()),
        (1, 9, "falcon")
    );
    assert_eq!(error.message, "expected a section of `key: value` entries");
    let error = single(&format!("{MIN}log: {{ level: 'info,,=x' }}\n"));
    assert_eq!(
        (error.line, error.column, error.path.as_str()),
        (10, 15, "log.level")
    );
    // tracing-subscriber's parser panics on a multi-byte character (fuzz finding): an error.
    let error = single(&(MIN.to_owned() + "log: { level: 'z}[\u{18e}{{a' }\n"));
    assert_eq!(error.path, "log.level");
    assert!(error.message.contains("ASCII"), "{error}");
}

/// `MIN` with a `client_certificate` credential; `password` is the extra last line, if any.
fn certificate_yaml(certificate: &str, password: Option<&str>) -> String {
    let mut credential = format!(
        "    type: client_certificate
    tenant_id: contoso.onmicrosoft.com
    client_id: 00000000-0000-0000-0000-000000000000
    certificate: {certificate}
"
    );
    if let Some(p) = password {
        credential = format!("{credential}    password: {p}\n");
    }
    MIN.replace("    type: workload_identity\n", &credential)
}

#[test]
fn client_certificate_validates_and_wiring_reads_the_file_at_start() {
    const PASSWORD: &str = "pfx-pa55-9c1e";
    let dir = tempfile::tempdir().expect("tempdir");
    let pfx = dir.path().join("client.pfx");
    // Binary, not UTF-8, ending in a line break that must be kept.
    let bytes: Vec<u8> = vec![0x30, 0x82, 0xff, 0x00, 0xfe, b'\n'];
    std::fs::write(&pfx, &bytes).expect("write");
    let yaml = certificate_yaml(
        &format!("{{ file: {} }}", pfx.display()),
        Some("{ env: AZURE_CLIENT_CERTIFICATE_PASSWORD }"),
    );
    let test_env = env(&[
        ("FALCON_CLIENT_SECRET", "x"),
        ("AZURE_CLIENT_CERTIFICATE_PASSWORD", PASSWORD),
    ]);
    let config = load_str(&yaml, "t.yaml", &test_env).expect("valid");
    assert_eq!(
        config.sentinel.credential,
        CredentialConfig::ClientCertificate {
            tenant_id: "contoso.onmicrosoft.com".to_owned(),
            client_id: "00000000-0000-0000-0000-000000000000".to_owned(),
            certificate: SecretRef::File(pfx.clone()),
            password: Some(SecretRef::Env(
                "AZURE_CLIENT_CERTIFICATE_PASSWORD".to_owned()
            )),
        }
    );
    config.check_files().expect("the certificate file exists");
    let printed = config.redacted_yaml();
    assert!(printed.contains("type: client_certificate"), "{printed}");
    assert!(
        printed.contains("env: AZURE_CLIENT_CERTIFICATE_PASSWORD"),
        "{printed}"
    );
    assert!(!printed.contains(PASSWORD));
    assert!(!format!("{config:?}").contains(PASSWORD));
    // The printed config loads back to the same config.
    let again = load_str(&printed, "printed.yaml", &test_env).expect("printed loads");
    assert_eq!(again.sentinel.credential, config.sentinel.credential);

    let spec = crate::wiring::credential(&config, &test_env).expect("resolves");
    let shown = format!("{spec:?}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    let sentinel_ingest::CredentialSpec::ClientCertificate {
        certificate,
        password,
        ..
    } = spec
    else {
        panic!("expected a client certificate spec, got {shown}");
    };
    assert_eq!(certificate, bytes, "read verbatim");
    assert_eq!(password.as_deref(), Some(PASSWORD));

    // Without a password; a missing file is reported by check_files and by wiring.
    std::fs::remove_file(&pfx).expect("remove");
    let config = ok(&certificate_yaml(
        &format!("{{ file: {} }}", pfx.display()),
        None,
    ));
    let errors = config.check_files().expect_err("missing certificate");
    assert_eq!(
        errors.errors()[0].path,
        "sentinel.credential.certificate.file"
    );
    assert_eq!(errors.errors()[0].line, 12, "{errors}");
    let error = crate::wiring::credential(&config, &env(&[])).expect_err("no file");
    assert!(
        format!("{error:#}").contains("read sentinel.credential.certificate"),
        "{error:#}"
    );
}

#[test]
fn client_certificate_shape_errors_are_reported() {
    // Binary bundles cannot come from the environment.
    let error = single(&certificate_yaml("{ env: AZURE_CLIENT_CERTIFICATE }", None));
    assert_eq!(error.path, "sentinel.credential.certificate.env");
    assert!(error.message.contains("must be a file"), "{error}");
    // Inline values are refused and never echoed.
    let error = single(&certificate_yaml(
        "{ file: /c.pfx }",
        Some("inline-pfx-password"),
    ));
    assert_eq!(error.path, "sentinel.credential.password");
    assert!(!error.to_string().contains("inline-pfx-password"));
    let error = single(&certificate_yaml("relative/c.pfx", None));
    assert_eq!(error.path, "sentinel.credential.certificate");
    let error = single(&certificate_yaml("{ file: relative/c.pfx }", None));
    assert_eq!(error.path, "sentinel.credential.certificate.file");
    // Missing certificate.
    let yaml = certificate_yaml("{ file: /c.pfx }", None)
        .replace("    certificate: { file: /c.pfx }\n", "");
    let error = single(&yaml);
    assert_eq!(error.path, "sentinel.credential.certificate");
    assert!(error.message.contains("required"), "{error}");
    // Keys of another credential type.
    let error = single(&with_line(9, "    certificate: { file: /c.pfx }"));
    assert_eq!(error.path, "sentinel.credential.certificate");
    assert!(
        error
            .message
            .contains("not a key of credential type `workload_identity`"),
        "{error}"
    );
    let error = single(&certificate_yaml(
        "{ file: /c.pfx }\n    client_secret: { env: S }",
        None,
    ));
    assert_eq!(error.path, "sentinel.credential.client_secret");
    assert!(error.message.contains("client_certificate"), "{error}");
}

#[test]
fn binary_secret_files_are_bounded_and_env_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("big.pfx");
    std::fs::write(
        &file,
        vec![0_u8; usize::try_from(MAX_BINARY_SECRET_FILE_BYTES).expect("fits") + 1],
    )
    .expect("write");
    assert!(matches!(
        SecretRef::File(file.clone()).resolve_bytes(),
        Err(SecretError::TooLarge { .. })
    ));
    std::fs::write(&file, b"").expect("write");
    assert!(matches!(
        SecretRef::File(file).resolve_bytes(),
        Err(SecretError::Empty { .. })
    ));
    assert!(matches!(
        SecretRef::Env("X".to_owned()).resolve_bytes(),
        Err(SecretError::NotAFile { .. })
    ));
}

#[test]
fn kafka_backlog_cap() {
    let base = MIN.to_owned() + "buffer:\n  type: kafka\n  brokers: [kafka-0:9092]\n";
    let kafka = |config: &Config| match &config.buffer {
        BufferConfig::Kafka(k) => k.max_backlog_bytes,
        BufferConfig::Disk(_) => panic!("kafka"),
    };
    assert_eq!(kafka(&ok(&base)), None, "no cap unless set");
    let config = ok(&(base.clone() + "  max_backlog_bytes: 53687091200\n"));
    assert_eq!(kafka(&config), Some(53_687_091_200));

    let error = single(&(base + "  max_backlog_bytes: 1048576\n"));
    assert_eq!(error.path, "buffer.max_backlog_bytes");
    assert!(error.message.contains("out of range"), "{error}");
    // A Kafka key under a disk buffer is named.
    let error = single(&(MIN.to_owned() + "buffer:\n  max_backlog_bytes: 1073741824\n"));
    assert_eq!(error.path, "buffer.max_backlog_bytes");
}
