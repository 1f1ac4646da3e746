//! MPI coupling (issue 22): the C shim `src/coupling/mpi/latentda_mpi.c` (include/latentda_mpi.h), its Fortran module
//! and C++ header, driven by examples/mpi/driver.c, examples/mpi/driver.f90 and tests/coupling/mpi_cpp.cpp under a
//! real `mpirun`. Built with the system's MPI wrappers by scripts/mpi_build.sh against target/release/liblatentda.so.
//!
//! What the tests show:
//! - analyses of domain-decomposed hosts (1 to 4 ranks, 1-D and 2-D decompositions, uneven blocks, halos, another
//!   analysing rank, C and Fortran, float and double) are bit-identical to the single-process CLI analysis, and the
//!   QC flags and H(x_b), H(x_a) routed back to the ranks that gave the observations are bit-identical whatever the
//!   decomposition;
//! - every fault (a wrong patch size on one rank, overlapping patches, a gap, a rank that binds nothing, NaN in one
//!   rank's patch, bad observations on one rank, no observations at all, ranks passing different methods, an unknown
//!   method, a missing bundle, an invalid analysing rank) gives EVERY rank the same status and message, leaves every
//!   host array bit-identical (halos included) and never hangs (each run is killed and failed after a time limit);
//! - the C++ RAII class throws the same exception on every rank;
//! - gather and scatter cost little next to the analysis on the reference bundle (timings printed).
//!
//! Without MPI (`mpicc`, `mpif90` or `mpirun` missing) every test prints "SKIPPED: MPI not installed (...)" and passes;
//! scripts/setup.sh installs Open MPI, so CI runs them.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use latentda::bundle::Bundle;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Why MPI cannot be used here, or None when the wrappers and the launcher run.
fn mpi_missing() -> Option<String> {
    for tool in ["mpicc", "mpif90", "mpicxx", "mpirun"] {
        match Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
            Ok(s) if s.success() => {}
            Ok(s) => return Some(format!("`{tool} --version` failed ({s})")),
            Err(e) => return Some(format!("`{tool}` not found: {e}")),
        }
    }
    None
}

macro_rules! require_mpi {
    () => {
        if let Some(why) = mpi_missing() {
            eprintln!("SKIPPED: MPI not installed ({why}); scripts/setup.sh installs libopenmpi-dev and openmpi-bin");
            return;
        }
    };
}

/// The shim, the examples and the C++ test program, built once per test process.
struct Built {
    dir: PathBuf,
    driver_c: PathBuf,
    driver_f: PathBuf,
    cpp: PathBuf,
}

fn built() -> &'static Built {
    static B: OnceLock<Result<Built, String>> = OnceLock::new();
    let r = B.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mpi");
        let o = Command::new("bash")
            .arg(root().join("scripts/mpi_build.sh"))
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("scripts/mpi_build.sh failed: {}", common::show(&o)));
        }
        let lib = root().join("target/release");
        let cpp = dir.join("mpi_cpp");
        let o = Command::new("mpicxx")
            .args(["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror"])
            .arg(format!("-I{}", root().join("include").display()))
            .arg(root().join("tests/coupling/mpi_cpp.cpp"))
            .arg("-o")
            .arg(&cpp)
            .arg(format!("-L{}", dir.display()))
            .arg("-llatentda_mpi")
            .arg(format!("-L{}", lib.display()))
            .args(["-llatentda", "-lnetcdf"])
            .arg(format!("-Wl,-rpath,{}:{}", dir.display(), lib.display()))
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!("mpicxx mpi_cpp.cpp failed: {}", common::show(&o)));
        }
        Ok(Built { driver_c: dir.join("driver_c"), driver_f: dir.join("driver_f"), cpp, dir })
    });
    match r {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `mpirun -n N exe args` with a time limit: on expiry the whole process group is killed and the test fails (a hang).
fn mpirun(n: usize, exe: &Path, args: &[String], limit: Duration) -> Run {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new("nice");
    cmd.arg("mpirun");
    if Command::new("mpirun")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("Open MPI"))
        .unwrap_or(false)
    {
        cmd.arg("--oversubscribe");
    }
    cmd.arg("-n").arg(n.to_string()).arg(exe).args(args);
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_mpi_yield_when_idle", "1");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().expect("spawn mpirun");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            // mpirun puts each rank into its own process group: SIGTERM lets it kill its ranks, then the group (nice,
            // mpirun) is killed for good. SAFETY: plain kill(2) of the process group this test created.
            let pgid = child.id() as i32;
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = t_out.join().unwrap();
    let stderr = t_err.join().unwrap();
    assert!(
        status.is_some(),
        "HANG: mpirun -n {n} {} {args:?} did not finish within {limit:?} (killed)\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        exe.display()
    );
    Run { code: status.unwrap().code(), stdout, stderr }
}

/// One `RESULT rank=R status=S untouched=U halo_ok=H msg=M` line per rank, sorted by rank.
#[derive(Debug, Clone, PartialEq)]
struct RankResult {
    rank: usize,
    status: i32,
    untouched: bool,
    halo_ok: bool,
    msg: String,
}

fn results(run: &Run) -> Vec<RankResult> {
    let mut v: Vec<RankResult> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| {
            let (head, msg) = l.split_once(" msg=").unwrap_or((l, ""));
            let field = |k: &str| -> i64 {
                head.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|x| x.parse().ok()).unwrap_or(-1)
            };
            RankResult {
                rank: field("rank=") as usize,
                status: field("status=") as i32,
                untouched: field("untouched=") == 1,
                halo_ok: field("halo_ok=") == 1,
                msg: msg.trim().to_string(),
            }
        })
        .collect();
    v.sort_by_key(|r| r.rank);
    v
}

fn case_args(bundle: &Path, out: &Path) -> Vec<String> {
    vec![
        bundle.display().to_string(),
        bundle.join("sample/background.nc").display().to_string(),
        bundle.join("sample/obs.csv").display().to_string(),
        out.display().to_string(),
    ]
}

fn read_f64(path: &Path) -> Vec<f64> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect()
}

/// `latentda analyse` on the bundle's sample case: the analysis in state layout.
fn cli_analysis(bundle: &Path, tag: &str) -> Vec<f64> {
    let out = built().dir.join(format!("cli_{tag}.nc"));
    let (code, _, err) = common::cli(&[
        "analyse",
        "--bundle",
        bundle.to_str().unwrap(),
        "--background",
        bundle.join("sample/background.nc").to_str().unwrap(),
        "--obs",
        bundle.join("sample/obs.csv").to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "latentda analyse failed: {err}");
    latentda::bundle::ncio::read_state(&out, &Bundle::open(bundle).unwrap().layout).unwrap()
}

/// Number of elements whose bits differ (NaN equal to NaN).
fn bit_diffs(a: &[f64], b: &[f64]) -> usize {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan())).count()
}

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn decompositions_are_bit_identical_to_the_cli() {
    require_mpi!();
    let b = built();
    let bundle = common::fixture("tanh");
    let cli = cli_analysis(&bundle, "tanh");
    // (driver, ranks, options)
    let runs: &[(&str, usize, &[&str])] = &[
        ("c", 1, &["--grid", "1x1", "--halo", "0"]),
        ("c", 2, &["--grid", "2x1", "--uneven"]),
        ("c", 3, &["--grid", "1x3", "--uneven", "--root", "2"]),
        ("c", 4, &["--grid", "2x2", "--uneven", "--halo", "2"]),
        ("c", 4, &["--grid", "4x1"]),
        ("f", 1, &["--grid", "1x1"]),
        ("f", 2, &["--grid", "1x2", "--uneven"]),
        ("f", 3, &["--grid", "3x1", "--uneven", "--root", "1"]),
        ("f", 4, &["--grid", "2x2", "--uneven"]),
    ];
    let mut ref_obs: Option<Vec<f64>> = None;
    println!("{:<6} {:>5} {:<40} {:>14} {:>14}", "driver", "ranks", "options", "fields vs CLI", "obs vs 1 rank");
    for (k, (drv, n, opts)) in runs.iter().enumerate() {
        let exe = if *drv == "c" { &b.driver_c } else { &b.driver_f };
        let out = b.dir.join(format!("decomp_{k}.bin"));
        let mut args = case_args(&bundle, &out);
        args.extend(opts.iter().map(|s| s.to_string()));
        args.push("--quiet".into());
        let run = mpirun(*n, exe, &args, LIMIT);
        let res = results(&run);
        assert_eq!(run.code, Some(0), "{drv} {n} {opts:?} failed:\n{}\n{}", run.stdout, run.stderr);
        assert_eq!(res.len(), *n, "one RESULT line per rank: {}", run.stdout);
        assert!(res.iter().all(|r| r.status == 0 && r.halo_ok), "{res:?}");
        let fields = read_f64(&out);
        let obs = read_f64(&out.with_extension("bin.obs"));
        let d_fields = bit_diffs(&fields, &cli);
        let d_obs = match &ref_obs {
            None => {
                ref_obs = Some(obs.clone());
                0
            }
            Some(r) => bit_diffs(&obs, r),
        };
        println!("{drv:<6} {n:>5} {:<40} {d_fields:>14} {d_obs:>14}", opts.join(" "));
        assert_eq!(d_fields, 0, "{drv} {n} ranks {opts:?}: analysis differs from the CLI's in {d_fields} values");
        assert_eq!(d_obs, 0, "{drv} {n} ranks {opts:?}: QC/H(x) differ from the 1-rank run in {d_obs} values");
    }
    // Option output = "increment": the patches receive x_a - x_b, and H(x_a) is still H of the analysis.
    let out = b.dir.join("decomp_increment.bin");
    let mut args = case_args(&bundle, &out);
    args.extend(
        ["--grid", "2x1", "--uneven", "--quiet", "--options", "output = \"increment\""].iter().map(|s| s.to_string()),
    );
    let run = mpirun(2, &b.driver_c, &args, LIMIT);
    assert_eq!(run.code, Some(0), "increment:\n{}\n{}", run.stdout, run.stderr);
    let background = latentda::bundle::ncio::read_state(
        &bundle.join("sample/background.nc"),
        &Bundle::open(&bundle).unwrap().layout,
    )
    .unwrap();
    let inc = read_f64(&out);
    let worst = inc
        .iter()
        .zip(&background)
        .zip(&cli)
        .map(|((d, xb), xa)| (xb + d - xa).abs() / xa.abs().max(1.0))
        .fold(0.0, f64::max);
    assert!(worst < 1e-12, "x_b + increment differs from the analysis by {worst:e}");
    let (obs_inc, obs_ref) = (read_f64(&out.with_extension("bin.obs")), ref_obs.clone().unwrap());
    for (i, (a, r)) in obs_inc.chunks(3).zip(obs_ref.chunks(3)).enumerate() {
        assert_eq!(a[0], r[0], "increment: QC flag of observation {i}");
        assert_eq!(a[1].to_bits(), r[1].to_bits(), "increment: H(x_b) of observation {i}");
        assert!(
            a[2].is_nan() && r[2].is_nan() || (a[2] - r[2]).abs() <= 1e-9 * r[2].abs().max(1.0),
            "increment: H(x_a) of observation {i}: {} vs {}",
            a[2],
            r[2]
        );
    }

    // float32 patches: rounded on write-back, so compared with the 1-rank float32 run.
    let mut f32_runs = Vec::new();
    for (n, grid) in [(1, "1x1"), (4, "2x2")] {
        let out = b.dir.join(format!("decomp_f32_{n}.bin"));
        let mut args = case_args(&bundle, &out);
        args.extend(["--grid", grid, "--uneven", "--precision", "f32", "--quiet"].iter().map(|s| s.to_string()));
        let run = mpirun(n, &b.driver_c, &args, LIMIT);
        assert_eq!(run.code, Some(0), "f32 {n}:\n{}\n{}", run.stdout, run.stderr);
        f32_runs.push(read_f64(&out));
    }
    assert_eq!(bit_diffs(&f32_runs[0], &f32_runs[1]), 0, "float32 patches: 4 ranks differ from 1 rank");
    // Against the CLI (float64 background): within float32 rounding, per variable max|a - c| / max|c|.
    let layout = Bundle::open(&bundle).unwrap().layout;
    let mut worst: f64 = 0.0;
    for v in 0..layout.variables.len() {
        let r = layout.var_range(v);
        let scale = cli[r.clone()].iter().fold(0.0f64, |m, x| m.max(x.abs())).max(f64::MIN_POSITIVE);
        let d = f32_runs[0][r.clone()].iter().zip(&cli[r]).fold(0.0f64, |m, (a, c)| m.max((a - c).abs()));
        worst = worst.max(d / scale);
    }
    println!("float32 patches (1 and 4 ranks identical) vs CLI: largest per-variable relative difference {worst:.2e}");
    assert!(worst < 1e-5, "float32 analysis vs CLI: relative difference {worst:e}");
}

/// Withheld observations given on several ranks (lda_mpi_set_withheld) are gathered on the analysing rank: the
/// analysis is bit for bit the CLI's with the same assimilated observations, and the report's "withheld" section is
/// the CLI's `--withheld` section (its sums run in another order: equal to 1e-10).
#[test]
fn withheld_observations_are_gathered_verified_and_not_assimilated() {
    require_mpi!();
    let b = built();
    let bundle = common::fixture("tanh");
    // the sample's rows: even ones assimilated, odd ones withheld
    let text = std::fs::read_to_string(bundle.join("sample/obs.csv")).unwrap();
    let mut lines = text.lines();
    let head = lines.next().unwrap().to_string();
    let (mut used, mut held) = (vec![head.clone()], vec![head]);
    for (i, l) in lines.filter(|l| !l.trim().is_empty()).enumerate() {
        if i % 2 == 0 {
            used.push(l.to_string())
        } else {
            held.push(l.to_string())
        }
    }
    let (obs, wh) = (b.dir.join("wh_obs.csv"), b.dir.join("wh_withheld.csv"));
    std::fs::write(&obs, used.join("\n") + "\n").unwrap();
    std::fs::write(&wh, held.join("\n") + "\n").unwrap();
    let (cli_nc, cli_rep) = (b.dir.join("wh_cli.nc"), b.dir.join("wh_cli.json"));
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (code, _, err) = common::cli(&[
        "analyse",
        "--bundle",
        &s(&bundle),
        "--background",
        &s(&bundle.join("sample/background.nc")),
        "--obs",
        &s(&obs),
        "--withheld",
        &s(&wh),
        "--output",
        &s(&cli_nc),
        "--report",
        &s(&cli_rep),
    ]);
    assert_eq!(code, 0, "latentda analyse --withheld failed: {err}");
    let cli = latentda::bundle::ncio::read_state(&cli_nc, &Bundle::open(&bundle).unwrap().layout).unwrap();
    let section = |p: &Path| {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        v["withheld"].clone()
    };
    let c = section(&cli_rep);
    assert!(c["n_used"].as_u64().unwrap() > 0, "no withheld observation was used: {c}");
    // the C driver (3 ranks, root 2) and the Fortran one (2 ranks, root 1)
    for (drv, exe, n, grid, root) in [("c", &b.driver_c, 3, "1x3", "2"), ("f", &b.driver_f, 2, "2x1", "1")] {
        let (out, rep) = (b.dir.join(format!("wh_mpi_{drv}.bin")), b.dir.join(format!("wh_mpi_{drv}.json")));
        let mut args = case_args(&bundle, &out);
        args[2] = s(&obs);
        args.extend(
            ["--grid", grid, "--uneven", "--root", root, "--quiet", "--withheld", &s(&wh), "--report", &s(&rep)]
                .iter()
                .map(|x| x.to_string()),
        );
        let run = mpirun(n, exe, &args, LIMIT);
        assert_eq!(run.code, Some(0), "withheld, {drv}:\n{}\n{}", run.stdout, run.stderr);
        assert_eq!(bit_diffs(&read_f64(&out), &cli), 0, "{drv}: the withheld observations changed the analysis");
        same_withheld_section(drv, &section(&rep), &c);
    }
}

/// The withheld sections of an MPI run (`m`) and of the CLI (`c`): counts equal, sums to 1e-10.
fn same_withheld_section(drv: &str, m: &serde_json::Value, c: &serde_json::Value) {
    assert_eq!(m["n_obs"], c["n_obs"], "{drv}");
    assert_eq!(m["n_used"], c["n_used"], "{drv}");
    let (mc, cc) = (m["cells"].as_array().unwrap(), c["cells"].as_array().unwrap());
    assert_eq!(mc.len(), cc.len(), "{drv}");
    for (x, y) in mc.iter().zip(cc) {
        let at = format!("{drv} {}/{}", y["group"], y["band"]);
        assert_eq!(
            (&x["group"], &x["band"], &x["n"], &x["n_columns"]),
            (&y["group"], &y["band"], &y["n"], &y["n_columns"])
        );
        for k in ["sum_d", "mean_d", "omb_rms", "oma_rms"] {
            let (a, e) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!((a - e).abs() <= 1e-10 * e.abs() + 1e-12, "{at} {k}: MPI {a} vs CLI {e}");
        }
    }
}

#[test]
fn faults_give_every_rank_the_same_error_and_leave_arrays_untouched() {
    require_mpi!();
    let b = built();
    let bundle = common::fixture("tanh");
    // (fault, rank at fault, extra options, expected status, part of the message)
    let cases: &[(&str, usize, &[&str], i32, &str)] = &[
        ("size", 1, &[], 2, "rank 1: lda_mpi_bind_patch_f64: variable 'u' has 3 levels, the patch has 4"),
        ("overlap", 1, &[], 2, "overlap"),
        ("gap", 1, &[], 2, "belong to no rank's patch"),
        ("unbound", 2, &[], 2, "ranks without a patch of it: 2"),
        ("nan", 2, &[], 6, "background: non-finite value NaN in variable 'ps' at (lat index 0, lon index 11) (global indices; the point belongs to rank 2's patch"),
        ("nan", 2, &["--root", "1"], 6, "(analysis on rank 1)"),
        ("badobs", 1, &[], 1, "rank 1: lda_mpi_set_obs: lon is NULL"),
        ("noobs", 0, &[], 7, "no observations"),
        ("method", 2, &[], 2, "rank 2: lda_mpi_analyse: method '3dvar' differs from the analysing rank's"),
        ("badmethod", 0, &[], 2, "method 'nosuch' is not known"),
        ("time", 2, &["--analysis-time", "6"], 2, "rank 2: lda_mpi_analyse: analysis time 7 h differs from the analysing rank's 6 h"),
        ("nantime", 1, &["--analysis-time", "6"], 2, "rank 1: lda_mpi_set_analysis_time: hours = nan is not finite"),
        ("notime", 0, &["--analysis-time", "6"], 2, "rank 1: lda_mpi_analyse: analysis time 6 h differs from the analysing rank's none set"),
        ("", 0, &["--root", "5"], 2, "root 5 is not a rank of the communicator (size 3)"),
    ];
    println!(
        "{:<10} {:>10} {:<12} {:>7} {:>9} {:>7}  message (identical on every rank)",
        "fault", "fault rank", "options", "status", "untouched", "no hang"
    );
    let run_case = |fault: &str, fault_rank: usize, extra: &[&str], bundle_dir: &Path| -> Vec<RankResult> {
        let out = b.dir.join("fault.bin");
        let mut args = case_args(bundle_dir, &out);
        args[1] = bundle.join("sample/background.nc").display().to_string();
        args[2] = bundle.join("sample/obs.csv").display().to_string();
        args.extend(["--grid", "3x1", "--quiet"].iter().map(|s| s.to_string()));
        if !fault.is_empty() {
            args.extend(["--fault".to_string(), fault.to_string(), "--fault-rank".to_string(), fault_rank.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let run = mpirun(3, &b.driver_c, &args, Duration::from_secs(60));
        let res = results(&run);
        assert_eq!(res.len(), 3, "fault {fault}: one RESULT line per rank expected:\n{}\n{}", run.stdout, run.stderr);
        res
    };
    for (fault, fr, extra, status, part) in cases {
        let res = run_case(fault, *fr, extra, &bundle);
        check_agreement(fault, &res, *status, part);
        println!(
            "{:<10} {:>10} {:<12} {:>7} {:>9} {:>7}  {}",
            if fault.is_empty() { "bad root" } else { fault },
            fr,
            extra.join(" "),
            res[0].status,
            "all",
            "yes",
            res[0].msg
        );
    }
    // A bundle that does not exist: the root's lda_open fails, every rank gets its message.
    let res = run_case("", 0, &[], &bundle.join("no-such-bundle"));
    check_agreement("missing bundle", &res, 3, "no-such-bundle");
    println!("{:<10} {:>10} {:<12} {:>7} {:>9} {:>7}  {}", "no bundle", 0, "", res[0].status, "all", "yes", res[0].msg);
}

/// The online mix through the MPI layer, with analysis times (lda_mpi_set_analysis_time on every rank): the
/// analysing rank gives its context the ranks' common time, so an analysis 12 h after the last (a 6 h cycle skipped)
/// notes the stale candidate forecasts and scores nothing, and the next on-time analysis scores them (the report of
/// the last rank, which received it from the analysing rank, says so); the Fortran binding passes the time as given.
#[test]
fn analysis_times_reach_the_online_mix() {
    require_mpi!();
    let b = built();
    let bundle = common::fixture("linear");
    let state = b.dir.join("mpi_mix.json");
    let _ = std::fs::remove_file(&state);
    let _ = std::fs::remove_file(latentda::var::mix::fields_path(&state));
    let opts = format!(
        "hybrid_alpha = 0.7\nhybrid_beta = 0.3\nmix_candidates = [0.7, 0.2]\nmix_state = \"{}\"\nmix_score = \"persistence\"",
        state.display()
    );
    // One analysis of the sample with these mix options at time `t` on `n` ranks: the run and its report's "mix".
    let mix_run = |exe: &Path, n: usize, grid: &str, opts: &str, t: &str, tag: &str| -> (Run, serde_json::Value) {
        let (out, rep) = (b.dir.join(format!("{tag}.bin")), b.dir.join(format!("{tag}_{t}.json")));
        let mut args = case_args(&bundle, &out);
        let extra = ["--grid", grid, "--quiet", "--method", "hybrid", "--options", opts, "--analysis-time", t];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--report".to_string(), rep.display().to_string()]);
        let run = mpirun(n, exe, &args, LIMIT);
        let report = std::fs::read_to_string(&rep).unwrap_or_else(|e| panic!("{tag} at {t} h: {e}\n{}", run.stderr));
        let v: serde_json::Value = serde_json::from_str(&report).unwrap();
        (run, v["mix"].clone())
    };
    let run_at = |t: &str| -> serde_json::Value {
        let (run, mix) = mix_run(&b.driver_c, 3, "3x1", &opts, t, "mix");
        assert_eq!(run.code, Some(0), "mix at {t} h:\n{}\n{}", run.stdout, run.stderr);
        mix
    };
    let m0 = run_at("0");
    assert_eq!(m0["analysis_time_hours"].as_f64(), Some(0.0), "{m0}");
    assert_eq!(m0["valid_next_hours"].as_f64(), Some(6.0), "{m0}");
    assert!(m0["candidates_run"].as_bool().unwrap(), "{m0}");
    let m12 = run_at("12");
    assert!(m12["scored"].as_array().unwrap().is_empty(), "stale forecasts were scored: {m12}");
    let notes = m12["notes"].to_string();
    assert!(notes.contains("valid at 6 h, this analysis is at 12 h"), "{notes}");
    assert_eq!(m12["window_filled"].as_u64(), Some(0), "{m12}");
    let m18 = run_at("18");
    assert_eq!(m18["scored"].as_array().unwrap().len(), 2, "the on-time cycle scored nothing: {m18}");
    assert_eq!(m18["window_filled"].as_u64(), Some(1), "{m18}");
    println!("MPI, online mix with analysis times 0, 12, 18 h: scored 0, 0, 2 candidates; note at 12 h: {notes}");
    // The Fortran binding (driver_f, its own mix state): the time reaches the analysing rank's context as given.
    let fstate = b.dir.join("mpi_mix_f.json");
    let _ = std::fs::remove_file(&fstate);
    let _ = std::fs::remove_file(latentda::var::mix::fields_path(&fstate));
    let fopts = opts.replace(&state.display().to_string(), &fstate.display().to_string());
    let (run, mix) = mix_run(&b.driver_f, 2, "2x1", &fopts, "6.5", "mix_f");
    let res = results(&run);
    assert_eq!(res.len(), 2, "{}\n{}", run.stdout, run.stderr);
    assert!(res.iter().all(|r| r.status == 0), "Fortran: {:?}", res.iter().map(|r| &r.msg).collect::<Vec<_>>());
    assert_eq!(mix["analysis_time_hours"].as_f64(), Some(6.5), "Fortran lda_mpi_set_analysis_time: {mix}");
    assert_eq!(mix["valid_next_hours"].as_f64(), Some(12.5), "{mix}");
}

fn check_agreement(fault: &str, res: &[RankResult], status: i32, part: &str) {
    for r in res {
        assert_eq!(
            r.status, status,
            "fault {fault}: rank {} got status {} ({}), expected {status}",
            r.rank, r.status, r.msg
        );
        assert_eq!(r.msg, res[0].msg, "fault {fault}: ranks 0 and {} got different messages", r.rank);
        assert!(r.untouched, "fault {fault}: rank {}'s arrays changed after a failed analysis", r.rank);
        assert!(r.halo_ok, "fault {fault}: rank {}'s halo was written", r.rank);
    }
    assert!(res[0].msg.contains(part), "fault {fault}: message '{}' lacks '{part}'", res[0].msg);
}

/// The time limit itself: a host whose rank 1 never calls lda_mpi_analyse (a host bug) leaves the others waiting;
/// the limit must catch it, fail, and leave no rank behind.
#[test]
fn a_hang_is_caught_by_the_time_limit() {
    require_mpi!();
    let b = built();
    let bundle = common::fixture("tanh");
    let out = b.dir.join("hang.bin");
    let mut args = case_args(&bundle, &out);
    args.extend(["--grid", "3x1", "--quiet", "--fault", "skip", "--fault-rank", "1"].iter().map(|s| s.to_string()));
    let exe = b.driver_c.clone();
    let t0 = Instant::now();
    let r = std::panic::catch_unwind(move || mpirun(3, &exe, &args, Duration::from_secs(10)));
    let msg =
        r.err().and_then(|e| e.downcast_ref::<String>().cloned()).expect("the run should have been stopped as a hang");
    assert!(msg.starts_with("HANG"), "{msg}");
    // No rank of that run is left (they would spin forever).
    std::thread::sleep(Duration::from_secs(1));
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains("hang.bin") && !l.contains("ps -eo"))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "processes left after the kill: {left:?}");
    println!(
        "a rank that skips the collective call: stopped as a hang after {:.1} s, no process left",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn cpp_class_analyses_and_throws_the_same_error_everywhere() {
    require_mpi!();
    let b = built();
    let bundle = common::fixture("tanh");
    let args: Vec<String> = case_args(&bundle, Path::new("unused"))[..3].to_vec();
    let run = mpirun(3, &b.cpp, &args, LIMIT);
    assert_eq!(run.code, Some(0), "mpi_cpp failed:\n{}\n{}", run.stdout, run.stderr);
    let lines: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("CPP ")).collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    let field = |l: &str, k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or("").to_string();
    let msg = |l: &str| l.split_once("err_msg=").map(|x| x.1.to_string()).unwrap_or_default();
    let total: usize = lines.iter().map(|l| field(l, "nobs=").parse::<usize>().unwrap()).sum();
    for l in &lines {
        assert_eq!(field(l, "j_final="), field(lines[0], "j_final="), "the report differs between ranks");
        assert_eq!(field(l, "err_code="), "2", "{l}");
        assert_eq!(field(l, "err_untouched="), "1", "{l}");
        assert_eq!(field(l, "time_err="), "2", "set_analysis_time(NaN) should throw LDA_ERR_INVALID_ARGUMENT: {l}");
        assert_eq!(field(l, "global="), total.to_string(), "{l}");
        assert_eq!(field(l, "withheld="), total.to_string(), "every rank's withheld rows reached the report: {l}");
        assert_eq!(msg(l), msg(lines[0]));
    }
    assert!(msg(lines[0]).contains("nosuch"), "{}", lines[0]);
}

#[test]
fn gather_and_scatter_cost_little_next_to_the_analysis() {
    require_mpi!();
    let b = built();
    let bundle = root().join("models/speedy-t31");
    let cli = cli_analysis(&bundle, "speedy");
    let out = b.dir.join("timing.bin");
    let mut args = case_args(&bundle, &out);
    args.extend(["--grid", "2x2", "--uneven"].iter().map(|s| s.to_string()));
    let run = mpirun(4, &b.driver_c, &args, Duration::from_secs(300));
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert_eq!(bit_diffs(&read_f64(&out), &cli), 0, "speedy-t31, 4 ranks 2x2: analysis differs from the CLI's");
    let line = run.stdout.lines().find(|l| l.starts_with("rank 0:")).expect("rank 0's summary line");
    let num = |k: &str| -> f64 {
        let i = line.find(k).unwrap_or_else(|| panic!("'{k}' in '{line}'")) + k.len();
        line[i..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let (g, a, s) = (num("gather"), num("analysis"), num("scatter"));
    println!("speedy-t31 (41 x 48 x 96), 4 ranks 2x2 uneven: gather {g:.4} s, analysis {a:.3} s, scatter {s:.4} s, (gather + scatter) / analysis = {:.2e}", (g + s) / a);
    assert!(g + s < 0.05 * a, "gather + scatter ({:.4} s) should be small next to the analysis ({a:.3} s)", g + s);
}
