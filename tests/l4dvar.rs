//! Latent 4D-Var (issue 17): the chained TL/AD of decoder and step model (adjoint and Taylor tests), the 4D-Var
//! analysis against the closed-form 4D-Var / Kalman smoother solution computed independently with faer (linear
//! decoder, linear step model in latent and in model space), observation times and windows (CSV column, QC),
//! per-slot report, determinism, backgrounds given per slot, and a host's step model through the C ABI (status and
//! output checks, host arrays untouched on failure).

#![allow(clippy::needless_range_loop)]

mod common;

use std::ffi::{c_void, CString};

use common::*;
use faer::linalg::solvers::Solve;
use latentda::coupling::ffi::{self, LdaContext};
use latentda::diag::checks::first_order_decades;
use latentda::model::forecast::StepModel;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{parse_csv, Observation, QcFlag};
use latentda::var::fourd::FourD;
use latentda::{Analyser, Method, Options, OutputMode, Status};

fn open(name: &str, toml: &str) -> Analyser {
    Analyser::open(fixture(name), Options::from_toml(toml).unwrap()).unwrap()
}

fn sample4d(a: &Analyser, name: &str) -> (Vec<f64>, Vec<f64>, Vec<Observation>) {
    let s = fixture(name).join("sample");
    let lay = &a.bundle.layout;
    let xb = latentda::ncio::read_state(&s.join("background.nc"), lay).unwrap();
    let xt = latentda::ncio::read_state(&s.join("truth.nc"), lay).unwrap();
    let (obs, problems) = latentda::obs::read_csv(&s.join("obs_4d.csv"), lay).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    (xb, xt, obs)
}

fn eps_list() -> Vec<f64> {
    (-2..6).map(|k| 10f64.powi(-k)).collect()
}

/// A linear model-space step model on physical states: upwind advection along longitude with Courant number `c`
/// (x_next = (1 - c) x + c x(one point west)), periodic; its TL is itself and its AD the transpose.
struct Advection {
    n: usize,
    nlon: usize,
    c: f64,
}

impl Advection {
    fn apply(&self, x: &[f64], y: &mut [f64]) {
        for (row, out) in x.chunks(self.nlon).zip(y.chunks_mut(self.nlon)) {
            for i in 0..self.nlon {
                out[i] = (1.0 - self.c) * row[i] + self.c * row[(i + self.nlon - 1) % self.nlon];
            }
        }
    }
    fn transpose(&self, g: &[f64], y: &mut [f64]) {
        for (row, out) in g.chunks(self.nlon).zip(y.chunks_mut(self.nlon)) {
            for i in 0..self.nlon {
                out[i] = (1.0 - self.c) * row[i] + self.c * row[(i + 1) % self.nlon];
            }
        }
    }
}

impl StepModel for Advection {
    fn state_len(&self) -> usize {
        self.n
    }
    fn time_step_hours(&self) -> f64 {
        6.0
    }
    fn describe(&self) -> String {
        "test advection".into()
    }
    fn step(&mut self, x: &[f64], x_next: &mut [f64]) -> latentda::Result<()> {
        self.apply(x, x_next);
        Ok(())
    }
    fn tl(&mut self, _x: &[f64], dx: &[f64], dx_next: &mut [f64]) -> latentda::Result<()> {
        self.apply(dx, dx_next);
        Ok(())
    }
    fn ad(&mut self, _x: &[f64], dx_next: &[f64], dx: &mut [f64]) -> latentda::Result<()> {
        self.transpose(dx_next, dx);
        Ok(())
    }
}

fn advection(a: &Analyser) -> Advection {
    Advection { n: a.bundle.layout.state_len(), nlon: a.bundle.layout.grid.nlon(), c: 0.4 }
}

#[test]
fn chained_tl_ad_pass_the_adjoint_and_taylor_tests() {
    for name in ["linear", "tanh"] {
        let mut a = open(name, "");
        let (xb, _, _) = sample4d(&a, name);
        let fc = a.forecast_checks(&xb, None, 3, &eps_list(), 11).unwrap().expect("the fixture has a step model");
        eprintln!(
            "{name}: step dot {:.2e}, chained dot {:.2e} ({} slots)",
            fc.step_dot.rel, fc.chained_dot.rel, fc.nslots
        );
        assert_eq!(fc.nslots, 3);
        assert!(fc.step_dot.rel < 1e-5, "{name}: step model dot test {:e}", fc.step_dot.rel);
        assert!(fc.chained_dot.rel < 1e-5, "{name}: chained dot test {:e}", fc.chained_dot.rel);
        // the model-space chain (L3DVar transform, then the advection) with the same decoder
        let mut adv = advection(&a);
        let fm = a.forecast_checks(&xb, Some(&mut adv), 3, &eps_list(), 12).unwrap().unwrap();
        assert!(fm.step_dot.rel < 1e-13, "{name}: float64 advection dot test {:e}", fm.step_dot.rel);
        assert!(fm.chained_dot.rel < 1e-5, "{name}: model-space chained dot test {:e}", fm.chained_dot.rel);
        if name == "tanh" {
            for r in &fc.taylor {
                eprintln!("  eps {:8.0e} ratio {:.8} remainder {:.3e}", r.eps, r.ratio, r.remainder);
            }
            let decades = first_order_decades(&fc.taylor);
            let best = fc.taylor.iter().map(|r| (r.ratio - 1.0).abs()).fold(f64::INFINITY, f64::min);
            assert!(decades >= 3, "chained TL: first-order convergence over {decades} decades only");
            assert!(best < 1e-3, "chained TL: best |ratio - 1| = {best:e}");
            assert!(first_order_decades(&fm.taylor) >= 3, "model-space chain: {:?}", fm.taylor);
        } else {
            // linear decoder and linear step model: the TL is exact, so the remainder is the float32 round-off of the
            // decoded differences, ~1e-7 / eps: at the float32 floor for eps >= 0.1
            let big = fc.taylor.iter().filter(|r| r.eps >= 0.1);
            assert!(big.clone().count() == 4 && big.into_iter().all(|r| r.remainder < 1e-5), "{:?}", fc.taylor);
        }
    }
}

/// Column k of U (given) carried to slot j: (analyser, j, k, U e_k) -> M_j U e_k.
type Propagate<'a> = dyn FnMut(&mut Analyser, usize, usize, &[f64]) -> Vec<f64> + 'a;

/// Independent closed form: G stacks H_k M_k U per slot (U = sd D' diag(s) from decoder TL columns, M_k the k-fold
/// step TL, H_k built per slot), d = y - H_k x_b,k; dx_0 = U G^T (G G^T + R)^-1 d (the 4D-Var / Kalman smoother
/// solution at the start of the window).
fn closed_form(
    a: &mut Analyser,
    xb: &[f64],
    obs: &[Observation],
    propagate: &mut Propagate,
    background_at: &mut dyn FnMut(&mut Analyser, usize) -> Vec<f64>,
) -> Vec<f64> {
    let lay = a.bundle.layout.clone();
    let (n, nx) = (a.bundle.latent_size(), lay.state_len());
    let mut op = a.latent_b(xb).unwrap();
    use latentda::bmat::BOperator;
    let mut u = vec![vec![0.0; nx]; n];
    for (k, col) in u.iter_mut().enumerate() {
        let mut e = vec![0.0; n];
        e[k] = 1.0;
        op.sqrt(&mut a.ae, &e, col).unwrap();
    }
    let (mut g, mut d, mut sig) = (vec![Vec::new(); n], Vec::new(), Vec::new());
    for slot in 0..3 {
        let o: Vec<Observation> = obs.iter().filter(|o| o.time == 6.0 * slot as f64).cloned().collect();
        let mut flags = vec![QcFlag::Used; o.len()];
        let h = ObsOperator::build(&lay, &o, &mut flags);
        assert_eq!(h.nrows(), o.len());
        let xbk = background_at(a, slot);
        let mut hx = vec![0.0; h.nrows()];
        h.apply(&xbk, &mut hx);
        for (r, &i) in h.rows.iter().enumerate() {
            d.push(o[i].value - hx[r]);
            sig.push(o[i].sigma);
        }
        for k in 0..n {
            let col = propagate(a, slot, k, &u[k]);
            let mut y = vec![0.0; h.nrows()];
            h.apply(&col, &mut y);
            g[k].extend(y);
        }
    }
    let m = d.len();
    let amat = faer::Mat::<f64>::from_fn(m, m, |i, j| {
        (0..n).map(|k| g[k][i] * g[k][j]).sum::<f64>() + if i == j { sig[i] * sig[i] } else { 0.0 }
    });
    let mut rhs = faer::Mat::<f64>::from_fn(m, 1, |i, _| d[i]);
    amat.llt(faer::Side::Lower).unwrap().solve_in_place(&mut rhs);
    let w: Vec<f64> = (0..n).map(|k| (0..m).map(|i| g[k][i] * rhs[(i, 0)]).sum()).collect();
    let mut dx = vec![0.0; nx];
    for k in 0..n {
        for p in 0..nx {
            dx[p] += u[k][p] * w[k];
        }
    }
    dx
}

fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

#[test]
fn l4dvar_with_linear_decoder_and_latent_step_model_equals_the_closed_form() {
    let opt = "outer_loops = 1\nmax_inner = 200\ngradient_reduction = 1e-12\nbg_check = 0.0";
    let mut a = open("linear", opt);
    let (xb, _, obs) = sample4d(&a, "linear");
    let res = a.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let dx: Vec<f64> = res.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    let z_b: Vec<f64> = a.encode_background(&xb).unwrap().iter().map(|&v| v as f64).collect();
    let (np, sd) = (a.bundle.layout.grid.npoints(), a.bundle.std.clone());
    let nz = z_b.len();
    // the latent trajectory of the step model and the decoder, straight from the ONNX graphs
    let step_tl = |a: &mut Analyser, k: usize, dz: &[f64]| -> Vec<f64> {
        let mut v = dz.to_vec();
        for _ in 0..k {
            let mut nv = vec![0.0; nz];
            a.forecast.as_mut().unwrap().tl(&z_b, &v, &mut nv).unwrap();
            v = nv;
        }
        v
    };
    let decode = |a: &mut Analyser, z: &[f64]| -> Vec<f64> {
        let z32: Vec<f32> = z.iter().map(|&v| v as f32).collect();
        let mut xn = vec![0f32; a.ae.state_len];
        a.ae.decode(&z32, &mut xn).unwrap();
        xn.iter().map(|&v| v as f64).collect()
    };
    // column k at slot j: sd * D'(F^j(z_b)) F'^j (s e_k), from the ONNX graphs directly
    let s: Vec<f64> = a.bundle.latent_variance.iter().map(|v| v.sqrt()).collect();
    let mut propagate = |a: &mut Analyser, slot: usize, k: usize, _u: &[f64]| -> Vec<f64> {
        let mut e = vec![0.0; nz];
        e[k] = s[k];
        let dz = step_tl(a, slot, &e);
        let (dz32, z32): (Vec<f32>, Vec<f32>) =
            (dz.iter().map(|&v| v as f32).collect(), z_b.iter().map(|&v| v as f32).collect());
        let mut dxn = vec![0f32; a.ae.state_len];
        a.ae.tl(&z32, &dz32, &mut dxn).unwrap();
        (0..dxn.len()).map(|p| sd[p / np] * dxn[p] as f64).collect()
    };
    let mut background_at = |a: &mut Analyser, slot: usize| -> Vec<f64> {
        let mut z = z_b.clone();
        for _ in 0..slot {
            let mut nz_ = vec![0.0; nz];
            a.forecast.as_mut().unwrap().step(&z, &mut nz_).unwrap();
            z = nz_;
        }
        let (d0, dk) = (decode(a, &z_b), decode(a, &z));
        (0..xb.len()).map(|p| xb[p] + sd[p / np] * (dk[p] - d0[p])).collect()
    };
    let dx_cf = closed_form(&mut a, &xb, &obs, &mut propagate, &mut background_at);
    let r = rel_diff(&dx, &dx_cf);
    eprintln!("L4DVar (latent step model) vs closed form: relative difference {r:e}");
    assert!(r < 1e-6, "L4DVar increment differs from the closed-form 4D-Var solution by {r:e}");
    // the 4D solution is not the 3D one: observations at 6 h and 12 h act through the step model
    let r3 = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let dx3: Vec<f64> = r3.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    assert!(rel_diff(&dx3, &dx_cf) > 0.1, "L3DVar should differ from the 4D solution");
    // latent_increment = "linear" gives the same quadratic problem in one outer loop
    let mut b = open("linear", &format!("{opt}\nlatent_increment = \"linear\""));
    let rl = b.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let dxl: Vec<f64> = rl.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    assert!(rel_diff(&dxl, &dx_cf) < 1e-6, "linear form: {:e}", rel_diff(&dxl, &dx_cf));
}

#[test]
fn l4dvar_with_linear_decoder_and_host_model_equals_the_closed_form() {
    let opt = "outer_loops = 1\nmax_inner = 200\ngradient_reduction = 1e-12\nbg_check = 0.0";
    let mut a = open("linear", opt);
    let (xb, _, obs) = sample4d(&a, "linear");
    let mut adv = advection(&a);
    let res =
        a.analyse_4d(&xb, &obs, OutputMode::Analysis, FourD { backgrounds: vec![], model: Some(&mut adv) }).unwrap();
    let w = res.report.window.as_ref().unwrap();
    assert_eq!(w.step_model, "test advection, physical units");
    assert_eq!(w.background_trajectory, ["step model"; 3]);
    let dx: Vec<f64> = res.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    let adv2 = advection(&a);
    let pow = |x: &[f64], k: usize| -> Vec<f64> {
        let mut v = x.to_vec();
        for _ in 0..k {
            let mut nv = vec![0.0; v.len()];
            adv2.apply(&v, &mut nv);
            v = nv;
        }
        v
    };
    let mut propagate = |_: &mut Analyser, slot: usize, _k: usize, u: &[f64]| pow(u, slot);
    let mut background_at = |_: &mut Analyser, slot: usize| pow(&xb, slot);
    let dx_cf = closed_form(&mut a, &xb, &obs, &mut propagate, &mut background_at);
    let r = rel_diff(&dx, &dx_cf);
    eprintln!("L4DVar (model-space step model) vs closed form: relative difference {r:e}");
    assert!(r < 1e-6, "L4DVar increment differs from the closed-form solution by {r:e}");
}

#[test]
fn l4dvar_beats_l3dvar_on_the_4d_sample_and_reports_slots() {
    // The tanh fixture's decoder is strongly nonlinear on purpose (Taylor ratio 0.8 at the prior scale): there the
    // linear latent increment (the default) is a poor model of the decoded increment (it makes v worse than the
    // background with these observations), so this test runs the nonlinear form, which the outer loops relinearise.
    let mut a = open("tanh", "latent_increment = \"nonlinear\"");
    let (xb, xt, obs) = sample4d(&a, "tanh");
    let r4 = a.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let r3 = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    let lay = &a.bundle.layout;
    let (eb, e4, e3) =
        (lay.rms_diff_by_var(&xb, &xt), lay.rms_diff_by_var(&r4.analysis, &xt), lay.rms_diff_by_var(&r3.analysis, &xt));
    eprintln!("rmse background {eb:?}\n     l4dvar {e4:?}\n     l3dvar {e3:?}");
    for v in 0..3 {
        assert!(e4[v] < eb[v], "l4dvar made variable {v} worse: {} vs background {}", e4[v], eb[v]);
        assert!(e4[v] < e3[v], "l4dvar not better than l3dvar on variable {v}");
    }
    let s = r4.report.solver.as_ref().unwrap();
    assert!(s.j_final < 0.2 * s.j_initial, "J {} -> {}", s.j_initial, s.j_final);
    let w = r4.report.window.as_ref().unwrap();
    assert_eq!((w.window_hours, w.slot_hours, w.nslots), (12.0, 6.0, 3));
    assert_eq!(w.slots.iter().map(|s| s.n_used).collect::<Vec<_>>(), [20, 20, 20]);
    let jo: f64 = w.slots.iter().map(|s| s.jo_a).sum();
    assert!((jo - s.jo_final).abs() <= 1e-9 * s.jo_final, "per-slot Jo {jo} vs solver Jo {}", s.jo_final);
    assert!(w.slots.iter().all(|s| s.jo_a < s.jo_b));
    assert!(w.trajectory_bytes > 0);
    let t = &r4.report.timings;
    assert!(t.n_step_tl > 0 && t.n_step_ad > 0 && t.n_step > 0, "{t:?}");
    let json = r4.report.to_json();
    assert!(json.contains("\"window\"") && json.contains("\"jo_b\""));
    assert!(!r3.report.to_json().contains("\"window\""), "3D reports carry no window");
    // increment output mode: the increment at the analysis time
    let ri = a.analyse_with(&xb, &obs, Method::L4dvar, OutputMode::Increment).unwrap();
    assert!(ri
        .output
        .iter()
        .zip(&ri.analysis)
        .zip(&xb)
        .all(|((d, an), b)| (d - (an - b)).abs() <= 1e-9 * an.abs().max(1.0)));
    assert!(a
        .analyse_with(&xb, &obs, Method::L4dvar, OutputMode::FullState)
        .unwrap_err()
        .message
        .contains("full_state"));
}

/// Option error_growth_per_hour inflates the error variance of later slots: sigma^2 (1 + g t). The slots' J_o (with
/// the inflated sigma) still add up to the solver's J_o, slot 0 keeps its weight, and later observations pull less.
#[test]
fn error_growth_inflates_later_slots() {
    let mut a = open("tanh", "bg_check = 0.0");
    let (xb, _, obs) = sample4d(&a, "tanh");
    let r0 = a.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let mut b = open("tanh", "bg_check = 0.0\nerror_growth_per_hour = 0.5");
    let r1 = b.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let (w0, w1) = (r0.report.window.as_ref().unwrap(), r1.report.window.as_ref().unwrap());
    let s1 = r1.report.solver.as_ref().unwrap();
    let jo: f64 = w1.slots.iter().map(|s| s.jo_a).sum();
    assert!((jo - s1.jo_final).abs() <= 1e-9 * s1.jo_final, "per-slot Jo {jo} vs solver Jo {}", s1.jo_final);
    assert_eq!(w0.slots[0].jo_b, w1.slots[0].jo_b, "slot 0 (t = 0) is not inflated");
    for k in 1..3 {
        let f = 1.0 + 0.5 * 6.0 * k as f64;
        assert!((w0.slots[k].jo_b / w1.slots[k].jo_b - f).abs() < 1e-9 * f, "slot {k}: Jo_b ratio != {f}");
    }
    assert!(w1.slots[0].jo_a < w0.slots[0].jo_a, "the analysis fits slot 0 closer when later slots weigh less");
    assert!(Options::from_toml("error_growth_per_hour = -1.0").unwrap_err().message.contains("error_growth_per_hour"));
    // the bundle's [forecast] table may carry the value for its own step model; an option overrides it, and a host's
    // step model does not inherit it
    let dir = copy_fixture("tanh", "l4dvar_growth");
    let m = std::fs::read_to_string(dir.join("bundle.toml")).unwrap();
    std::fs::write(dir.join("bundle.toml"), m.replace("[forecast]\n", "[forecast]\nerror_growth_per_hour = 0.5\n"))
        .unwrap();
    let opts = Options::from_toml("bg_check = 0.0").unwrap();
    let mut c = Analyser::open(&dir, opts.clone()).unwrap();
    let r2 = c.analyse(&xb, &obs, Method::L4dvar).unwrap();
    assert_eq!(r2.report.window.as_ref().unwrap().error_growth_per_hour, 0.5);
    assert_eq!(r2.analysis, r1.analysis);
    let mut adv = advection(&c);
    let r3 =
        c.analyse_4d(&xb, &obs, OutputMode::Analysis, FourD { backgrounds: vec![], model: Some(&mut adv) }).unwrap();
    assert_eq!(r3.report.window.as_ref().unwrap().error_growth_per_hour, 0.0);
    let mut d = Analyser::open(&dir, Options { error_growth_per_hour: Some(0.0), ..opts }).unwrap();
    assert_eq!(d.analyse(&xb, &obs, Method::L4dvar).unwrap().analysis, r0.analysis);
    std::fs::write(dir.join("bundle.toml"), m.replace("[forecast]\n", "[forecast]\nerror_growth_per_hour = -1\n"))
        .unwrap();
    let e = Analyser::open(&dir, Options::default()).unwrap_err();
    assert!(e.status == Status::Bundle && e.message.contains("forecast.error_growth_per_hour"), "{}", e.message);
}

#[test]
fn l4dvar_is_bit_identical_across_runs_and_contexts() {
    let mut a = open("tanh", "");
    let (xb, _, obs) = sample4d(&a, "tanh");
    let r1 = a.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let r2 = open("tanh", "").analyse(&xb, &obs, Method::L4dvar).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<u64>>();
    assert_eq!(bits(&r1.analysis), bits(&r2.analysis));
    let lines = |r: &latentda::Analysis| {
        r.report.solver.as_ref().unwrap().iterations.iter().map(|i| i.line()).collect::<Vec<_>>()
    };
    assert_eq!(lines(&r1), lines(&r2));
}

#[test]
fn observation_times_windows_and_qc() {
    let a = open("tanh", "");
    let lay = &a.bundle.layout;
    let csv = "var,lat,lon,level,value,sigma,time\nt,10,20,0.5,250,1,3.5\nt,10,20,0.5,250,1,\nt,10,20,0.5,250,1,x\nps,0,0,,1e5,50,-2\n";
    let (obs, problems) = parse_csv(csv, lay).unwrap();
    assert_eq!(obs.len(), 4);
    assert_eq!(obs[0].time, 3.5);
    assert_eq!(obs[3].time, -2.0);
    assert_eq!(problems.iter().map(|p| p.line).collect::<Vec<_>>(), [3, 4], "{problems:?}");
    assert!(problems[1].message.contains("'time'"), "{}", problems[1].message);
    let (plain, _) = parse_csv("var,lat,lon,level,value,sigma\nt,10,20,0.5,250,1\n", lay).unwrap();
    assert_eq!(plain[0].time, 0.0);
    for bad in ["var,lat,lon,level,value,sigma,when\n", "var,lat,lon,level,value,sigma,time,extra\n"] {
        assert!(parse_csv(bad, lay).unwrap_err().message.contains("optionally followed by ',time'"));
    }
    // QC: outside the window (before 0, after window_hours) and non-finite times; l3dvar ignores times
    let mut a = open("tanh", "window_hours = 12.0");
    let (xb, _, mut obs) = sample4d(&a, "tanh");
    obs[0].time = -1.0;
    obs[1].time = 12.5;
    obs[2].time = f64::NAN;
    let r = a.analyse(&xb, &obs, Method::L4dvar).unwrap();
    assert_eq!(&r.qc[..4], &[QcFlag::OutsideWindow, QcFlag::OutsideWindow, QcFlag::Invalid, QcFlag::Used]);
    assert_eq!(r.report.qc_counts["outside_window"], 2);
    assert_eq!(r.report.window.as_ref().unwrap().slots.iter().map(|s| s.n_total).sum::<usize>(), 57);
    let r3 = a.analyse(&xb, &obs, Method::L3dvar).unwrap();
    assert!(r3.qc.iter().all(|q| *q == QcFlag::Used), "l3dvar ignores observation times");
    // slot width: the step is 6 h; 3 h slots are not reachable, 12 h slots are
    let mut b = open("tanh", "slot_hours = 3.0");
    let e = b.analyse(&xb, &obs, Method::L4dvar).unwrap_err();
    assert!(e.status == Status::InvalidArgument && e.message.contains("not a multiple of the step"), "{}", e.message);
    let mut c = open("tanh", "slot_hours = 12.0\nwindow_hours = 12.0");
    let rc = c.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let w = rc.report.window.unwrap();
    assert_eq!(
        (w.nslots, w.slots[0].n_total, w.slots[1].n_total),
        (2, 19, 38),
        "6 h observations go to the nearer slot 12 h"
    );
    // without a step model
    let mut d = Analyser::open(fixture("tanh"), Options::default()).unwrap();
    d.forecast = None;
    let e = d.analyse(&xb, &obs, Method::L4dvar).unwrap_err();
    assert!(e.status == Status::NotReady && e.message.contains("[forecast]"), "{}", e.message);
}

#[test]
fn backgrounds_given_per_slot_replace_the_step_model_trajectory() {
    let mut a = open("tanh", "bg_check = 0.0");
    let (xb, xt, obs) = sample4d(&a, "tanh");
    let plain = a.analyse(&xb, &obs, Method::L4dvar).unwrap();
    let fourd = FourD { backgrounds: vec![(6.0, xt.as_slice())], model: None };
    let given = a.analyse_4d(&xb, &obs, OutputMode::Analysis, fourd).unwrap();
    let (wp, wg) = (plain.report.window.unwrap(), given.report.window.unwrap());
    assert_eq!(wg.background_trajectory, ["step model", "host", "step model"]);
    assert_eq!(wp.slots[0].jo_b, wg.slots[0].jo_b);
    assert_ne!(wp.slots[1].jo_b, wg.slots[1].jo_b);
    for (t, msg) in [(5.0, "not a slot time"), (18.0, "not a slot time")] {
        let e =
            a.analyse_4d(&xb, &obs, OutputMode::Analysis, FourD { backgrounds: vec![(t, xt.as_slice())], model: None });
        assert!(e.unwrap_err().message.contains(msg));
    }
    let mut bad = xt.clone();
    bad[5] = f64::NAN;
    let e = a
        .analyse_4d(&xb, &obs, OutputMode::Analysis, FourD { backgrounds: vec![(6.0, bad.as_slice())], model: None })
        .unwrap_err();
    assert!(e.status == Status::InvalidData && e.message.contains("background at 6 h"), "{}", e.message);
    // the CLI: --background-at HOURS=FILE
    let dir = scratch("l4dvar_cli");
    let s = fixture("tanh").join("sample");
    let (out, rep) = (dir.join("an.nc"), dir.join("rep.json"));
    let arg = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let base = [
        "analyse".to_string(),
        "--method".into(),
        "l4dvar".into(),
        "--bundle".into(),
        arg(&fixture("tanh")),
        "--background".into(),
        arg(&s.join("background.nc")),
        "--obs".into(),
        arg(&s.join("obs_4d.csv")),
        "--output".into(),
        arg(&out),
        "--report".into(),
        arg(&rep),
    ];
    let mut args: Vec<String> = base.to_vec();
    args.extend(["--background-at".into(), format!("6={}", arg(&s.join("truth.nc")))]);
    let (code, stdout, stderr) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("window 12 h: 3 slots of 6 h"), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(json["window"]["background_trajectory"][1], "host");
    let mut args: Vec<String> = base.to_vec();
    args.extend(["--background-at".into(), format!("7={}", arg(&s.join("truth.nc")))]);
    let (code, _, stderr) = cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("not a slot time"), "{stderr}");
    let (code, _, stderr) = cli(&["analyse", "--background-at", "six"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("HOURS=FILE"), "{stderr}");
}

// ---- a host step model through the C ABI ----------------------------------------------------------------------

/// The context of the host callbacks below.
struct HostModel {
    nlon: usize,
    c: f64,
    /// Status the callbacks return (0 = success).
    status: i32,
    /// Leave the output unwritten (a broken callback).
    skip_output: bool,
    calls: usize,
}

unsafe fn host<'a>(user: *mut c_void) -> &'a mut HostModel {
    // SAFETY: `user` is the test's HostModel, alive for the whole analysis.
    unsafe { &mut *(user as *mut HostModel) }
}

fn advect(m: &HostModel, n: usize, x: *const f64, y: *mut f64, transpose: bool) {
    // SAFETY: latentda passes n readable values at x and n writable values at y.
    let (x, y) = unsafe { (std::slice::from_raw_parts(x, n), std::slice::from_raw_parts_mut(y, n)) };
    let adv = Advection { n, nlon: m.nlon, c: m.c };
    if transpose {
        adv.transpose(x, y)
    } else {
        adv.apply(x, y)
    }
}

unsafe extern "C" fn cb_step(user: *mut c_void, n: usize, x: *const f64, x_next: *mut f64) -> i32 {
    // SAFETY: latentda passes back the `user` pointer the test registered.
    let m = unsafe { host(user) };
    m.calls += 1;
    if !m.skip_output {
        advect(m, n, x, x_next, false);
    }
    m.status
}

unsafe extern "C" fn cb_tl(user: *mut c_void, n: usize, _x: *const f64, dx: *const f64, dx_next: *mut f64) -> i32 {
    // SAFETY: latentda passes back the `user` pointer the test registered.
    let m = unsafe { host(user) };
    m.calls += 1;
    advect(m, n, dx, dx_next, false);
    m.status
}

unsafe extern "C" fn cb_ad(user: *mut c_void, n: usize, _x: *const f64, dx_next: *const f64, dx: *mut f64) -> i32 {
    // SAFETY: latentda passes back the `user` pointer the test registered.
    let m = unsafe { host(user) };
    m.calls += 1;
    advect(m, n, dx_next, dx, true);
    m.status
}

#[test]
fn host_step_model_through_the_c_abi() {
    let dir = CString::new(fixture("tanh").to_str().unwrap()).unwrap();
    let mut ctx: *mut LdaContext = std::ptr::null_mut();
    assert_eq!(ffi::lda_open(dir.as_ptr(), std::ptr::null(), &mut ctx), ffi::LDA_OK);
    let a = open("tanh", "");
    let (xb, _, obs) = sample4d(&a, "tanh");
    let lay = a.bundle.layout.clone();
    let fields = bind_state_c(ctx, &lay, &xb);
    let col = |f: fn(&Observation) -> f64| obs.iter().map(f).collect::<Vec<f64>>();
    let var: Vec<i32> = obs.iter().map(|o| o.var.unwrap() as i32).collect();
    let (la, lo, le, va, si) =
        (col(|o| o.lat), col(|o| o.lon), col(|o| o.level.unwrap_or(f64::NAN)), col(|o| o.value), col(|o| o.sigma));
    let n = obs.len();
    assert_eq!(
        ffi::lda_set_obs(ctx, n, var.as_ptr(), la.as_ptr(), lo.as_ptr(), le.as_ptr(), va.as_ptr(), si.as_ptr()),
        ffi::LDA_OK
    );
    let times = col(|o| o.time);
    assert_eq!(ffi::lda_set_obs_times(ctx, n - 1, times.as_ptr()), ffi::LDA_ERR_INVALID_ARGUMENT);
    assert_eq!(ffi::lda_set_obs_times(ctx, n, std::ptr::null()), ffi::LDA_ERR_NULL_POINTER);
    assert_eq!(ffi::lda_set_obs_times(ctx, n, times.as_ptr()), ffi::LDA_OK);
    // the host's model context lives behind the raw pointer only (the callbacks mutate it)
    let m = Box::into_raw(Box::new(HostModel { nlon: 16, c: 0.4, status: 0, skip_output: false, calls: 0 }));
    let user = m as *mut c_void;
    // SAFETY: m stays valid until freed at the end; no other reference to it is live during these reads/writes.
    let calls_now = move || unsafe { (*m).calls };
    // some callbacks NULL, a bad time step
    assert_eq!(ffi::lda_set_step_model(ctx, Some(cb_step), None, Some(cb_ad), user, 6.0), ffi::LDA_ERR_NULL_POINTER);
    assert_eq!(
        ffi::lda_set_step_model(ctx, Some(cb_step), Some(cb_tl), Some(cb_ad), user, 0.0),
        ffi::LDA_ERR_INVALID_ARGUMENT
    );
    assert_eq!(ffi::lda_set_step_model(ctx, Some(cb_step), Some(cb_tl), Some(cb_ad), user, 6.0), ffi::LDA_OK);
    let (mut sd, mut cd) = (f64::NAN, f64::NAN);
    assert_eq!(ffi::lda_l4dvar_check(ctx, 3, 7, &mut sd, &mut cd), ffi::LDA_OK);
    eprintln!("host model: step dot {sd:.2e}, chained dot {cd:.2e}");
    assert!(sd < 1e-13 && cd < 1e-5, "{sd} {cd}");
    assert_eq!(ffi::lda_l4dvar_check(ctx, 0, 7, &mut sd, &mut cd), ffi::LDA_ERR_INVALID_ARGUMENT);
    let method = CString::new("l4dvar").unwrap();
    let calls = calls_now();
    assert_eq!(ffi::lda_analyse(ctx, method.as_ptr()), ffi::LDA_OK);
    assert!(calls_now() > calls, "the host's callbacks ran");
    let mut rep = Analyser::open(fixture("tanh"), Options::default()).unwrap();
    let mut adv = advection(&rep);
    let direct =
        rep.analyse_4d(&xb, &obs, OutputMode::Analysis, FourD { backgrounds: vec![], model: Some(&mut adv) }).unwrap();
    let analysed: Vec<f64> = fields.iter().flatten().copied().collect();
    assert_eq!(analysed, direct.analysis, "C ABI and Rust API give the same analysis");
    let s = direct.report.solver.as_ref().unwrap();
    assert!(
        s.j_final < 0.5 * s.j_initial,
        "J {} -> {} with the host's (wrong, but smooth) model",
        s.j_initial,
        s.j_final
    );
    let path = CString::new("window.slots.2.n_used").unwrap();
    let mut v = 0.0;
    assert_eq!(ffi::lda_report_number(ctx, path.as_ptr(), &mut v), ffi::LDA_OK);
    assert_eq!(v, 20.0);
    // a failing callback, and one that leaves its output unwritten: errors, host arrays untouched
    for (status, skip, what) in [(3, false, "returned status 3"), (0, true, "non-finite")] {
        let before: Vec<Vec<u64>> = fields.iter().map(|f| f.iter().map(|v| v.to_bits()).collect()).collect();
        // SAFETY: as for calls_now.
        unsafe {
            (*m).status = status;
            (*m).skip_output = skip;
        }
        assert_eq!(ffi::lda_analyse(ctx, method.as_ptr()), ffi::LDA_ERR_BACKEND);
        // SAFETY: lda_last_error never returns NULL.
        let msg = unsafe { std::ffi::CStr::from_ptr(ffi::lda_last_error(ctx)) }.to_string_lossy().into_owned();
        assert!(msg.contains("callback 'step'") && msg.contains(what), "{msg}");
        let after: Vec<Vec<u64>> = fields.iter().map(|f| f.iter().map(|v| v.to_bits()).collect()).collect();
        assert_eq!(before, after, "host arrays changed by a failed analysis");
    }
    // all three NULL removes the host model: the bundle's step model serves again
    assert_eq!(ffi::lda_set_step_model(ctx, None, None, None, std::ptr::null_mut(), 0.0), ffi::LDA_OK);
    let calls = calls_now();
    assert_eq!(ffi::lda_analyse(ctx, method.as_ptr()), ffi::LDA_OK);
    assert_eq!(calls_now(), calls);
    assert_eq!(ffi::lda_close(ctx), ffi::LDA_OK);
    // SAFETY: created by Box::into_raw above; the context that used it is closed.
    drop(unsafe { Box::from_raw(m) });
}
