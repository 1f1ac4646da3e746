//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// HDF5 opens files without close-on-exec and locks them (flock). A child process started while a test thread holds
/// a NetCDF-4 file open inherits that descriptor, and with it the lock, for the child's whole life: another thread's
/// open of the file then fails with "NetCDF: HDF error" (seen about once in 30 runs of tests/hardening.rs). Test
/// code that writes NetCDF files and test code that starts processes take this lock, so that no child is started
/// while this process has a file open for writing.
static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// The guard of [`SPAWN_LOCK`] (a panicking holder does not poison it for the other tests).
pub fn spawn_guard() -> MutexGuard<'static, ()> {
    SPAWN_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs a command to completion like `Command::output`, starting it under [`spawn_guard`] and waiting outside it.
pub fn run_output(cmd: &mut std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let child = {
        let _g = spawn_guard();
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    child.wait_with_output().unwrap()
}

/// Path of a committed test fixture bundle.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fresh, empty scratch directory under target/ (removed at the start of each run of the same test).
pub fn scratch(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-scratch").join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies a fixture bundle (with its sample/) into a scratch directory and returns the copy's path.
pub fn copy_fixture(name: &str, test: &str) -> PathBuf {
    let dst = scratch(test).join(name);
    copy_dir(&fixture(name), &dst);
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &dst.join(e.file_name()));
        } else {
            std::fs::copy(&p, dst.join(e.file_name())).unwrap();
        }
    }
}

/// Replaces the checksum of `file` in the manifest of `bundle` by the SHA-256 of its current content.
pub fn refresh_checksum(bundle: &Path, file: &str) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(bundle.join(file)).unwrap();
    let hex: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let manifest = std::fs::read_to_string(bundle.join("bundle.toml")).unwrap();
    let out: Vec<String> = manifest
        .lines()
        .map(|l| if l.starts_with(&format!("\"{file}\"")) { format!("\"{file}\" = \"{hex}\"") } else { l.to_string() })
        .collect();
    std::fs::write(bundle.join("bundle.toml"), out.join("\n") + "\n").unwrap();
}

/// The ONNX Runtime shared library of the Python `onnxruntime` wheel (installed by scripts/setup.sh).
pub fn onnxruntime_library() -> PathBuf {
    let out = run_output(std::process::Command::new("python3").args(["-c", "import onnxruntime, os, glob; print(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.1*'))[0])"]));
    assert!(
        out.status.success(),
        "the onnxruntime Python wheel is needed for the ort backend tests (scripts/setup.sh installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The `latentda` binary. It is built by the workspace member cli/ (crate latentda-cli): its own tests get it from
/// Cargo; this package's tests find it next to themselves, in target/<profile>/ (`cargo build --release` and
/// `cargo test --release` at the root build it; scripts/test.sh builds first).
pub fn latentda_exe() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_latentda") {
        return PathBuf::from(p);
    }
    let me = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/latentda
    let exe = me.parent().and_then(Path::parent).unwrap().join("latentda");
    assert!(exe.is_file(), "{} missing: run `cargo build --release` first (scripts/test.sh does)", exe.display());
    exe
}

/// Runs the latentda CLI; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = run_output(std::process::Command::new(latentda_exe()).args(args));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A finished process's status, stdout and stderr, for assertion messages.
pub fn show(o: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Maximum of |a - b| / max(|b|_inf, tiny).
pub fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale
}

/// Storage type of a generated NetCDF variable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NcKind {
    F64,
    F32,
    I16,
}

/// A variable of a generated NetCDF file: `data` in the stored type's units (packed values for I16), `None` for a
/// variable defined but never written; `fill` is its `_FillValue`; `attrs` are numeric (float64) attributes.
#[derive(Debug, Clone)]
pub struct NcVar {
    pub name: String,
    pub dims: Vec<String>,
    pub kind: NcKind,
    pub data: Option<Vec<f64>>,
    pub fill: Option<f64>,
    pub attrs: Vec<(String, Vec<f64>)>,
}

impl NcVar {
    pub fn f64(name: &str, dims: &[&str], data: Vec<f64>) -> NcVar {
        NcVar {
            name: name.into(),
            dims: dims.iter().map(|d| d.to_string()).collect(),
            kind: NcKind::F64,
            data: Some(data),
            fill: None,
            attrs: vec![],
        }
    }
}

/// Writes a NetCDF file (classic 64-bit-offset format or NetCDF-4) with the given dimensions and variables; all
/// definitions first, then the data (classic files need that order).
pub fn write_nc(path: &Path, classic: bool, dims: &[(String, usize)], vars: &[NcVar]) -> Result<(), netcdf::Error> {
    let _no_child_meanwhile = spawn_guard(); // declared before the file: released after it is closed
    let opts = if classic { netcdf::Options::_64BIT_OFFSET } else { netcdf::Options::NETCDF4 };
    let mut f = netcdf::create_with(path, opts)?;
    for (n, l) in dims {
        f.add_dimension(n, *l)?;
    }
    for v in vars {
        let d: Vec<&str> = v.dims.iter().map(String::as_str).collect();
        let mut var = match v.kind {
            NcKind::F64 => f.add_variable::<f64>(&v.name, &d)?,
            NcKind::F32 => f.add_variable::<f32>(&v.name, &d)?,
            NcKind::I16 => f.add_variable::<i16>(&v.name, &d)?,
        };
        if let Some(x) = v.fill {
            match v.kind {
                NcKind::F64 => var.set_fill_value(x)?,
                NcKind::F32 => var.set_fill_value(x as f32)?,
                NcKind::I16 => var.set_fill_value(x as i16)?,
            }
        }
        for (k, a) in &v.attrs {
            if a.len() == 1 {
                var.put_attribute(k, a[0])?;
            } else {
                var.put_attribute(k, a.clone())?;
            }
        }
    }
    if classic {
        f.enddef()?;
    }
    for v in vars {
        let Some(data) = &v.data else { continue };
        let mut var = f.variable_mut(&v.name).expect("defined above");
        match v.kind {
            NcKind::F64 => var.put_values(data, ..)?,
            NcKind::F32 => var.put_values(&data.iter().map(|&x| x as f32).collect::<Vec<_>>(), ..)?,
            NcKind::I16 => var.put_values(&data.iter().map(|&x| x as i16).collect::<Vec<_>>(), ..)?,
        }
    }
    Ok(())
}

/// The dimensions and variables of a fixture's sample background (coordinates lev, lat, lon and every bundle
/// variable as float64), ready to be altered and written with [`write_nc`].
pub fn fixture_state_vars(name: &str) -> (Vec<(String, usize)>, Vec<NcVar>) {
    let b = fixture(name);
    let lay = latentda::bundle::Bundle::open(&b).unwrap().layout;
    let x = latentda::bundle::ncio::read_state(&b.join("sample/background.nc"), &lay).unwrap();
    let dims = vec![
        ("lev".to_string(), lay.vertical.levels.len()),
        ("lat".into(), lay.grid.nlat()),
        ("lon".into(), lay.grid.nlon()),
    ];
    let mut vars = vec![
        NcVar::f64("lev", &["lev"], lay.vertical.levels.clone()),
        NcVar::f64("lat", &["lat"], lay.grid.lat.clone()),
        NcVar::f64("lon", &["lon"], lay.grid.lon.clone()),
    ];
    for (v, var) in lay.variables.iter().enumerate() {
        let dims: &[&str] = if var.is_surface() { &["lat", "lon"] } else { &["lev", "lat", "lon"] };
        vars.push(NcVar::f64(&var.name, dims, x[lay.var_range(v)].to_vec()));
    }
    (dims, vars)
}

/// The Kalman increment B H^T (H B H^T + R)^-1 d with B = sum_j c_j c_j^T over the columns `cols`.
pub fn kalman(
    cols: &[Vec<f64>],
    h: &latentda::obs::operator::ObsOperator,
    obs: &[latentda::Observation],
    xb: &[f64],
) -> Vec<f64> {
    use faer::linalg::solvers::Solve;
    let (m, ns) = (h.nrows(), xb.len());
    let g: Vec<Vec<f64>> = cols
        .iter()
        .map(|c| {
            let mut y = vec![0.0; m];
            h.apply(c, &mut y);
            y
        })
        .collect();
    let mut hxb = vec![0.0; m];
    h.apply(xb, &mut hxb);
    let sig: Vec<f64> = h.rows.iter().map(|&i| obs[i].sigma).collect();
    let d: Vec<f64> = h.rows.iter().zip(&hxb).map(|(&i, hb)| obs[i].value - hb).collect();
    let s = faer::Mat::<f64>::from_fn(m, m, |i, j| {
        g.iter().map(|gk| gk[i] * gk[j]).sum::<f64>() + if i == j { sig[i] * sig[i] } else { 0.0 }
    });
    let mut y = faer::Mat::<f64>::from_fn(m, 1, |i, _| d[i]);
    s.llt(faer::Side::Lower).unwrap().solve_in_place(&mut y);
    let mut dx = vec![0.0; ns];
    for (c, gk) in cols.iter().zip(&g) {
        let coef = (0..m).map(|i| gk[i] * y[(i, 0)]).sum::<f64>();
        dx.iter_mut().zip(c).for_each(|(d, c)| *d += coef * c);
    }
    dx
}

/// Binds the state `x` (layout `lay`, physical units) to the C ABI context `ctx` as one float64 array per variable
/// in C order ((lev,) lat, lon), asserting LDA_OK; returns the arrays, which must outlive the binding (moving the
/// returned Vec does not move them).
pub fn bind_state_c(
    ctx: *mut latentda::coupling::ffi::LdaContext,
    lay: &latentda::bundle::grid::Layout,
    x: &[f64],
) -> Vec<Vec<f64>> {
    use latentda::coupling::ffi;
    let (nlat, nlon) = (lay.grid.nlat() as i64, lay.grid.nlon() as i64);
    let mut fields: Vec<Vec<f64>> = (0..lay.variables.len()).map(|v| x[lay.var_range(v)].to_vec()).collect();
    for (var, f) in lay.variables.iter().zip(fields.iter_mut()) {
        let name = std::ffi::CString::new(var.name.as_str()).unwrap();
        let shape: Vec<i64> = if var.is_surface() { vec![nlat, nlon] } else { vec![var.nlev as i64, nlat, nlon] };
        let rc = ffi::lda_bind_field_f64(
            ctx,
            name.as_ptr(),
            f.as_mut_ptr(),
            shape.len() as i32,
            shape.as_ptr(),
            ffi::LDA_ORDER_C,
        );
        assert_eq!(rc, ffi::LDA_OK, "binding {}", var.name);
    }
    fields
}

/// Observations exactly at grid points and model levels of the linear fixture (so H sqrt(diag B) is exactly
/// sqrt(diag H B H^T)): every third grid point, u and t on all levels, ps; sigma u 1, t 0.5, ps 50, times
/// `sigma_scale`.
pub fn linear_grid_obs(a: &latentda::Analyser, sigma_scale: f64) -> Vec<latentda::obs::Observation> {
    let lay = &a.bundle.layout;
    let (lat, lon, lev) = (&lay.grid.lat, &lay.grid.lon, &lay.vertical.levels);
    let mut obs = Vec::new();
    for (j, &la) in lat.iter().enumerate() {
        for (i, &lo) in lon.iter().enumerate() {
            if (i + j) % 3 != 0 {
                continue;
            }
            for (v, var) in lay.variables.iter().enumerate() {
                let sigma = match var.name.as_str() {
                    "u" => 1.0,
                    "t" => 0.5,
                    _ => 50.0,
                };
                let levels: Vec<Option<f64>> =
                    if var.nlev == 0 { vec![None] } else { lev.iter().map(|l| Some(*l)).collect() };
                for l in levels {
                    obs.push(latentda::obs::Observation {
                        var: Some(v),
                        var_name: var.name.clone(),
                        lat: la,
                        lon: lo,
                        level: l,
                        value: 0.0,
                        sigma: sigma * sigma_scale,
                        time: 0.0,
                        line: None,
                        malformed: None,
                    });
                }
            }
        }
    }
    obs
}

/// The linear fixture's sample background.
pub fn linear_background(a: &latentda::Analyser) -> Vec<f64> {
    latentda::bundle::ncio::read_state(&fixture("linear").join("sample/background.nc"), &a.bundle.layout).unwrap()
}
