use super::*;

fn cli(args: &[&str]) -> Cli {
    let mut argv = vec!["orchestratord"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap()
}

fn load_text(text: &str, args: &[&str]) -> Result<Settings, ConfigError> {
    let file = file::parse(text).map_err(|message| ConfigError::Parse {
        origin: "test".into(),
        message,
    })?;
    file.into_settings(&cli(args), Path::new("/opt/orchd"), "test".into())
}

#[test]
fn embedded_default_is_one_mock_pool() {
    let s = Settings::load(&cli(&[]), Path::new("/opt/orchd")).unwrap();
    assert_eq!(s.addr.to_string(), "127.0.0.1:8080");
    assert_eq!(s.pools.len(), 1);
    assert_eq!(s.pools[0].id, "mock");
    assert_eq!(s.pools[0].adapter, "mock");
    assert_eq!(s.adapters_dir, Path::new("/opt/orchd/adapters"));
    assert_eq!(
        s.policies.admission.component,
        Path::new("/opt/orchd/policies/admission-default.wasm")
    );
    assert_eq!(s.policies.admission.config_json, r#"{"mode":"reject"}"#);
    assert_eq!(s.queue_capacity.get(), 256);
}

#[test]
fn flags_override_the_file() {
    let s = load_text(
        DEFAULT_TOML,
        &[
            "--addr",
            "0.0.0.0:9",
            "--policies-dir",
            "/p",
            "--adapters-dir",
            "/a",
            "--api-keys",
            "ops:admin:s3cret",
        ],
    )
    .unwrap();
    assert_eq!(s.addr.to_string(), "0.0.0.0:9");
    assert_eq!(s.api_keys.len(), 1);
    assert_eq!(s.api_keys[0].role, Role::Admin);
    assert!(!format!("{:?}", s.api_keys).contains("s3cret"));
    assert_eq!(
        s.policies.admission.component,
        Path::new("/p/admission-default.wasm")
    );
    assert_eq!(s.adapters_dir, Path::new("/a"));
}

fn check_error(text: &str, expected: &str) {
    let err = load_text(text, &[]).unwrap_err().to_string();
    assert!(!err.contains('\n'), "error must be one line: {err}");
    assert!(
        err.contains(expected),
        "{err:?} should contain {expected:?}"
    );
}

#[test]
fn bad_configs_are_one_line_naming_the_problem() {
    check_error("[server]\nadr = \"x\"\n", "line 2: unknown field `adr`");
    check_error("[queue]\ncapacity = 0\n", "line 2");
    check_error("[server]\naddr = \"nope\"\n", "invalid socket address");
    check_error("pools = []\n", "no pools configured");
    let dup = format!(
        "{DEFAULT_TOML}\n{}",
        &DEFAULT_TOML[DEFAULT_TOML.find("[[pools]]").unwrap()..]
    );
    check_error(&dup, "declared twice");
    check_error(
        &DEFAULT_TOML.replace("id = \"mock\"", "id = \"bad id\""),
        "pool id \"bad id\"",
    );
    let keyed = |group_table: &str| {
        format!(
            "[[auth.keys]]\nname = \"a\"\nrole = \"data\"\nkey = \"k\"\ngroup = \"team\"\n\n{group_table}\n{DEFAULT_TOML}"
        )
    };
    check_error(
        &keyed(""),
        "auth.keys \"a\": group \"team\" is not defined; add [rate_limits.groups.team]",
    );
    let s = load_text(&keyed("[rate_limits.groups.team]\nrequests = 10\n"), &[]).unwrap();
    assert_eq!(s.rate_groups["team"].requests, Some(10));
    assert_eq!(s.rate_groups["team"].window_ms, 60_000);
    assert_eq!(s.api_keys[0].group.as_deref(), Some("team"));
}

#[test]
fn ids_follow_the_api_alphabet() {
    assert!(file::valid_id("a.b_c:d-9"));
    assert!(!file::valid_id(""));
    assert!(!file::valid_id("a b"));
    assert!(!file::valid_id(&"x".repeat(129)));
}

#[test]
fn api_keys_come_from_a_file_kept_out_of_argv() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(
        &path,
        "# operators\nops:admin:s3cret\n\n  app:data:k:with:colons  \n",
    )
    .unwrap();
    let s = Settings::load(
        &cli(&["--api-keys-file", path.to_str().unwrap()]),
        Path::new("/opt/orchd"),
    )
    .unwrap();
    let names: Vec<_> = s.api_keys.iter().map(|k| (&*k.name, k.role)).collect();
    assert_eq!(names, [("ops", Role::Admin), ("app", Role::Data)]);
    assert_eq!(
        s.api_keys[1].sha256,
        file::digest_for_tests("k:with:colons")
    );

    std::fs::write(&path, "ops:root:x\n").unwrap();
    let err = Settings::load(
        &cli(&["--api-keys-file", path.to_str().unwrap()]),
        Path::new("/opt/orchd"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--api-keys-file line 1"), "{err}");
    let err = Settings::load(
        &cli(&["--api-keys-file", "/nonexistent/keys"]),
        Path::new("/opt/orchd"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/keys"), "{err}");
}
