//! The demo (`cargo run --bin demo`, README's first command) is part of the
//! suite: the whole system from nothing, the agent's MCP step included,
//! must end with exit 0 and tell each part of the story.

use private_worker_tests::procs::binary;

#[test]
fn the_demo_tells_the_whole_story_and_exits_zero() {
    let output = std::process::Command::new(binary("demo"))
        .output()
        .expect("run the demo binary");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the demo failed:\n{stdout}\n{stderr}"
    );
    for part in [
        "[4/7] worker connected as",
        "the agent's token cannot approve its own plan",
        "[6/7] plan succeeded",
        "$ private-worker status",
        "  healthy",
        "tools/call crm.get_ticket",
        "[7/7] agent: the write waited for the approver's signature, the read-only call ran at once, signed by auto:",
        "(both succeeded)",
        "demo succeeded",
    ] {
        assert!(
            stdout.contains(part),
            "the demo did not say {part:?}:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("appears nowhere"),
        "the credential check did not pass:\n{stdout}"
    );
}
