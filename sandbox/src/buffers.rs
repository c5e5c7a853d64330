//! Each tenant's budget of response bytes held for clients that have not read them yet.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use crate::lock;

/// Response bytes not yet sent, by tenant, against one budget per tenant.
pub(crate) struct TenantBuffers {
    pub(crate) budget: u64,
    pub(crate) held: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl TenantBuffers {
    pub(crate) fn new(budget: u64) -> TenantBuffers {
        TenantBuffers {
            budget,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// Charges `body` to its tenant's budget of responses held for slow clients: the body comes
    /// back as one that gives its bytes back when the server has sent (or dropped) it; past the
    /// budget, an error that says so.
    pub(crate) fn hold(&self, tenant: &str, body: Vec<u8>) -> Result<bytes::Bytes, u64> {
        let counter = lock(&self.held).entry(tenant.to_owned()).or_default().clone();
        let len = body.len() as u64;
        let budget = self.budget;
        let held = counter.fetch_add(len, Ordering::AcqRel) + len;
        if held > budget && held > len {
            counter.fetch_sub(len, Ordering::AcqRel);
            return Err(budget);
        }
        Ok(bytes::Bytes::from_owner(Held { body, counter }))
    }
}

/// A response body charged to its tenant; the charge ends when the last reference to it does.
pub(crate) struct Held {
    pub(crate) body: Vec<u8>,
    pub(crate) counter: Arc<AtomicU64>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.body
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.body.len() as u64, Ordering::AcqRel);
    }
}
