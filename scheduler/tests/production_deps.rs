//! The fleet's scheduler binary carries no Docker or image-building code: built
//! without default features (as the scheduler image is), it depends on neither
//! hostd nor a Docker client. With them (`scheduler dev`) it does, which shows the
//! check can fail.

use std::process::Command;

fn normal_deps(features: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "berth-scheduler",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .args(features)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn has(tree: &str, krate: &str) -> bool {
    tree.lines()
        .any(|l| l.split_whitespace().next() == Some(krate))
}

#[test]
fn the_production_build_has_no_docker_or_build_code() {
    let prod = normal_deps(&["--no-default-features"]);
    assert!(
        has(&prod, "aws-sdk-ecs") && has(&prod, "berth-wire"),
        "{prod}"
    );
    for banned in ["berth-hostd", "bollard", "berth-seccomp"] {
        assert!(
            !has(&prod, banned),
            "the production scheduler depends on {banned}"
        );
    }
    let dev = normal_deps(&[]);
    assert!(
        has(&dev, "berth-hostd"),
        "`scheduler dev` is expected to carry hostd"
    );
}
