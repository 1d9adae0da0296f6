//! The signer in use: fixed, or rebuilt whenever a credentials cache rotates.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use cos_credentials::{CredentialsCache, CredentialsStatus};
use cos_sign::{CosSigner, Endpoint};

use crate::{Result, ServiceError};

/// Hands out the signer for the credentials held now. Readers never lock and never wait
/// for a load: the cache refreshes in the background, and a reader that sees a new
/// generation builds the signer for it (a key schedule, under a microsecond) and
/// publishes it for everyone.
pub(crate) struct Signers {
    endpoint: Endpoint,
    source: Option<CredentialsCache>,
    current: ArcSwap<Current>,
}

pub(crate) struct Current {
    generation: u64,
    signer: Option<CosSigner>,
}

impl Current {
    /// The signer, or why there is none.
    pub(crate) fn signer(&self, source: Option<&CredentialsCache>) -> Result<&CosSigner> {
        self.signer.as_ref().ok_or_else(|| {
            let why = source
                .and_then(|s| s.status().last_error)
                .unwrap_or_else(|| "not loaded yet".to_owned());
            ServiceError::CredentialsUnavailable(why)
        })
    }
}

impl Signers {
    /// Always `signer`.
    pub(crate) fn fixed(signer: CosSigner) -> Self {
        Signers {
            endpoint: signer.endpoint().clone(),
            source: None,
            current: ArcSwap::from_pointee(Current {
                generation: 0,
                signer: Some(signer),
            }),
        }
    }

    /// Signs for `endpoint` with what `source` holds at each moment.
    pub(crate) fn rotating(endpoint: Endpoint, source: CredentialsCache) -> Self {
        let signers = Signers {
            endpoint,
            current: ArcSwap::from_pointee(Current {
                generation: u64::MAX,
                signer: None,
            }),
            source: Some(source),
        };
        drop(signers.current());
        signers
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub(crate) fn source(&self) -> Option<&CredentialsCache> {
        self.source.as_ref()
    }

    /// The credentials' status, when they come from a provider.
    pub(crate) fn status(&self) -> Option<CredentialsStatus> {
        self.source.as_ref().map(CredentialsCache::status)
    }

    /// The signer for the credentials held now. One atomic read when nothing changed.
    pub(crate) fn current(&self) -> Guard<Arc<Current>> {
        let current = self.current.load();
        let Some(source) = &self.source else {
            return current;
        };
        let generation = source.generation();
        if current.generation == generation {
            return current;
        }
        let fresh = Arc::new(Current {
            generation,
            signer: source
                .current()
                .map(|credentials| CosSigner::new((*credentials).clone(), self.endpoint.clone())),
        });
        // Several readers may race here; each builds the same signer, the last store
        // wins, and all of them are correct.
        self.current.store(fresh);
        self.current.load()
    }
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.load();
        f.debug_struct("Signers")
            .field("signer", &current.signer)
            .field("source", &self.source)
            .finish()
    }
}
