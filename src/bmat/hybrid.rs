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
    buf: Vec<f64>,
    variance: Option<Vec<f64>>,
}

impl<A, B> Hybrid<A, B> {
    /// Combines two parts with square-root weights `wa`, `wb`; `state_len` is their common state length.
    pub fn new(a: A, b: B, wa: f64, wb: f64, state_len: usize) -> Self {
        Hybrid { a, b, wa, wb, buf: vec![0.0; state_len], variance: None }
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
        for (x, b) in x.iter_mut().zip(&self.buf) {
            *x = self.wa * *x + self.wb * b;
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
        fa(&mut self.a, ctx, x, w)?;
        fb(&mut self.b, ctx, x, v)?;
        w.iter_mut().for_each(|e| *e *= self.wa);
        v.iter_mut().for_each(|e| *e *= self.wb);
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
            v.iter_mut().zip(self.b.variance(ae)?).for_each(|(v, b)| *v += b2 * b);
            self.variance = Some(v);
        }
        Ok(self.variance.as_deref().expect("computed above"))
    }

    fn variance_method(&self) -> String {
        format!(
            "hybrid: {:.4} x ({}) + {:.4} x ({})",
            self.wa * self.wa,
            self.a.variance_method(),
            self.wb * self.wb,
            self.b.variance_method()
        )
    }
}
