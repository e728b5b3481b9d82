//! `qc compile --why-not NODE` end to end: what the binary prints for a node no rule fused, for
//! one a rule fused, and for a name that is no node (a did-you-mean on stderr, exit code 1).
//! The recipe is `tests/data/why_not.qrecipe`; the printed text is a snapshot.

use std::process::Command;

fn why_not(node: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qc"))
        .args(["compile", "tests/data/why_not.qrecipe", "--why-not", node])
        .output()
        .expect("qc runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn why_not_explains_nodes() {
    let mut text = String::new();
    for node in ["conv1", "act", "bn3", "bn2"] {
        let (code, stdout, stderr) = why_not(node);
        assert_eq!(code, 0, "{node}: {stderr}");
        assert!(stderr.is_empty(), "{node}: {stderr}");
        text.push_str(&format!(
            "$ qc compile tests/data/why_not.qrecipe --why-not {node}\n{stdout}\n"
        ));
    }
    insta::assert_snapshot!("why_not", text);
}

#[test]
fn why_not_an_unknown_node_suggests_one() {
    let (code, stdout, stderr) = why_not("conv3");
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("error: --why-not `conv3` names no node of model `m` (did you mean `conv1`?)"),
        "{stderr}"
    );
    assert!(stderr.contains("help: "), "{stderr}");
}
