//! One B in force (issue 23, item 3): with `latent_variance_factor`, the hybrid weights and latitude-band weights
//! set, the analysis' minimisation, the background check's variance and the host's B operator (`Analyser::with_b`,
//! `Analyser::latent_b`, which the C ABI's `lda_bsqrt` family lends) are one operator.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use latentda::bmat::BOperator;
use latentda::diag::checks::Rng;
use latentda::obs::operator::ObsOperator;
use latentda::obs::{Observation, QcFlag};
use latentda::var::options::BKind;
use latentda::{Analyser, Method, Options};

const FORCE: &str =
    "latent_variance_factor = 0.6\nbaseline_variance_factor = 1.7\nhybrid_alpha = 2.0\nhybrid_beta = 0.5\n\
                     hybrid_alpha_tropics = 0.5\nhybrid_beta_tropics = 1.5\nhybrid_band_lat = [5.0, 45.0]";

fn open(name: &str, toml: &str) -> Analyser {
    Analyser::open(fixture(name), Options::from_toml(toml).unwrap()).unwrap()
}

fn sample(a: &Analyser, name: &str) -> (Vec<f64>, Vec<Observation>) {
    let s = fixture(name).join("sample");
    let lay = &a.bundle.layout;
    let xb = latentda::bundle::ncio::read_state(&s.join("background.nc"), lay).unwrap();
    let (obs, _) = latentda::obs::read_csv(&s.join("obs.csv"), lay).unwrap();
    (xb, obs)
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    num / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

/// `Analyser::latent_b` (the public path for hosts with their own minimiser) applies `latent_variance_factor`,
/// exactly as the cached operator of the analysis and of `with_b` does.
#[test]
fn latent_b_for_hosts_applies_the_variance_factor() {
    let mut a = open("tanh", FORCE);
    let (xb, _) = sample(&a, "tanh");
    let mut lb = a.latent_b(&xb).unwrap();
    let v = Rng::new(7).normals(lb.control_size());
    let mut x_host = vec![0.0; lb.state_len()];
    lb.sqrt(&mut a.ae, &v, &mut x_host).unwrap();
    let z = a.encode_background(&xb).unwrap();
    a.prepare_b(BKind::Latent, Some(&z)).unwrap();
    let mut x_cached = vec![0.0; x_host.len()];
    a.with_b(BKind::Latent, |b, ae| b.sqrt(ae, &v, &mut x_cached)).unwrap();
    assert_eq!(x_host, x_cached, "latent_b and with_b(latent) differ");
    // and it is sqrt(0.6) times the operator without the factor
    let mut u = open("tanh", "");
    let mut x_unit = vec![0.0; x_host.len()];
    u.latent_b(&xb).unwrap().sqrt(&mut u.ae, &v, &mut x_unit).unwrap();
    let scaled: Vec<f64> = x_unit.iter().map(|x| x * 0.6f64.sqrt()).collect();
    let r = rel(&x_host, &scaled);
    // the decoder TL runs in float32: scaling its input by sqrt(0.6) agrees to float32 round-off, not exactly
    assert!(r < 1e-6, "latent_b with factor 0.6 is not sqrt(0.6) x the unit one: {r:e}");
}

/// The hybrid's variance (the background check's sigma_b) is alpha(phi) f diag(B_l) + beta(phi) g diag(P B_s P^T)
/// with the factors f, g and the band weights in force.
#[test]
fn hybrid_variance_carries_factors_and_band_weights() {
    let mut a = open("tanh", FORCE);
    let (xb, _) = sample(&a, "tanh");
    let z = a.encode_background(&xb).unwrap();
    a.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
    let hv = a.with_b(BKind::Hybrid, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    let mut u = open("tanh", "");
    let zu = u.encode_background(&xb).unwrap();
    u.prepare_b(BKind::Latent, Some(&zu)).unwrap();
    let lv = u.with_b(BKind::Latent, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    u.prepare_b(BKind::Static, None).unwrap();
    let sv = u.with_b(BKind::Static, |b, ae| Ok(b.variance(ae)?.to_vec())).unwrap();
    let lay = a.bundle.layout.clone();
    let (np, nlon) = (lay.grid.npoints(), lay.grid.nlon());
    let ramp = |phi: f64, tropics: f64, extra: f64| {
        let t = ((phi.abs() - 5.0) / 40.0).clamp(0.0, 1.0);
        tropics + (extra - tropics) * (1.0 - (std::f64::consts::PI * t).cos()) / 2.0
    };
    let mut worst = 0.0f64;
    for i in 0..hv.len() {
        let phi = lay.grid.lat[(i % np) / nlon];
        let want = ramp(phi, 0.5, 2.0) * 0.6 * lv[i] + ramp(phi, 1.5, 0.5) * 1.7 * sv[i];
        worst = worst.max((hv[i] - want).abs() / want.max(1e-300));
    }
    eprintln!("hybrid variance vs alpha(phi) f diag B_l + beta(phi) g diag B_s: max relative difference {worst:.2e}");
    // float32 decoder TL (alpha_ref folded into its input): round-off of order 1e-7
    assert!(worst < 1e-6, "{worst:e}");
}

/// With a linear decoder, the hybrid analysis (factors, weights and bands set) equals the Kalman solution built from
/// the columns of the host's B operator `with_b(hybrid)`: the minimisation and the host operator are one B.
#[test]
fn hybrid_analysis_uses_the_host_operator_with_factors_and_bands() {
    let opt = format!("outer_loops = 1\nmax_inner = 400\ngradient_reduction = 1e-13\nbg_check = 0.0\n{FORCE}");
    let mut a = open("linear", &opt);
    let (xb, obs) = sample(&a, "linear");
    let res = a.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let lay = a.bundle.layout.clone();
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&lay, &obs, &mut flags);
    let ns = lay.state_len();
    let z = a.encode_background(&xb).unwrap();
    a.prepare_b(BKind::Hybrid, Some(&z)).unwrap();
    let n = a.control_size(BKind::Hybrid).unwrap();
    let cols: Vec<Vec<f64>> = (0..n)
        .map(|k| {
            let mut e = vec![0.0; n];
            e[k] = 1.0;
            let mut c = vec![0.0; ns];
            a.with_b(BKind::Hybrid, |b, ae| b.sqrt(ae, &e, &mut c)).unwrap();
            c
        })
        .collect();
    let dx_kalman = kalman(&cols, &h, &obs, &xb);
    let dx: Vec<f64> = res.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    let r = rel(&dx, &dx_kalman);
    eprintln!("hybrid analysis (factors 0.6 / 1.7, bands) vs Kalman with the host operator: {r:.2e}");
    // float32 TL columns and a solver converged to gradient_reduction 1e-13 (observed 1.0e-6)
    assert!(r < 1e-5, "{r:e}");
    // the factors matter: without them the analysis differs
    let mut plain = open("linear", &opt.replace("latent_variance_factor = 0.6\nbaseline_variance_factor = 1.7\n", ""));
    let rp = plain.analyse(&xb, &obs, Method::Hybrid).unwrap();
    let dp: Vec<f64> = rp.analysis.iter().zip(&xb).map(|(a, b)| a - b).collect();
    assert!(rel(&dp, &dx_kalman) > 1e-3, "the factors changed nothing");
}
