//! The adapter's config for a running [`Simulator`](crate::sim::Simulator).

use std::time::Duration;

use crate::{VbsConfig, sim::Simulator};

impl Simulator {
    /// The adapter's config for this simulator: its endpoint, project and
    /// Keystone password user.
    pub fn adapter_config(&self, timeout: Duration) -> VbsConfig {
        let c = self.config();
        VbsConfig {
            endpoint: self.url(),
            project_id: c.project_id,
            auth: custos_openstack::KeystoneAuth::Keystone {
                auth_url: self.auth_url(),
                credentials: custos_openstack::Credentials::Password {
                    user_name: c.user_name,
                    user_domain_name: c.user_domain,
                    password: c.password.into(),
                },
            },
            timeout,
        }
    }
}
