//! Issue 25, items 2 and 3: a model broken without being unreadable never reports success, and an observation
//! time cannot break the window.
//! - Divergence guards (src/var/guards.rs): a TL graph corrupted behind a rewritten checksum makes `latentda
//!   analyse` and `lda_analyse` fail with a named error, the host arrays untouched; so do an increment far beyond
//!   the B in force and an analysis leaving the bundle's `[bounds]`, for the 3D methods and l4dvar.
//! - Time QC: the window comes from options or the bundle, never from the observations; one far-future time is
//!   flagged `outside_window` and the analysis runs.
//!
//! The corrupted bundles are opened with `self_test = false` (a host that verified its bundle otherwise), so the
//! guards are reached whatever the known-answer self-test at open would have said.

mod common;

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use common::*;
use latentda::coupling::ffi::{self, LdaContext};
use latentda::numeric::Rng;
use latentda::obs::{Observation, QcFlag};
use latentda::{Analyser, Method, Options, Status};

const NO_SELF_TEST: &str = "self_test = false\n";

fn last_error(ctx: *const LdaContext) -> String {
    // SAFETY: lda_last_error never returns NULL; the string lives until the next failing call.
    unsafe { CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned()
}

fn open(dir: &Path, toml: &str) -> Analyser {
    Analyser::open(dir, Options::from_toml(toml).unwrap()).unwrap()
}

fn sample(dir: &Path, lay: &latentda::grid::Layout, csv: &str) -> (Vec<f64>, Vec<Observation>) {
    let xb = latentda::ncio::read_state(&dir.join("sample/background.nc"), lay).unwrap();
    let (obs, problems) = latentda::obs::read_csv(&dir.join("sample").join(csv), lay).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    (xb, obs)
}

/// XORs `nflip` bytes, at positions and with values from `seed`, inside the raw data of initializer `name` of an
/// ONNX file (protobuf: the name, then field 9 `raw_data`, tag 0x4a, a varint length and the bytes), and rewrites
/// the file's checksum in the manifest: the graph still loads and passes the checksum, with wrong weights.
fn flip_initializer(bundle: &Path, file: &str, name: &str, seed: u64, nflip: usize) {
    let path = bundle.join(file);
    let mut d = std::fs::read(&path).unwrap();
    let key = [name.as_bytes(), &[0x4a]].concat();
    let at = d
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .unwrap_or_else(|| panic!("no initializer {name} in {file}"));
    let (mut j, mut len, mut shift) = (at + key.len(), 0usize, 0);
    loop {
        let b = d[j];
        j += 1;
        len |= ((b & 0x7f) as usize) << shift;
        shift += 7;
        if b < 0x80 {
            break;
        }
    }
    let mut r = Rng::new(seed);
    for _ in 0..nflip {
        let p = j + (r.uniform() * len as f64) as usize;
        let x = 1 + (r.uniform() * 255.0) as u8;
        d[p] ^= x;
    }
    std::fs::write(&path, d).unwrap();
    refresh_checksum(bundle, file);
}

/// The tanh fixture with a decoder TL whose per-group weights A carry 2 flipped bytes (found by a seeded search:
/// the graph loads, its values stay finite, and before the guards the analysis "succeeded" with J rising from
/// 1.89e2 to 4.4e3 and exit status 0).
fn corrupt_tl_bundle(test: &str) -> PathBuf {
    let b = copy_fixture("tanh", test);
    flip_initializer(&b, "decoder_tl.onnx", "A_27", 4, 2);
    b
}

// ---- item 2: divergence guards ---------------------------------------------------------------------------------

/// The "Why" case through the CLI: exit 1, a message naming the guard, no output file, and the clean bundle still
/// gives exit 0 with the same command.
#[test]
fn a_corrupted_tl_graph_fails_latentda_analyse_with_a_named_guard() {
    let b = corrupt_tl_bundle("integrity_cli_tl");
    let dir = b.parent().unwrap().to_path_buf();
    let opts = dir.join("opts.toml");
    std::fs::write(&opts, NO_SELF_TEST).unwrap();
    let run = |bundle: &Path, out: &Path| {
        let s = fixture("tanh").join("sample");
        let a = |p: &Path| p.to_str().unwrap().to_string();
        let args = [
            "analyse".to_string(),
            "--bundle".into(),
            a(bundle),
            "--background".into(),
            a(&s.join("background.nc")),
            "--obs".into(),
            a(&s.join("obs.csv")),
            "--output".into(),
            a(out),
            "--options".into(),
            a(&opts),
        ];
        cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = dir.join("an.nc");
    let (code, stdout, stderr) = run(&b, &out);
    eprintln!("{stderr}");
    assert_eq!(code, 1, "a corrupted TL graph must fail the analysis\n{stdout}\n{stderr}");
    assert!(stderr.contains("divergence guard 'cost'") && stderr.contains("J rose from"), "{stderr}");
    assert!(!out.exists(), "no analysis may be written");
    let clean = dir.join("clean.nc");
    let (code, stdout, stderr) = run(&fixture("tanh"), &clean);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(clean.exists());
}

/// Opens `bundle` through the C ABI with `options`, binds the sample background (one host vector per variable, C
/// order) and sets `obs`.
fn c_context(bundle: &Path, options: &str, obs: &[Observation]) -> (*mut LdaContext, Vec<Vec<f64>>) {
    let d = CString::new(bundle.to_str().unwrap()).unwrap();
    let o = CString::new(options).unwrap();
    let mut ctx: *mut LdaContext = std::ptr::null_mut();
    assert_eq!(ffi::lda_open(d.as_ptr(), o.as_ptr(), &mut ctx), ffi::LDA_OK, "{}", last_error(std::ptr::null()));
    let lay = latentda::bundle::Bundle::open(bundle).unwrap().layout;
    let xb = latentda::ncio::read_state(&bundle.join("sample/background.nc"), &lay).unwrap();
    let mut fields: Vec<Vec<f64>> = (0..lay.variables.len()).map(|v| xb[lay.var_range(v)].to_vec()).collect();
    let (nlat, nlon) = (lay.grid.nlat() as i64, lay.grid.nlon() as i64);
    for (v, var) in lay.variables.iter().enumerate() {
        let name = CString::new(var.name.as_str()).unwrap();
        let shape: Vec<i64> = if var.is_surface() { vec![nlat, nlon] } else { vec![var.nlev as i64, nlat, nlon] };
        let rc = ffi::lda_bind_field_f64(
            ctx,
            name.as_ptr(),
            fields[v].as_mut_ptr(),
            shape.len() as i32,
            shape.as_ptr(),
            ffi::LDA_ORDER_C,
        );
        assert_eq!(rc, ffi::LDA_OK, "{}", last_error(ctx));
    }
    let col = |f: fn(&Observation) -> f64| obs.iter().map(f).collect::<Vec<f64>>();
    let var: Vec<i32> = obs.iter().map(|o| o.var.map_or(-1, |v| v as i32)).collect();
    let (la, lo, le, va, si) =
        (col(|o| o.lat), col(|o| o.lon), col(|o| o.level.unwrap_or(f64::NAN)), col(|o| o.value), col(|o| o.sigma));
    let rc =
        ffi::lda_set_obs(ctx, obs.len(), var.as_ptr(), la.as_ptr(), lo.as_ptr(), le.as_ptr(), va.as_ptr(), si.as_ptr());
    assert_eq!(rc, ffi::LDA_OK, "{}", last_error(ctx));
    let times = col(|o| o.time);
    assert_eq!(ffi::lda_set_obs_times(ctx, obs.len(), times.as_ptr()), ffi::LDA_OK, "{}", last_error(ctx));
    (ctx, fields)
}

fn bits(fields: &[Vec<f64>]) -> Vec<Vec<u64>> {
    fields.iter().map(|f| f.iter().map(|v| v.to_bits()).collect()).collect()
}

/// Runs `lda_analyse(method)` and expects LDA_ERR_SOLVER with `what` in the message and every bound array
/// bit-identical to what it was.
fn c_analyse_fails(ctx: *mut LdaContext, fields: &[Vec<f64>], method: &str, what: &[&str]) -> String {
    let before = bits(fields);
    let m = CString::new(method).unwrap();
    let st = ffi::lda_analyse(ctx, m.as_ptr());
    let msg = last_error(ctx);
    assert_eq!(st, ffi::LDA_ERR_SOLVER, "lda_analyse({method}) must fail with LDA_ERR_SOLVER: {msg}");
    for w in what {
        assert!(msg.contains(w), "'{w}' not in: {msg}");
    }
    assert_eq!(before, bits(fields), "host arrays changed by a rejected analysis");
    msg
}

/// The "Why" case through the C ABI: lda_analyse used to return 0 and write the diverged analysis into the host's
/// arrays; now LDA_ERR_SOLVER naming the guard, the arrays untouched, no QC flags of a successful analysis; the same
/// calls on the clean bundle succeed and change the arrays.
#[test]
fn a_corrupted_tl_graph_fails_lda_analyse_and_leaves_host_arrays_untouched() {
    let b = corrupt_tl_bundle("integrity_c_tl");
    let lay = latentda::bundle::Bundle::open(&b).unwrap().layout;
    let (_, obs) = sample(&b, &lay, "obs.csv");
    let (ctx, fields) = c_context(&b, NO_SELF_TEST, &obs);
    let msg = c_analyse_fails(ctx, &fields, "l3dvar", &["divergence guard 'cost'", "latentda check"]);
    eprintln!("{msg}");
    let mut flags = vec![0i32; obs.len()];
    assert_eq!(
        ffi::lda_obs_qc(ctx, flags.as_mut_ptr(), obs.len()),
        ffi::LDA_ERR_NOT_READY,
        "no QC flags after a rejected analysis"
    );
    assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
    let (ctx, fields) = c_context(&fixture("tanh"), NO_SELF_TEST, &obs);
    let before = bits(&fields);
    let m = CString::new("l3dvar").unwrap();
    assert_eq!(ffi::lda_analyse(ctx, m.as_ptr()), ffi::LDA_OK, "{}", last_error(ctx));
    assert_ne!(before, bits(&fields), "the clean bundle's analysis is written back");
    assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
}

/// One observation of variable `name` exactly at the grid point of state index `i` (its level, latitude,
/// longitude), `innovation` above the background there.
fn obs_at(
    lay: &latentda::grid::Layout,
    xb: &[f64],
    name: &str,
    i: usize,
    innovation: f64,
    sigma: f64,
    time: f64,
) -> Observation {
    let v = lay.var_index(name).unwrap();
    let np = lay.grid.npoints();
    let (c, p) = (i / np, i % np);
    let var = &lay.variables[v];
    let level = (!var.is_surface()).then(|| lay.vertical.levels[c - var.first_channel]);
    let (lat, lon) = (lay.grid.lat[p / lay.grid.nlon()], lay.grid.lon[p % lay.grid.nlon()]);
    Observation {
        var: Some(v),
        var_name: name.into(),
        lat,
        lon,
        level,
        value: xb[i] + innovation,
        sigma,
        time,
        line: None,
        malformed: None,
    }
}

/// Guard `increment`: with the background check off, one temperature observation 1e5 K from the background pulls
/// the 3D-Var increment to ~1e4 K RMS, thousands of B standard deviations. J decreases and every value is finite,
/// so only this guard stops it (before, the analysis was returned). Through the C ABI: arrays untouched.
#[test]
fn an_increment_far_beyond_the_b_in_force_is_rejected() {
    let b = fixture("tanh");
    let mut a = open(&b, "bg_check = 0.0");
    let lay = a.bundle.layout.clone();
    let (xb, _) = sample(&b, &lay, "obs.csv");
    let i = lay.var_range(lay.var_index("t").unwrap()).start + 5;
    let obs = vec![obs_at(&lay, &xb, "t", i, 1e5, 1.0, 0.0)];
    let e = a.analyse(&xb, &obs, Method::Var3d).unwrap_err();
    eprintln!("{}", e.message);
    assert_eq!(e.status, Status::Solver);
    assert!(
        e.message.contains("divergence guard 'increment'")
            && e.message.contains("'t'")
            && e.message.contains("times the RMS"),
        "{}",
        e.message
    );
    // a sane innovation passes the same guard
    let ok = vec![obs_at(&lay, &xb, "t", i, 2.0, 1.0, 0.0)];
    let r = a.analyse(&xb, &ok, Method::Var3d).unwrap();
    assert!(r.report.timings.n_variance == 0 && r.report.timings.variance_s >= 0.0, "static B draws run no model");
    let (ctx, fields) = c_context(&b, "bg_check = 0.0", &obs);
    c_analyse_fails(ctx, &fields, "3dvar", &["divergence guard 'increment'", "'t'"]);
    assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
}

/// Writes the tanh fixture with `[bounds]` lines into a scratch copy.
fn with_bounds(test: &str, lines: &str) -> PathBuf {
    let b = copy_fixture("tanh", test);
    let m = std::fs::read_to_string(b.join("bundle.toml")).unwrap();
    std::fs::write(b.join("bundle.toml"), m.replace("[checksums]\n", &format!("[bounds]\n{lines}\n\n[checksums]\n")))
        .unwrap();
    b
}

/// Guard `bounds`: the bundle declares t <= (the background's warmest value + 0.01 K); a warm observation right
/// there moves the analysis past it: a named error for l3dvar, hybrid and l4dvar (both analysis paths), the host
/// arrays untouched. Wide bounds pass; a background value already outside may stay there.
#[test]
fn an_analysis_leaving_the_bundles_bounds_is_rejected() {
    let lay = latentda::bundle::Bundle::open(fixture("tanh")).unwrap().layout;
    let (xb, _) = sample(&fixture("tanh"), &lay, "obs.csv");
    let rt = lay.var_range(lay.var_index("t").unwrap());
    let (i, tmax) = rt.clone().map(|i| (i, xb[i])).fold((0, f64::MIN), |m, x| if x.1 > m.1 { x } else { m });
    let b = with_bounds("integrity_bounds", &format!("t = [100.0, {}]\nps = [50000.0, 120000.0]", tmax + 0.01));
    let obs = vec![obs_at(&lay, &xb, "t", i, 3.0, 0.5, 0.0)];
    for method in [Method::L3dvar, Method::Hybrid, Method::L4dvar] {
        let mut a = open(&b, "bg_check = 0.0");
        assert_eq!(a.bundle.bounds[lay.var_index("t").unwrap()], Some([100.0, tmax + 0.01]));
        let e = a.analyse(&xb, &obs, method).unwrap_err();
        eprintln!("{}: {}", method.name(), e.message);
        assert_eq!(e.status, Status::Solver);
        assert!(e.message.contains("divergence guard 'bounds'") && e.message.contains("of 't'"), "{}", e.message);
    }
    let (ctx, fields) = c_context(&b, "bg_check = 0.0", &obs);
    c_analyse_fails(ctx, &fields, "l4dvar", &["divergence guard 'bounds'", "of 't'"]);
    assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
    // wide bounds: the same analysis passes
    let wide = with_bounds("integrity_bounds_wide", "t = [100.0, 400.0]");
    open(&wide, "bg_check = 0.0").analyse(&xb, &obs, Method::L3dvar).unwrap();
    // a background already above the bound: the analysis may leave it where the innovation is negative
    let b2 = with_bounds("integrity_bounds_outside", &format!("t = [100.0, {}]", tmax - 1.0));
    let cold = vec![obs_at(&lay, &xb, "t", i, -0.5, 0.5, 0.0)];
    let r = open(&b2, "bg_check = 0.0").analyse(&xb, &cold, Method::L3dvar).unwrap();
    assert!(r.analysis[i] > tmax - 1.0 && r.analysis[i] < tmax, "the point stays outside, moved towards the bound");
}

/// `[bounds]` is validated at open and the reference bundle declares t, q and ps bounds.
#[test]
fn bounds_are_validated_and_the_reference_bundle_has_them() {
    for (lines, want) in [
        ("w = [0.0, 1.0]", "'w' is not a bundle variable"),
        ("t = [300.0, 200.0]", "min < max"),
        ("t = [300.0, 300.0]", "min < max"),
        ("t = [nan, 300.0]", "min < max"),
        ("t = [1.0, 2.0, 3.0]", "min < max"),
    ] {
        let b = with_bounds("integrity_bounds_bad", lines);
        let e = latentda::bundle::Bundle::open(&b).unwrap_err();
        assert!(
            e.status == Status::Bundle && e.message.contains(want) && e.message.contains("bounds."),
            "{lines}: {}",
            e.message
        );
    }
    let b = with_bounds("integrity_bounds_inf", "t = [-inf, 400.0]\nps = [0.0, inf]");
    let bb = latentda::bundle::Bundle::open(&b).unwrap();
    assert_eq!(bb.bounds, vec![None, Some([f64::NEG_INFINITY, 400.0]), Some([0.0, f64::INFINITY])]);
    let r = latentda::bundle::Bundle::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/speedy-t31")).unwrap();
    let named: Vec<&str> =
        r.layout.variables.iter().zip(&r.bounds).filter(|(_, b)| b.is_some()).map(|(v, _)| v.name.as_str()).collect();
    assert_eq!(named, ["t", "q", "ps"]);
    // the reference sample (background and truth) lies inside them
    for f in ["background.nc", "truth.nc"] {
        let x = latentda::ncio::read_state(&r.dir.join("sample").join(f), &r.layout).unwrap();
        for (v, bounds) in r.bounds.iter().enumerate() {
            let Some([lo, hi]) = bounds else { continue };
            assert!(
                x[r.layout.var_range(v)].iter().all(|x| lo < x && x < hi),
                "{f}: {} outside [{lo}, {hi}]",
                r.layout.variables[v].name
            );
        }
    }
}

// ---- item 3: time QC -------------------------------------------------------------------------------------------

/// The "Why" case: one observation time of 1e6 h (or 1e300) used to stretch the window to 166667 steps and stop
/// the analysis; now it is flagged outside_window, and the analysis is bit-identical to the one without it.
#[test]
fn a_far_future_observation_time_is_flagged_and_the_analysis_runs() {
    let b = fixture("tanh");
    let mut a = open(&b, "");
    let lay = a.bundle.layout.clone();
    let (xb, obs) = sample(&b, &lay, "obs_4d.csv");
    let plain = a.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let mut more = obs.clone();
    for t in [1e6, 1e300, -1e300, f64::MAX] {
        more.push(Observation { time: t, ..obs[0].clone() });
    }
    let r = a.analyse(&xb, &more, Method::L4dvar).unwrap();
    assert_eq!(&r.qc[obs.len()..], &[QcFlag::OutsideWindow; 4]);
    assert_eq!(r.qc[..obs.len()], plain.qc[..]);
    assert_eq!(r.report.qc_counts["outside_window"], 4);
    assert_eq!(r.report.window.as_ref().unwrap().window_hours, 12.0, "the bundle's [forecast] window_hours");
    assert_eq!(
        bits(std::slice::from_ref(&r.analysis)),
        bits(std::slice::from_ref(&plain.analysis)),
        "flagged observations change nothing"
    );
    // the CLI: exit 0, the flag counted in the report
    let dir = scratch("integrity_cli_time");
    let csv = std::fs::read_to_string(b.join("sample/obs_4d.csv")).unwrap();
    let row = csv.lines().nth(1).unwrap();
    let far = row.rsplit_once(',').unwrap().0.to_string() + ",1e6";
    std::fs::write(dir.join("obs.csv"), format!("{csv}{far}\n")).unwrap();
    let (out, rep) = (dir.join("an.nc"), dir.join("rep.json"));
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        "analyse".to_string(),
        "--method".into(),
        "l4dvar".into(),
        "--bundle".into(),
        p(&b),
        "--background".into(),
        p(&b.join("sample/background.nc")),
        "--obs".into(),
        p(&dir.join("obs.csv")),
        "--output".into(),
        p(&out),
        "--report".into(),
        p(&rep),
    ];
    let (code, stdout, stderr) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(json["qc_counts"]["outside_window"], 1);
    // the C ABI: LDA_OK and flag LDA_QC_OUTSIDE_WINDOW for the far observation
    let mut one = obs.clone();
    one.push(Observation { time: 1e300, ..obs[0].clone() });
    let (ctx, fields) = c_context(&b, "", &one);
    let before = bits(&fields);
    let m = CString::new("l4dvar").unwrap();
    assert_eq!(ffi::lda_analyse(ctx, m.as_ptr()), ffi::LDA_OK, "{}", last_error(ctx));
    assert_ne!(before, bits(&fields));
    let mut flags = vec![-1i32; one.len()];
    assert_eq!(ffi::lda_obs_qc(ctx, flags.as_mut_ptr(), one.len()), ffi::LDA_OK);
    assert_eq!(flags[one.len() - 1], ffi::LDA_QC_OUTSIDE_WINDOW);
    let want: Vec<i32> = plain.qc.iter().map(|q| *q as i32).collect();
    assert_eq!(flags[..obs.len()], want[..], "the other observations keep their flags");
    assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
}

/// The window: option `window_hours`, else the bundle's `[forecast] window_hours`, else 12 h; never the latest
/// observation time. A 6 h window flags the sample's 12 h observations; an invalid bundle value is a bundle error.
#[test]
fn the_window_comes_from_options_or_the_bundle_never_from_the_observations() {
    let b = copy_fixture("tanh", "integrity_window");
    let m = std::fs::read_to_string(b.join("bundle.toml")).unwrap();
    assert!(m.contains("window_hours = 12.0\n"));
    let set = |line: &str| std::fs::write(b.join("bundle.toml"), m.replace("window_hours = 12.0\n", line)).unwrap();
    set("");
    let mut a = open(&b, "");
    let lay = a.bundle.layout.clone();
    let (xb, obs) = sample(&b, &lay, "obs_4d.csv");
    let n12 = obs.iter().filter(|o| o.time == 12.0).count();
    assert!(n12 > 0);
    let r = a.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let w = r.report.window.as_ref().unwrap();
    assert_eq!((w.window_hours, w.nslots, r.report.qc_counts["outside_window"]), (12.0, 3, 0), "the default window");
    // the option wins over the default and the bundle; observations after it are flagged, not a longer window
    let r = open(&b, "window_hours = 6.0").analyse(&xb, &obs, Method::L4dvar).unwrap();
    assert_eq!(
        (r.report.window.as_ref().unwrap().nslots, r.report.qc_counts["outside_window"]),
        (2, n12),
        "the option"
    );
    assert!(obs.iter().zip(&r.qc).all(|(o, q)| (o.time == 12.0) == (*q == QcFlag::OutsideWindow)));
    let r = open(&b, "window_hours = 0.0").analyse(&xb, &obs, Method::L4dvar).unwrap();
    assert_eq!(r.report.qc_counts["outside_window"], obs.iter().filter(|o| o.time > 0.0).count());
    // the bundle's value, and its validation
    set("window_hours = 6.0\n");
    let r = open(&b, "").analyse(&xb, &obs, Method::L4dvar).unwrap();
    assert_eq!((r.report.window.as_ref().unwrap().window_hours, r.report.qc_counts["outside_window"]), (6.0, n12));
    let r = open(&b, "window_hours = 18.0").analyse(&xb, &obs, Method::L4dvar).unwrap();
    assert_eq!(r.report.window.as_ref().unwrap().nslots, 4, "the option wins over the bundle");
    set("window_hours = 9.0\n");
    let e = open(&b, "").analyse(&xb, &obs, Method::L4dvar).unwrap_err();
    assert!(e.status == Status::InvalidArgument && e.message.contains("not a multiple of slot_hours"), "{}", e.message);
    for bad in ["-6.0", "nan", "inf"] {
        set(&format!("window_hours = {bad}\n"));
        let e = Analyser::open(&b, Options::default()).unwrap_err();
        assert!(e.status == Status::Bundle && e.message.contains("forecast.window_hours"), "{bad}: {}", e.message);
    }
}

/// Online B sizing whose state file cannot be written (its folder does not exist): the analysis runs, then
/// lda_analyse fails with LDA_ERR_IO naming the file, the host arrays are bit-identical, and no file or temporary
/// file is left; with a writable state path the same calls succeed and write the state.
#[test]
fn an_adaptive_state_that_cannot_be_written_fails_lda_analyse_and_leaves_host_arrays_untouched() {
    let b = fixture("tanh");
    let lay = latentda::bundle::Bundle::open(&b).unwrap().layout;
    let (_, obs) = sample(&b, &lay, "obs.csv");
    let dir = scratch("integrity_adaptive");
    let missing = dir.join("no_such_folder").join("adaptive.json");
    let (ctx, fields) = c_context(&b, &format!("{NO_SELF_TEST}adaptive_state = \"{}\"\n", missing.display()), &obs);
    let before = bits(&fields);
    let m = CString::new("l3dvar").unwrap();
    let st = ffi::lda_analyse(ctx, m.as_ptr());
    let msg = last_error(ctx);
    assert_eq!(st, ffi::LDA_ERR_IO, "{msg}");
    assert!(msg.contains("adaptive.json") && msg.contains("no_such_folder' does not exist"), "{msg}");
    assert_eq!(before, bits(&fields), "host arrays changed by an analysis whose state could not be written");
    assert!(!dir.join("no_such_folder").exists());
    assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
    let good = dir.join("adaptive.json");
    let (ctx, fields) = c_context(&b, &format!("{NO_SELF_TEST}adaptive_state = \"{}\"\n", good.display()), &obs);
    assert_eq!(ffi::lda_analyse(ctx, m.as_ptr()), ffi::LDA_OK, "{}", last_error(ctx));
    assert_ne!(before, bits(&fields), "the analysis is written back");
    assert!(good.exists());
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "only the state file is left: {left:?}");
    assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
}
