//! Bad configuration exits 64 with one line naming the problem.

use orchd_testkit::{DaemonBuilder, config, default_admission, fixture_policy, mock_pool};

fn check(builder: DaemonBuilder, needle: &str) {
    let (code, stderr, _) = builder.run_to_exit();
    assert_eq!(code, 64, "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains(needle), "{needle:?} not in {stderr:?}");
}

fn good() -> String {
    config(
        &default_admission("reject"),
        8,
        &[mock_pool("p", "slots = 1")],
    )
}

#[test]
fn bad_configs_exit_64_with_one_line() {
    check(
        DaemonBuilder::new(format!("{}\n[server]\nport = 1\n", good())),
        "unknown field `port`",
    );
    check(
        DaemonBuilder::new(good().replace("adapter = \"mock\"", "adapter = \"nope\"")),
        "adapter \"nope\"",
    );
    check(
        DaemonBuilder::new(config(
            &default_admission("lottery"),
            8,
            &[mock_pool("p", "")],
        )),
        "init rejected its config",
    );
    check(
        DaemonBuilder::new(good().replace("slots = 1", "slots = 0")),
        "slots must be at least 1",
    );
    check(
        DaemonBuilder::new(format!("[server]\naddr = \"nowhere\"\n{}", good())),
        "line 2: invalid socket address",
    );
    check(
        DaemonBuilder::new(good()).arg("--log").arg("orchd=[[["),
        "ORCHD_LOG",
    );
    check(
        DaemonBuilder::new(good()).arg("--frobnicate"),
        "--frobnicate",
    );
    check(
        DaemonBuilder::new(format!(
            "[telemetry]\notlp_endpoint = \"https://collector.example:4318\"\n{}",
            good()
        )),
        "telemetry.otlp_endpoint",
    );
    check(
        DaemonBuilder::new(good()).policies_dir("/nonexistent"),
        "/nonexistent/admission-default.wasm",
    );
    let faulty = format!(
        "component = \"{}\"\nconfig = {{ fault = \"nonsense\" }}\n",
        fixture_policy("admission-faulty.wasm")
    );
    check(
        DaemonBuilder::new(config(&faulty, 8, &[mock_pool("p", "")])),
        "fault must be trap, panic, loop, grow",
    );
    let budget = |extra: &str| {
        format!(
            "{}\n[policies.budget]\ncomponent = \"budget-default.wasm\"\n{extra}\n",
            good()
        )
    };
    check(
        DaemonBuilder::new(budget("config = { price_per_token = -1 }")),
        "price_per_token must be a number >= 0",
    );
    check(
        DaemonBuilder::new(budget("on_error = \"fallback\"")),
        "only placement may fall back",
    );
}
