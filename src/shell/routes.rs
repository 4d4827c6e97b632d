//! The edge's [`Routes`]: the next-hop pool and the federation partners, as every
//! connection reaches them ([`Routing`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conn::Routing;
use super::partners::Partners;
use super::pool::Pool;
use super::shared::Shared;
use crate::core::sip::federation::PartnerId;
use crate::core::sip::pool_link::PoolRequest;
use crate::core::sip::session::{PartnerRequest, PartnerTarget};
use crate::core::sip::Why;

/// Where messages go beyond the connection they arrived on.
pub struct Routes {
    /// The next-hop (Director) pool.
    pub pool: Pool,
    /// Federation partners' connections and rates, when the topology has partners.
    pub partners: Option<Arc<Partners>>,
}

impl Routing for Routes {
    fn to_pool(&self, request: PoolRequest, exclude: Option<usize>) -> Result<usize, PoolRequest> {
        self.pool.send(request, exclude)
    }

    fn pool_outstanding(&self) -> usize {
        self.pool.outstanding()
    }

    fn pool_any_up(&self) -> bool {
        self.pool.any_up()
    }

    fn pool_retry_after_secs(&self) -> u32 {
        self.pool.retry_after_secs
    }

    fn partner_admit(&self, p: PartnerId, now: Instant) -> Option<Result<(), Duration>> {
        let partners = self.partners.as_ref()?;
        partners.federation().get(p)?;
        Some(partners.admit(p, now))
    }

    fn discovered_admit(&self, domain: &[u8], now: Instant) -> Result<(), Duration> {
        match &self.partners {
            Some(partners) => partners.admit_discovered(domain, now),
            None => Ok(()),
        }
    }

    fn partner_dialog_limit(&self, target: &PartnerTarget) -> Option<(u64, usize)> {
        self.partners.as_ref()?.dialog_limit(target)
    }

    fn to_partner(
        &self,
        shared: &Arc<Shared>,
        routes: &Arc<dyn Routing>,
        request: PartnerRequest,
    ) -> Result<(), Why> {
        match &self.partners {
            Some(partners) => partners.send(shared, routes, request),
            None => Err(Why::NoRoute),
        }
    }
}
