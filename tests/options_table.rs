//! One table of options (issue 23, item 2): every field of `Options` is documented in the options module's table,
//! in the C header's and the C++ class's option lists, in docs/coupling.md, and is reachable from the CLI (a flag,
//! or, for the few set only through `--options FILE`, listed here with the reason). Adding an option without the
//! rest fails here.

use std::path::Path;

/// Options the CLI sets through its own arguments or only through `--options FILE`, with why.
const NOT_A_FLAG: &[(&str, &str)] = &[
    ("method", "--method"),
    ("verbosity", "-v / --verbose"),
    ("cuda_tf32", "GPU precision switch: --options file"),
    ("gradient_reduction", "solver tolerance: --options file"),
    ("preconditioner", "solver internals: --options file"),
    ("bg_check", "--options file"),
    ("b_operator", "host B operator only, not a CLI concept"),
    ("self_test", "--options file"),
];

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// The field names of `pub struct Options` in src/var/options.rs.
fn option_fields() -> Vec<String> {
    let src = read("src/var/options.rs");
    let body = src.split("pub struct Options {").nth(1).expect("struct Options").split("\n}").next().unwrap();
    body.lines()
        .filter_map(|l| {
            l.trim().strip_prefix("pub ").and_then(|r| r.split_once(':')).map(|(n, _)| n.trim().to_string())
        })
        .collect()
}

#[test]
fn every_option_is_documented_everywhere_and_reachable_from_the_cli() {
    let fields = option_fields();
    assert!(fields.len() > 30, "only {} fields found: {fields:?}", fields.len());
    let table: String =
        read("src/var/options.rs").lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    let header = read("include/latentda.h");
    let hpp = read("include/latentda.hpp");
    let coupling = read("docs/coupling.md");
    let cli = read("src/main.rs");
    let mut missing = Vec::new();
    for f in &fields {
        let word = |text: &str| {
            text.match_indices(f.as_str()).any(|(i, _)| {
                let before = text[..i].chars().last().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
                let after = text[i + f.len()..].chars().next().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
                before && after
            })
        };
        if !table.contains(&format!("//! {f} =")) {
            missing.push(format!("{f}: not in the table of src/var/options.rs (`//! {f} = ...`)"));
        }
        for (name, text) in
            [("include/latentda.h", &header), ("include/latentda.hpp", &hpp), ("docs/coupling.md", &coupling)]
        {
            if !word(text) {
                missing.push(format!("{f}: not in {name}"));
            }
        }
        let flag = format!("o.{f} =");
        if !cli.contains(&flag) && !NOT_A_FLAG.iter().any(|(n, _)| n == f) {
            missing.push(format!("{f}: no CLI flag in src/main.rs (`{flag}`) and not in NOT_A_FLAG"));
        }
    }
    for (n, _) in NOT_A_FLAG {
        assert!(fields.contains(&n.to_string()), "NOT_A_FLAG names '{n}', which is not an option");
    }
    assert!(missing.is_empty(), "options not documented or reachable:\n{}", missing.join("\n"));
}
