//! Background-error covariance operators B = U U^T, all behind one trait with JEDI SABER's verbs
//! ([`BOperator`](crate::bmat::BOperator)): the latent B of the autoencoder ([`latent`](crate::bmat::latent)), the
//! static, univariate model-space B of the 3D-Var baseline with its hydrostatic balance
//! ([`static_b`](crate::bmat::static_b), [`hydrostatic`](crate::bmat::hydrostatic)), and their weighted sum over a
//! concatenated control vector ([`hybrid`](crate::bmat::hybrid)).

pub mod ensemble;
pub mod hybrid;
pub mod hydrostatic;
pub mod latent;
pub mod localisation;
pub mod static_b;

use crate::error::{Error, Result};
use crate::model::autoencoder::Autoencoder;
use crate::numeric::{adjoint_test, DotTest, Rng};

/// Checks a vector length, naming the vector.
pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::arg(format!("{what} has length {got}, expected {want}")));
    }
    Ok(())
}

/// diag(U U^T) of a square root U: R^n -> R^m given by `sqrt` (v, x = U v): exact from the n columns U e_k when
/// n <= `samples`, else the randomised estimate 1/N sum_i (U xi_i)^2 over N = `samples` draws xi_i ~ N(0, I) from
/// seeds 1..=N (relative standard error of each variance sqrt(2/N)). Returns the variance and whether it is exact.
pub fn diag_of_sqrt(
    n: usize,
    m: usize,
    samples: usize,
    mut sqrt: impl FnMut(&[f64], &mut [f64]) -> Result<()>,
) -> Result<(Vec<f64>, bool)> {
    let mut acc = vec![0.0; m];
    let mut x = vec![0.0; m];
    let exact = n <= samples;
    let draws = if exact { n } else { samples };
    let mut e = vec![0.0; n];
    for i in 0..draws {
        if exact {
            e.iter_mut().for_each(|v| *v = 0.0);
            e[i] = 1.0;
        } else {
            e = Rng::new(i as u64 + 1).normals(n);
        }
        sqrt(&e, &mut x)?;
        acc.iter_mut().zip(&x).for_each(|(a, x)| *a += x * x);
    }
    if !exact {
        acc.iter_mut().for_each(|a| *a /= draws as f64);
    }
    Ok((acc, exact))
}

/// A background-error covariance B = U U^T given by its square root U: control vector v (length
/// [`control_size`](BOperator::control_size)) -> model-space increment x = U v (physical units, the state layout of
/// [`crate::bundle::grid`]). J_b = 1/2 |v|^2.
///
/// The verbs are SABER's: `multiplySqrt` ([`sqrt`](BOperator::sqrt)), `multiplySqrtAD`
/// ([`sqrt_ad`](BOperator::sqrt_ad)), `variance` (diag B), `randomize` (a draw U xi) and a built-in adjoint test.
/// The autoencoder's ONNX sessions are passed to each call (`ae`): the latent B runs the decoder's TL/AD graphs
/// with them, the static B ignores them. An operator is linearised at construction (or by its own methods); the
/// variance is computed once per linearisation and cached.
pub trait BOperator {
    /// Control vector length n.
    fn control_size(&self) -> usize;
    /// Model state length.
    fn state_len(&self) -> usize;
    /// x = U v.
    fn sqrt(&mut self, ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()>;
    /// v = U^T x (the exact adjoint of `sqrt`).
    fn sqrt_ad(&mut self, ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()>;
    /// diag(U U^T), one value per state element (cached per linearisation).
    fn variance(&mut self, ae: &mut Autoencoder) -> Result<&[f64]>;
    /// How [`variance`](BOperator::variance) is obtained (exact, or randomised with its sample count and error).
    fn variance_method(&self) -> String;

    /// x = U xi with xi ~ N(0, I) drawn from `seed`: a sample of the background error (deterministic per seed).
    fn randomize(&mut self, ae: &mut Autoencoder, seed: u64, x: &mut [f64]) -> Result<()> {
        let xi = Rng::new(seed).normals(self.control_size());
        self.sqrt(ae, &xi, x)
    }

    /// Adjoint test |<U v, x> - <v, U^T x>| / max(|<U v, x>|, |<v, U^T x>|) with random v and x = r + c U v (a
    /// component along U v, so the products cannot cancel by chance).
    fn sqrt_test(&mut self, ae: &mut Autoencoder, seed: u64) -> Result<DotTest> {
        let (n, m) = (self.control_size(), self.state_len());
        let sqrt = |(b, ae): &mut (&mut Self, &mut Autoencoder), v: &[f64], x: &mut [f64]| b.sqrt(ae, v, x);
        let sqrt_ad = |(b, ae): &mut (&mut Self, &mut Autoencoder), x: &[f64], v: &mut [f64]| b.sqrt_ad(ae, x, v);
        adjoint_test(&mut (self, ae), n, m, seed, sqrt, sqrt_ad)
    }
}

/// A borrowed operator is an operator (so a hybrid can borrow cached parts).
impl<T: BOperator + ?Sized> BOperator for &mut T {
    fn control_size(&self) -> usize {
        (**self).control_size()
    }
    fn state_len(&self) -> usize {
        (**self).state_len()
    }
    fn sqrt(&mut self, ae: &mut Autoencoder, v: &[f64], x: &mut [f64]) -> Result<()> {
        (**self).sqrt(ae, v, x)
    }
    fn sqrt_ad(&mut self, ae: &mut Autoencoder, x: &[f64], v: &mut [f64]) -> Result<()> {
        (**self).sqrt_ad(ae, x, v)
    }
    fn variance(&mut self, ae: &mut Autoencoder) -> Result<&[f64]> {
        (**self).variance(ae)
    }
    fn variance_method(&self) -> String {
        (**self).variance_method()
    }
}
