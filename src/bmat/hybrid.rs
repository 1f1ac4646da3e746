//! Hybrid B: a weighted sum of two square roots over the concatenated control vector [w, v] (SABER's hybrid block
//! chain):
//!
//! ```text
//! U [w, v] = wa U_a w + wb U_b v,      U^T x = [wa U_a^T x, wb U_b^T x],
//! B = wa^2 U_a U_a^T + wb^2 U_b U_b^T,  diag B = wa^2 diag B_a + wb^2 diag B_b,   J_b = 1/2 (|w|^2 + |v|^2)
//! ```
//!
//! latentda's hybrid latent-static B is `Hybrid<LatentB, StaticB>` with wa = sqrt(alpha), wb = sqrt(beta) and the
//! static part restricted to the `[hybrid]` variables ([`crate::bmat::static_b::StaticB::set_selection`], the P of
//! `sqrt(beta) P U_s v`). The same struct serves the analysis' control transform (`crate::var::control`), where
//! the parts are the nonlinear latent transform and the static B.
//!
//! Latitude-band weights (issue 20): the weights may also vary over the grid,
//! `U [w, v] = Wa U_a w + Wb U_b v` with diagonal grid-point weights Wa = diag(wa * fa_i), Wb = diag(wb * fb_i)
//! ([`Hybrid::with_fields`]); then `U^T x = [U_a^T (Wa x), U_b^T (Wb x)]` and diag B = Wa^2 diag B_a + Wb^2 diag B_b
//! exactly. [`band_ramp`] and [`band_weight_fields`] build sqrt(alpha(phi)), sqrt(beta(phi)) with
//! alpha(phi) = alpha_tropics + (alpha - alpha_tropics) t(phi), t the cosine ramp from 0 at |phi| <= lat0 to 1 at
//! |phi| >= lat1. Per-variable weights ([`variable_band_weight_fields`]) give each channel the six weights of
//! the variable that owns it (northern extratropics, tropics, southern extratropics; the ramp runs from the tropical
//! weights to the northern ones for phi > 0 and to the southern ones for phi < 0): B = Wa B_a Wa + Wb B_b Wb stays symmetric and non-negative, and a cross-covariance
//! between variables v and w in part a is scaled by sqrt(alpha_v alpha_w).

use crate::bmat::{check_len, BOperator};
use crate::error::Result;
use crate::model::autoencoder::Autoencoder;

/// The weighted sum of two parts over a concatenated control vector; see the module documentation.
pub struct Hybrid<A, B> {
    /// First part (control w, the first `a.control_size()` elements).
    pub a: A,
    /// Second part (control v, the rest).
    pub b: B,
    /// Weights of the square roots (sqrt(alpha), sqrt(beta)).
    pub wa: f64,
    /// See `wa`.
    pub wb: f64,
    /// Grid-point weight fields (state length) multiplying `wa` and `wb`; `None`: the scalar weights alone.
    pub fields: Option<(Vec<f64>, Vec<f64>)>,
    buf: Vec<f64>,
    variance: Option<Vec<f64>>,
}

/// The smooth latitude ramp t(phi): 0 for |phi| <= lat0, 1 for |phi| >= lat1, (1 - cos(pi s)) / 2 with
/// s = (|phi| - lat0) / (lat1 - lat0) in between (continuous with a continuous first derivative).
pub fn band_ramp(lat: f64, lat0: f64, lat1: f64) -> f64 {
    let a = lat.abs();
    if a <= lat0 {
        0.0
    } else if a >= lat1 {
        1.0
    } else {
        0.5 * (1.0 - (std::f64::consts::PI * (a - lat0) / (lat1 - lat0)).cos())
    }
}

/// The band-weight fields over a state of `nchan` channels on the grid with latitudes `lat` (north to south) and
/// `nlon` longitudes (channel-major layout of [`crate::bundle::grid`]): per element sqrt(alpha(phi)) and
/// sqrt(beta(phi)), with alpha(phi) = alpha_tropics + (alpha - alpha_tropics) t(phi) ([`band_ramp`]), likewise beta.
#[allow(clippy::too_many_arguments)]
pub fn band_weight_fields(
    lat: &[f64],
    nlon: usize,
    nchan: usize,
    alpha: f64,
    alpha_tropics: f64,
    beta: f64,
    beta_tropics: f64,
    band_lat: [f64; 2],
) -> (Vec<f64>, Vec<f64>) {
    let w = [alpha, beta, alpha_tropics, beta_tropics, alpha, beta];
    variable_band_weight_fields(lat, nlon, &vec![w; nchan], band_lat)
}

/// [`band_weight_fields`] with weights per channel: `per_channel[c]` = [alpha, beta, alpha_tropics, beta_tropics,
/// alpha_sh, beta_sh] of channel c (the weights of the variable that owns it), so that alpha(c, phi) =
/// alpha_tropics_c + (alpha_x_c - alpha_tropics_c) t(phi) with alpha_x the northern weight alpha for phi >= 0 and
/// the southern one alpha_sh for phi < 0 (continuous at the equator, where t = 0), likewise beta.
pub fn variable_band_weight_fields(
    lat: &[f64],
    nlon: usize,
    per_channel: &[[f64; 6]],
    band_lat: [f64; 2],
) -> (Vec<f64>, Vec<f64>) {
    let np = lat.len() * nlon;
    let (mut fa, mut fb) = (Vec::with_capacity(np * per_channel.len()), Vec::with_capacity(np * per_channel.len()));
    for &[alpha_nh, beta_nh, alpha_tropics, beta_tropics, alpha_sh, beta_sh] in per_channel {
        for &phi in lat {
            let t = band_ramp(phi, band_lat[0], band_lat[1]);
            let (alpha, beta) = if phi < 0.0 { (alpha_sh, beta_sh) } else { (alpha_nh, beta_nh) };
            let (a, b) = (alpha_tropics + (alpha - alpha_tropics) * t, beta_tropics + (beta - beta_tropics) * t);
            let (a, b) = (a.max(0.0).sqrt(), b.max(0.0).sqrt());
            for _ in 0..nlon {
                fa.push(a);
                fb.push(b);
            }
        }
    }
    (fa, fb)
}

impl<A, B> Hybrid<A, B> {
    /// Combines two parts with square-root weights `wa`, `wb`; `state_len` is their common state length.
    pub fn new(a: A, b: B, wa: f64, wb: f64, state_len: usize) -> Self {
        Hybrid { a, b, wa, wb, fields: None, buf: vec![0.0; state_len], variance: None }
    }

    /// Adds grid-point weight fields `fa`, `fb` (state length; elementwise factors on `wa`, `wb`).
    pub fn with_fields(mut self, fa: Vec<f64>, fb: Vec<f64>) -> Self {
        assert_eq!(fa.len(), self.buf.len(), "weight field a has the state length");
        assert_eq!(fb.len(), self.buf.len(), "weight field b has the state length");
        self.fields = Some((fa, fb));
        self.variance = None;
        self
    }

    /// x = wa A(w) + wb B(v) for a control vector [w, v] split after `na` elements: `fa`, `fb` apply the parts
    /// (their square roots, or nonlinear transforms) with a shared context `ctx`.
    pub fn forward<C>(
        &mut self,
        ctx: &mut C,
        na: usize,
        c: &[f64],
        x: &mut [f64],
        fa: impl FnOnce(&mut A, &mut C, &[f64], &mut [f64]) -> Result<()>,
        fb: impl FnOnce(&mut B, &mut C, &[f64], &mut [f64]) -> Result<()>,
    ) -> Result<()> {
        let (w, v) = c.split_at(na);
        fa(&mut self.a, ctx, w, x)?;
        fb(&mut self.b, ctx, v, &mut self.buf)?;
        match &self.fields {
            None => {
                for (x, b) in x.iter_mut().zip(&self.buf) {
                    *x = self.wa * *x + self.wb * b;
                }
            }
            Some((fa, fb)) => {
                for (((x, b), ga), gb) in x.iter_mut().zip(&self.buf).zip(fa).zip(fb) {
                    *x = (self.wa * ga) * *x + (self.wb * gb) * b;
                }
            }
        }
        Ok(())
    }

    /// [w, v] = [wa A^T x, wb B^T x] with the parts' adjoints `fa`, `fb`.
    pub fn backward<C>(
        &mut self,
        ctx: &mut C,
        na: usize,
        x: &[f64],
        c: &mut [f64],
        fa: impl FnOnce(&mut A, &mut C, &[f64], &mut [f64]) -> Result<()>,
        fb: impl FnOnce(&mut B, &mut C, &[f64], &mut [f64]) -> Result<()>,
    ) -> Result<()> {
        let (w, v) = c.split_at_mut(na);
        match &self.fields {
            None => {
                fa(&mut self.a, ctx, x, w)?;
                fb(&mut self.b, ctx, x, v)?;
                w.iter_mut().for_each(|e| *e *= self.wa);
                v.iter_mut().for_each(|e| *e *= self.wb);
            }
            Some((ga, gb)) => {
                self.buf.iter_mut().zip(x).zip(ga).for_each(|((y, x), g)| *y = (self.wa * g) * x);
                fa(&mut self.a, ctx, &self.buf, w)?;
                self.buf.iter_mut().zip(x).zip(gb).for_each(|((y, x), g)| *y = (self.wb * g) * x);
                fb(&mut self.b, ctx, &self.buf, v)?;
            }
        }
        Ok(())
    }
}

impl<A: BOperator, B: BOperator> BOperator for Hybrid<A, B> {
    fn control_size(&self) -> usize {
        self.a.control_size() + self.b.control_size()
    }

    fn state_len(&self) -> usize {
        self.a.state_len()
    }

    fn sqrt(&mut self, ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()> {
        check_len("control vector [w, v]", v.len(), self.control_size())?;
        check_len("state increment x", x.len(), self.state_len())?;
        let na = self.a.control_size();
        self.forward(ae, na, v, x, |a, ae, w, x| a.sqrt(ae, w, x), |b, ae, s, x| b.sqrt(ae, s, x))
    }

    fn sqrt_ad(&mut self, ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()> {
        check_len("control vector [w, v]", v.len(), self.control_size())?;
        check_len("state x", x.len(), self.state_len())?;
        let na = self.a.control_size();
        self.backward(ae, na, x, v, |a, ae, x, w| a.sqrt_ad(ae, x, w), |b, ae, x, s| b.sqrt_ad(ae, x, s))
    }

    fn variance(&mut self, ae: &mut Autoencoder) -> Result<&[f64]> {
        if self.variance.is_none() {
            let (a2, b2) = (self.wa * self.wa, self.wb * self.wb);
            let mut v: Vec<f64> = self.a.variance(ae)?.iter().map(|x| a2 * x).collect();
            match &self.fields {
                None => v.iter_mut().zip(self.b.variance(ae)?).for_each(|(v, b)| *v += b2 * b),
                Some((ga, gb)) => {
                    // diag(Wa B_a Wa + Wb B_b Wb) = (wa ga)^2 diag B_a + (wb gb)^2 diag B_b, elementwise
                    let va = self.a.variance(ae)?;
                    let vb = self.b.variance(ae)?;
                    for (i, v) in v.iter_mut().enumerate() {
                        *v = (self.wa * ga[i]).powi(2) * va[i] + (self.wb * gb[i]).powi(2) * vb[i];
                    }
                }
            }
            self.variance = Some(v);
        }
        Ok(self.variance.as_deref().expect("computed above"))
    }

    fn variance_method(&self) -> String {
        if let Some((ga, gb)) = &self.fields {
            let range = |g: &[f64], w: f64| {
                let sq = |x: f64| (w * x).powi(2);
                let (lo, hi) =
                    g.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| (l.min(sq(x)), h.max(sq(x))));
                format!("{lo:.4}..{hi:.4}")
            };
            return format!(
                "hybrid with varying weights (latitude bands, variables): [{}] x ({}) + [{}] x ({})",
                range(ga, self.wa),
                self.a.variance_method(),
                range(gb, self.wb),
                self.b.variance_method()
            );
        }
        format!(
            "hybrid: {:.4} x ({}) + {:.4} x ({})",
            self.wa * self.wa,
            self.a.variance_method(),
            self.wb * self.wb,
            self.b.variance_method()
        )
    }
}
