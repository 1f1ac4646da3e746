//! The ensemble members an analysis holds (`Analyser::set_ensemble`) and the ensemble B parts built from them: data
//! only, below the analysis (which holds one) and [`crate::var::ensemble`] (which builds and applies the parts).

use crate::bmat::ensemble::{LatentEnsembleB, ModelEnsembleB};

/// The members set on an [`Analyser`](crate::Analyser) and the ensemble B parts built from them (kept between analyses: the members'
/// latents are encoded once, the latent part is rebuilt when the background moves, the model-space part when gamma
/// or its localisation changes).
pub struct Ensemble {
    pub(crate) members: Vec<Vec<f64>>,
    pub(crate) latents: Option<Vec<Vec<f32>>>,
    pub(crate) latent: Option<LatentEnsembleB>,
    pub(crate) model: Option<ModelEnsembleB>,
}

impl std::fmt::Debug for Ensemble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ensemble")
            .field("members", &self.members.len())
            .field("encoded", &self.latents.is_some())
            .field("latent_part", &self.latent.is_some())
            .field("model_part", &self.model.is_some())
            .finish()
    }
}

impl Ensemble {
    /// Number of members K.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members (never true for a set ensemble: K >= 2).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `k` (state layout, physical units).
    pub fn member(&self, k: usize) -> &[f64] {
        &self.members[k]
    }
}
