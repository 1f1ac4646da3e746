//! Ensemble B parts (issue 24) on the fixture bundles: adjoint tests of the latent and model-space ensemble square
//! roots with localisation (the latent one through the real tanh decoder's TL/AD), their variances against brute
//! force, the latent ensemble B with a linear decoder against the explicitly built localised latent covariance and
//! the closed-form Kalman analysis, and hybrids with the existing parts.

#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use faer::linalg::solvers::Solve;
use latentda::bmat::ensemble::{latent_grid, latent_localisation, LatentEnsembleB, ModelEnsembleB};
use latentda::bmat::hybrid::Hybrid;
use latentda::bmat::latent::LatentB;
use latentda::bmat::localisation::Localisation;
use latentda::bmat::static_b::StaticB;
use latentda::bmat::BOperator;
use latentda::numeric::Rng;
use latentda::obs::operator::ObsOperator;
use latentda::obs::QcFlag;
use latentda::{Analyser, Options};

fn open(name: &str) -> Analyser {
    Analyser::open(fixture(name), Options::from_toml("").unwrap()).unwrap()
}

fn background(a: &Analyser, name: &str) -> Vec<f64> {
    latentda::bundle::ncio::read_state(&fixture(name).join("sample/background.nc"), &a.bundle.layout).unwrap()
}

/// K members x_b + 0.3 sd_c r_k (r_k ~ N(0, I), one sd per channel), deterministic.
fn members(a: &Analyser, xb: &[f64], k: usize, seed: u64) -> Vec<Vec<f64>> {
    let np = a.bundle.layout.grid.npoints();
    (0..k)
        .map(|i| {
            let r = Rng::new(seed + i as u64).normals(xb.len());
            xb.iter().zip(&r).enumerate().map(|(p, (x, r))| x + 0.3 * a.bundle.std[p / np] * r).collect()
        })
        .collect()
}

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0.0f64, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn latent_ensemble_b_passes_its_adjoint_test_through_the_tanh_decoder() {
    let mut a = open("tanh");
    let xb = background(&a, "tanh");
    let mem = members(&a, &xb, 6, 40);
    // The tanh fixture's latent [4, 2, 4]: 4 channels on a 2 x 4 latent grid (cells of 4 x 4 model points).
    let (nc, lat, lon) = latent_grid(&a.bundle.layout.grid, &a.bundle.latent_shape).unwrap();
    assert_eq!((nc, lat.len(), lon.len()), (4, 2, 4));
    let loc = latent_localisation(&a.bundle, 8000.0).unwrap();
    eprintln!("latent localisation: {}; latent rows {lat:.3?}, columns {lon:?}", loc.describe());
    let mut eb = LatentEnsembleB::from_states(&a.bundle, &mut a.ae, &mem, &xb, 0.6, loc).unwrap();
    assert_eq!(eb.point(), a.encode_background(&xb).unwrap().as_slice(), "z_b encoded as LatentB::at_background does");
    assert_eq!((eb.control_size(), eb.state_len()), (6 * 8, 896));
    for seed in [17, 18, 19] {
        let t = eb.sqrt_test(&mut a.ae, seed).unwrap();
        eprintln!("latent ensemble B (tanh decoder, K = 6, 48 controls), seed {seed}: adjoint rel {:.2e}", t.rel);
        assert!(t.rel < 1e-5, "adjoint test rel {:e}", t.rel);
    }
    // Variance: exact from the 48 columns against brute force through the adjoint, |U^T e_p|^2.
    eb.set_variance_samples(48);
    assert!(eb.variance_is_exact());
    let var = eb.variance(&mut a.ae).unwrap().to_vec();
    let (n, m) = (eb.control_size(), eb.state_len());
    let mut brute = vec![0.0; m];
    let mut col = vec![0.0; n];
    for p in 0..m {
        let mut e = vec![0.0; m];
        e[p] = 1.0;
        eb.sqrt_ad(&mut a.ae, &e, &mut col).unwrap();
        brute[p] = col.iter().map(|c| c * c).sum();
    }
    let rel = max_rel_diff(&var, &brute);
    eprintln!(
        "latent ensemble variance, exact by columns vs brute force via AD: max rel diff {rel:.2e}; {}",
        eb.variance_method()
    );
    assert!(rel < 1e-5, "variance differs from brute force by {rel:e}");
    // The randomised estimate (default 32 draws < 48 controls) is within a few sqrt(2/32) of it on average.
    eb.set_variance_samples(32);
    assert!(!eb.variance_is_exact());
    let est = eb.variance(&mut a.ae).unwrap().to_vec();
    let rms = (est.iter().zip(&brute).map(|(e, b)| (e / b - 1.0).powi(2)).sum::<f64>() / m as f64).sqrt();
    eprintln!("randomised (32 draws): rms relative error {rms:.3} (theory {:.3})", (2.0f64 / 32.0).sqrt());
    assert!(rms < 2.0 * (2.0f64 / 32.0).sqrt());
    // Deterministic: the same inputs give bit-identical increments.
    let loc2 = latent_localisation(&a.bundle, 8000.0).unwrap();
    let mut eb2 = LatentEnsembleB::from_states(&a.bundle, &mut a.ae, &mem, &xb, 0.6, loc2).unwrap();
    let v = Rng::new(3).normals(n);
    let (mut x1, mut x2) = (vec![0.0; m], vec![0.0; m]);
    eb.sqrt(&mut a.ae, &v, &mut x1).unwrap();
    eb2.sqrt(&mut a.ae, &v, &mut x2).unwrap();
    assert!(x1 == x2, "two builds differ");
}

#[test]
fn ensemble_errors_name_the_argument_and_the_member() {
    let mut a = open("tanh");
    let xb = background(&a, "tanh");
    for k in [0, 1] {
        let mem = members(&a, &xb, k, 1);
        let loc = latent_localisation(&a.bundle, 3000.0).unwrap();
        let e = LatentEnsembleB::from_states(&a.bundle, &mut a.ae, &mem, &xb, 1.0, loc).unwrap_err();
        eprintln!("K = {k}: {e}");
        assert!(e.message.contains("members") && e.message.contains("K >= 2"), "{e}");
        let e = ModelEnsembleB::for_layout(&a.bundle.layout, &mem, 1.0, 3000.0).unwrap_err();
        assert!(e.message.contains("members") && e.message.contains("K >= 2"), "{e}");
    }
    let mut mem = members(&a, &xb, 4, 1);
    mem[3][100] = f64::INFINITY;
    let loc = latent_localisation(&a.bundle, 3000.0).unwrap();
    let e = LatentEnsembleB::from_states(&a.bundle, &mut a.ae, &mem, &xb, 1.0, loc).unwrap_err();
    assert!(e.message.contains("member 3 (0-based) has a non-finite value inf at index 100"), "{e}");
    mem[3] = vec![0.0; 5];
    let e = ModelEnsembleB::for_layout(&a.bundle.layout, &mem, 1.0, 3000.0).unwrap_err();
    assert!(e.message.contains("member 3 (0-based) has length 5, expected 896"), "{e}");
    // A flat latent has no horizontal grid to localise on.
    let l = open("linear");
    let e = latent_localisation(&l.bundle, 3000.0).unwrap_err();
    assert!(e.message.contains("[channels, lat, lon]") && e.message.contains("[24]"), "{e}");
}

#[test]
fn model_ensemble_b_passes_its_adjoint_test_and_its_variance_is_exact() {
    let mut a = open("tanh");
    let xb = background(&a, "tanh");
    let mem = members(&a, &xb, 5, 70);
    let mut mb = ModelEnsembleB::for_layout(&a.bundle.layout, &mem, 0.8, 2500.0).unwrap();
    assert_eq!((mb.control_size(), mb.state_len()), (5 * 128, 896));
    let t = mb.sqrt_test(&mut a.ae, 17).unwrap();
    eprintln!("model ensemble B (K = 5, 640 controls): adjoint rel {:.2e}; {}", t.rel, mb.variance_method());
    assert!(t.rel < 1e-12, "adjoint rel {:e}", t.rel);
    let var = mb.variance(&mut a.ae).unwrap().to_vec();
    let (n, m) = (mb.control_size(), mb.state_len());
    let mut col = vec![0.0; n];
    let mut worst: f64 = 0.0;
    for p in 0..m {
        let mut e = vec![0.0; m];
        e[p] = 1.0;
        mb.sqrt_ad(&mut a.ae, &e, &mut col).unwrap();
        let brute: f64 = col.iter().map(|c| c * c).sum();
        worst = worst.max((var[p] - brute).abs() / brute);
    }
    eprintln!("model ensemble variance vs brute force: max rel diff {worst:.2e}");
    assert!(worst < 1e-12);
    // Without localisation effects on the diagonal, diag B = gamma x the ensemble variance.
    let ev = mb.ensemble_variance();
    assert!(var.iter().zip(&ev).all(|(v, e)| (v - 0.8 * e).abs() <= 1e-12 * e.abs().max(1e-300)));
}

/// With the linear fixture decoder (D(z) = W z + b), U U^T equals gamma sd W ((sum_k dz_k dz_k^T) o (L (x) 1 1^T))
/// W^T sd built explicitly, and the minimiser of J(a) = 1/2 |a|^2 + 1/2 |d - H U a|^2_R (normal equations) equals
/// the Kalman increment B H^T (H B H^T + R)^-1 d with that explicit B.
#[test]
fn latent_ensemble_b_with_linear_decoder_gives_the_kalman_analysis() {
    let mut a = open("linear");
    let xb = background(&a, "linear");
    let (obs, _) = latentda::obs::read_csv(&fixture("linear").join("sample/obs.csv"), &a.bundle.layout).unwrap();
    let lay = a.bundle.layout.clone();
    let (ns, np) = (lay.state_len(), lay.grid.npoints());
    // The flat 24-element latent read as 3 channels on 8 points (a made-up geometry: the algebra is what is tested).
    let (plat, plon) = (
        vec![60.0, 60.0, 60.0, 60.0, -20.0, -20.0, -20.0, -20.0],
        vec![0.0, 40.0, 80.0, 200.0, 0.0, 40.0, 80.0, 200.0],
    );
    let loc = Localisation::dense(&plat, &plon, 3000.0).unwrap();
    let (k, gamma) = (5, 0.7);
    let zs: Vec<Vec<f32>> =
        (0..k).map(|i| Rng::new(90 + i as u64).normals(24).iter().map(|v| *v as f32).collect()).collect();
    let z_b = a.encode_background(&xb).unwrap();
    let mut eb = LatentEnsembleB::new(&zs, z_b.clone(), &a.bundle.std, np, gamma, loc.clone()).unwrap();
    let nc = eb.control_size();
    assert_eq!(nc, k * 8);
    let t = eb.sqrt_test(&mut a.ae, 5).unwrap();
    eprintln!("latent ensemble B, linear decoder: adjoint rel {:.2e}", t.rel);
    assert!(t.rel < 1e-5);
    // Columns of U.
    let mut u = vec![vec![0.0; ns]; nc];
    for (j, c) in u.iter_mut().enumerate() {
        let mut e = vec![0.0; nc];
        e[j] = 1.0;
        eb.sqrt(&mut a.ae, &e, c).unwrap();
    }
    // W (in physical units, sd W) column by column through the TL, and the explicit latent covariance.
    let mut w = vec![vec![0.0; ns]; 24];
    let mut dxn = vec![0f32; ns];
    for (j, c) in w.iter_mut().enumerate() {
        let mut e = vec![0f32; 24];
        e[j] = 1.0;
        a.ae.tl(&z_b, &e, &mut dxn).unwrap();
        for p in 0..ns {
            c[p] = a.bundle.std[p / np] * dxn[p] as f64;
        }
    }
    let zf: Vec<Vec<f64>> = zs.iter().map(|z| z.iter().map(|v| *v as f64).collect()).collect();
    let mean: Vec<f64> = (0..24).map(|i| zf.iter().map(|z| z[i]).sum::<f64>() / k as f64).collect();
    let dz: Vec<Vec<f64>> =
        zf.iter().map(|z| z.iter().zip(&mean).map(|(v, m)| (v - m) / ((k - 1) as f64).sqrt()).collect()).collect();
    let bz = |i: usize, j: usize| gamma * dz.iter().map(|d| d[i] * d[j]).sum::<f64>() * loc.correlation(i % 8, j % 8);
    let bzm: Vec<f64> = (0..24 * 24).map(|q| bz(q / 24, q % 24)).collect();
    // B_ex = (sd W) Bz (sd W)^T, formed as (sd W Bz) then times (sd W)^T.
    let wbz: Vec<Vec<f64>> =
        (0..24).map(|j| (0..ns).map(|p| (0..24).map(|i| w[i][p] * bzm[i * 24 + j]).sum()).collect()).collect();
    let bex = |p: usize, q: usize| (0..24).map(|j| wbz[j][p] * w[j][q]).sum::<f64>();
    let (mut worst, mut big): (f64, f64) = (0.0, 0.0);
    for p in 0..ns {
        for q in (0..ns).step_by(7) {
            let uu: f64 = u.iter().map(|c| c[p] * c[q]).sum();
            let e = bex(p, q);
            worst = worst.max((uu - e).abs());
            big = big.max(e.abs());
        }
    }
    eprintln!(
        "latent ensemble B, linear decoder: max |U U^T - sd W (gamma P_z o L) W^T sd| / max|B| = {:.2e}",
        worst / big
    );
    assert!(worst < 1e-5 * big, "U U^T differs from the explicit localised latent covariance by {:e}", worst / big);
    // Observations of the fixture sample, innovations against x_b.
    let mut flags = vec![QcFlag::Used; obs.len()];
    let h = ObsOperator::build(&lay, &obs, &mut flags);
    let m = h.nrows();
    let mut hxb = vec![0.0; m];
    h.apply(&xb, &mut hxb);
    let sig: Vec<f64> = h.rows.iter().map(|&i| obs[i].sigma).collect();
    let d: Vec<f64> = h.rows.iter().zip(&hxb).map(|(&i, hb)| obs[i].value - hb).collect();
    let hu: Vec<Vec<f64>> = u
        .iter()
        .map(|c| {
            let mut y = vec![0.0; m];
            h.apply(c, &mut y);
            y
        })
        .collect();
    let amat = faer::Mat::<f64>::from_fn(nc, nc, |i, j| {
        (0..m).map(|o| hu[i][o] * hu[j][o] / (sig[o] * sig[o])).sum::<f64>() + if i == j { 1.0 } else { 0.0 }
    });
    let mut rhs = faer::Mat::<f64>::from_fn(nc, 1, |i, _| (0..m).map(|o| hu[i][o] * d[o] / (sig[o] * sig[o])).sum());
    amat.llt(faer::Side::Lower).unwrap().solve_in_place(&mut rhs);
    let av: Vec<f64> = (0..nc).map(|i| rhs[(i, 0)]).collect();
    let mut dx_var = vec![0.0; ns];
    eb.sqrt(&mut a.ae, &av, &mut dx_var).unwrap();
    // Kalman with the explicit B: B H^T = (sd W) Bz (H sd W)^T.
    let hw: Vec<Vec<f64>> = w
        .iter()
        .map(|c| {
            let mut y = vec![0.0; m];
            h.apply(c, &mut y);
            y
        })
        .collect();
    let bht: Vec<Vec<f64>> =
        (0..m).map(|o| (0..ns).map(|p| (0..24).map(|j| wbz[j][p] * hw[j][o]).sum()).collect()).collect();
    let s = faer::Mat::<f64>::from_fn(m, m, |o1, o2| {
        let mut y = vec![0.0; m];
        h.apply(&bht[o2], &mut y);
        y[o1] + if o1 == o2 { sig[o1] * sig[o1] } else { 0.0 }
    });
    let mut y = faer::Mat::<f64>::from_fn(m, 1, |o, _| d[o]);
    s.llt(faer::Side::Lower).unwrap().solve_in_place(&mut y);
    let dx_kal: Vec<f64> = (0..ns).map(|p| (0..m).map(|o| bht[o][p] * y[(o, 0)]).sum()).collect();
    let num = dx_var.iter().zip(&dx_kal).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    let den = dx_kal.iter().map(|b| b * b).sum::<f64>().sqrt();
    eprintln!(
        "latent ensemble B, linear decoder, {m} observations: variational vs Kalman increment, relative 2-norm {:.2e}",
        num / den
    );
    assert!(num / den < 1e-5, "variational and Kalman increments differ by {:e}", num / den);
}

#[test]
fn ensemble_parts_combine_with_the_existing_b_in_hybrids() {
    let mut a = open("tanh");
    let xb = background(&a, "tanh");
    let mem = members(&a, &xb, 6, 11);
    let ns = a.bundle.layout.state_len();
    // Latent hybrid EnVar: latent B + latent ensemble B.
    let lb = LatentB::at_background(&a.bundle, &mut a.ae, &xb).unwrap();
    let loc = latent_localisation(&a.bundle, 8000.0).unwrap();
    let eb = LatentEnsembleB::from_states(&a.bundle, &mut a.ae, &mem, &xb, 1.0, loc).unwrap();
    let mut h1 = Hybrid::new(lb, eb, 0.5f64.sqrt(), 0.5f64.sqrt(), ns);
    let t1 = h1.sqrt_test(&mut a.ae, 4).unwrap();
    // Model-space hybrid EnVar: static B + model-space ensemble B on the same members.
    let sb = StaticB::for_bundle(&a.bundle, 1.0).unwrap();
    let mb = ModelEnsembleB::for_layout(&a.bundle.layout, &mem, 1.0, 2500.0).unwrap();
    let mut h2 = Hybrid::new(sb, mb, 0.5f64.sqrt(), 0.5f64.sqrt(), ns);
    let t2 = h2.sqrt_test(&mut a.ae, 4).unwrap();
    eprintln!(
        "latent + latent-ensemble hybrid ({} controls): adjoint rel {:.2e}; static + model-ensemble hybrid ({} controls): {:.2e}",
        h1.control_size(),
        t1.rel,
        h2.control_size(),
        t2.rel
    );
    assert!(t1.rel < 1e-5 && t2.rel < 1e-12);
    assert!(t1.lhs.abs() > 0.0 && t2.lhs.abs() > 0.0, "non-trivial products: {} {}", t1.lhs, t2.lhs);
}
