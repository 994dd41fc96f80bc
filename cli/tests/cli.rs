//! The `pso` helper binary's command line. (Being a test of this package, it also makes
//! `cargo test` build the helper, which the library's tests of it run.)

use std::process::Command;

const PSO: &str = env!("CARGO_BIN_EXE_pso");

#[test]
fn prints_its_version() {
    let output = Command::new(PSO).arg("--version").output().unwrap();
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        format!("pso {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn prints_help_and_rejects_unknown_arguments() {
    let output = Command::new(PSO).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("Usage: pso"), "{help}");

    let output = Command::new(PSO).arg("--no-such-flag").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--no-such-flag"));
}
