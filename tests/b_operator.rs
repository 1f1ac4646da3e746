//! The latent B operator through the Fortran API: the worked cvt/cvt_adj example of docs/b-operator.md compiles with
//! real gfortran and passes its adjoint test on a fixture bundle.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn fortran_cvt_example_passes_its_adjoint_test() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // target/release/deps/<test> -> target/release: where cargo put the libraries (and the `latentda` binary).
    let lib = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_path_buf();
    assert!(
        lib.join("liblatentda.so").is_file(),
        "liblatentda.so missing in {}: run `cargo build --release` first (scripts/test.sh does)",
        lib.display()
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("b_operator");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("cvt_latent_b");
    let o = Command::new("gfortran")
        .args(["-std=f2008", "-O2", "-Wall", "-Werror"])
        .arg(format!("-J{}", dir.display()))
        .arg(root.join("fortran/latentda.f90"))
        .arg(root.join("examples/fortran/cvt_latent_b.f90"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .args(["-llatentda", "-lnetcdf", "-lm"])
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .expect("gfortran must be installed (scripts/setup.sh)");
    assert!(o.status.success(), "gfortran failed:\n{}", String::from_utf8_lossy(&o.stderr));
    // The latent B (default), the hybrid B (32 latent + 7 x 128 static control values), the hybrid with weights
    // per variable and latitude band (issue 20), and the static B.
    let per_variable = "b_operator = \"hybrid\"\nhybrid_alpha_tropics = 0.4\n\
                        hybrid_variable_weights = { t = { alpha = 0.3, beta_tropics = 0.2 }, wind = { alpha_tropics = 2.0 } }";
    for (options, size) in
        [("", 32), ("b_operator = \"hybrid\"", 32 + 896), (per_variable, 32 + 896), ("b_operator = \"static\"", 896)]
    {
        let o = Command::new(&exe).arg(root.join("tests/fixtures/tanh")).arg(options).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        println!("{options}:\n{out}");
        assert!(
            o.status.success() && out.contains("adjoint test passed"),
            "{out}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("variance test passed"), "{out}");
        assert!(out.contains(&format!("control size {size}, state size 896")), "{out}");
    }
}
