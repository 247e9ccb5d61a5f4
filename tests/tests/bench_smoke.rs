//! The benchmark in miniature, so it never rots: every section runs with
//! small counts and the JSON report carries every figure. Timing goals are
//! not asserted here (machines are noisy); `cargo run --release --bin bench`
//! measures them.

use private_worker_tests::procs::binary;

#[test]
fn the_benchmark_runs_every_section_and_writes_its_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let output = std::process::Command::new(binary("bench"))
        .args(["--smoke", "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for section in ["baseline", "full_path_echo", "full_path_http"] {
        let points = report[section].as_array().unwrap();
        assert_eq!(points.len(), 3, "{section}: {points:?}");
        for point in points {
            assert!(
                point["per_second"].as_f64().unwrap() > 0.0,
                "{section}: {point}"
            );
            assert!(
                point["latency_ms"]["p99"].as_f64().unwrap() > 0.0,
                "{section}: {point}"
            );
        }
    }
    assert!(
        report["full_path_echo"][2]["ratio_to_baseline"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(report["worker_memory_mib"]["idle"].as_f64().unwrap() > 0.0);
    assert!(
        report["worker_memory_mib"]["peak"].as_f64().unwrap()
            >= report["worker_memory_mib"]["idle"].as_f64().unwrap()
    );
    let scale = &report["orchestrator_scale"][0];
    assert!(
        scale["handshakes_per_second"].as_f64().unwrap() > 0.0,
        "{scale}"
    );
    assert!(
        report["reconnect"]["all_reconnected_after_ready_ms"]
            .as_f64()
            .is_some()
    );
    assert!(stdout.contains("5. Reconnect"), "{stdout}");
}
