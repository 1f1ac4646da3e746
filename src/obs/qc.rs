//! Quality control: the per-observation flag and the background check.
//!
//! The geometric checks (invalid values, outside the grid or the vertical range, unknown variable) are made where H is
//! built ([`crate::obs::operator::locate`]); the background check rejects an observation whose innovation is
//! implausible under the B in force:
//!
//! ```text
//! |y - H(x_b)| > k sqrt(sigma_o^2 + sigma_b^2),   sigma_b = H sqrt(diag B)
//! ```
//!
//! with sigma_b the background-error standard deviation of the analysis' own B interpolated to the observation
//! (the latent B for L3DVar, the static B for 3D-Var, alpha diag B_l + beta diag P B_s P^T for the hybrid).

use crate::bundle::grid::Layout;
use crate::obs::operator::ObsOperator;
use crate::obs::Observation;

/// Quality-control flag of one observation (readable by the host through `lda_obs_qc`).
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum QcFlag {
    /// Used in the analysis.
    Used = 0,
    /// Invalid: non-finite or malformed value/position/level, error sd <= 0, or error sd below the floor
    /// [`MIN_SIGMA_REL`] x the variable's normalisation sd.
    Invalid = 1,
    /// Outside the horizontal grid.
    OutsideDomain = 2,
    /// Outside the vertical range (or missing level for an upper-air variable).
    OutsideVertical = 3,
    /// Variable not in the bundle.
    UnknownVariable = 4,
    /// Failed the background check |y - H(x_b)| > k sqrt(sigma_o^2 + sigma_b^2).
    BackgroundCheck = 5,
    /// Observation time outside the assimilation window of method `l4dvar` (other methods ignore times).
    OutsideWindow = 6,
}

impl QcFlag {
    /// All flags in code order.
    pub const ALL: [QcFlag; 7] = [
        QcFlag::Used,
        QcFlag::Invalid,
        QcFlag::OutsideDomain,
        QcFlag::OutsideVertical,
        QcFlag::UnknownVariable,
        QcFlag::BackgroundCheck,
        QcFlag::OutsideWindow,
    ];
    /// Short name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            QcFlag::Used => "used",
            QcFlag::Invalid => "invalid",
            QcFlag::OutsideDomain => "outside_domain",
            QcFlag::OutsideVertical => "outside_vertical",
            QcFlag::UnknownVariable => "unknown_variable",
            QcFlag::BackgroundCheck => "background_check",
            QcFlag::OutsideWindow => "outside_window",
        }
    }
}

/// Smallest usable observation error sd, relative to the variable's normalisation sd (the smallest over its
/// levels). Below it the weight 1/sigma^2 is so large that the float32 decoder's tangent-linear and adjoint runs
/// overflow (L3DVar failed at 1e-10 on the fixtures): such an observation is flagged `Invalid` instead of failing
/// the whole analysis. Real observation errors are many orders of magnitude above it.
pub const MIN_SIGMA_REL: f64 = 1e-6;

/// Per bundle variable, the error-sd floor [`MIN_SIGMA_REL`] times the smallest normalisation sd `std` (one per
/// channel) over the variable's channels.
pub fn sigma_floors(layout: &Layout, std: &[f64]) -> Vec<f64> {
    layout
        .variables
        .iter()
        .map(|v| {
            let c = v.first_channel..v.first_channel + v.nchan();
            MIN_SIGMA_REL * std[c].iter().copied().fold(f64::INFINITY, f64::min)
        })
        .collect()
}

/// Background check: flags [`QcFlag::BackgroundCheck`] on every row of `h` with
/// |y - H x_b| > k sqrt(sigma_o^2 + sigma_b^2), sigma_b = H `sd` (the background-error standard deviation, state
/// layout), and removes those rows from `h` and `hxb`. Returns the number rejected. `k` <= 0 disables the check.
pub fn background_check(
    h: &mut ObsOperator,
    hxb: &mut Vec<f64>,
    obs: &[Observation],
    sd: &[f64],
    k: f64,
    qc: &mut [QcFlag],
) -> usize {
    if !(k > 0.0) {
        return 0;
    }
    let mut sigb = vec![0.0; h.nrows()];
    h.apply(sd, &mut sigb);
    let keep: Vec<bool> = (0..h.nrows())
        .map(|r| {
            let o = &obs[h.rows[r]];
            (o.value - hxb[r]).abs() <= k * (o.sigma * o.sigma + sigb[r] * sigb[r]).sqrt()
        })
        .collect();
    for (r, ok) in keep.iter().enumerate() {
        if !ok {
            qc[h.rows[r]] = QcFlag::BackgroundCheck;
        }
    }
    h.retain(|r| keep[r]);
    let mut r = 0;
    hxb.retain(|_| {
        r += 1;
        keep[r - 1]
    });
    keep.iter().filter(|k| !**k).count()
}
