//! The one authorization table: every gRPC method path of every agent and the roles allowed to call it.
//! Deny by default: a method that is not here is refused for everyone. Knows method names, not what they do.

use crate::identity::Role::{self, Admin, DnsAgent, HostAgent, ServicesAgent, Viewer};

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    pub roles: &'static [Role],
}

const EVERYONE: &[Role] = &[Admin, Viewer, HostAgent, DnsAgent, ServicesAgent];
const READERS: &[Role] = &[Admin, Viewer];
const ADMIN: &[Role] = &[Admin];

macro_rules! rules {
    ($($svc:literal { $($m:literal => $roles:expr),* $(,)? })*) => {
        &[$($(Rule { method: concat!("/", $svc, "/", $m), roles: $roles },)*)*]
    };
}

/// The table. Every agent consults it through `authz::AuthzLayer` before any handler runs.
pub static TABLE: &[Rule] = rules! {
    "strata.v1.Agent" { "Status" => EVERYONE }
    "grpc.health.v1.Health" { "Check" => EVERYONE, "Watch" => EVERYONE }
    "strata.v1.Dns" {
        "ListRecords" => &[Admin, Viewer, ServicesAgent],
        "UpsertRecord" => &[Admin, ServicesAgent],
        "DeleteRecord" => &[Admin, ServicesAgent],
        "Reload" => ADMIN,
        "RefreshBlocklist" => ADMIN,
        "GetBlocklist" => READERS,
        "QueryLog" => READERS,
        "Stats" => READERS,
        "ListZones" => READERS,
    }
    "strata.v1.Services" {
        "ListServices" => READERS,
        "Up" => ADMIN, "Down" => ADMIN, "Restart" => ADMIN, "Pause" => ADMIN, "Unpause" => ADMIN,
        "Logs" => READERS,
        "Sync" => ADMIN,
        "Audit" => READERS,
        "Backup" => ADMIN,
        "ListArchives" => READERS,
        "ListFiles" => READERS,
        "History" => READERS,
        "Restore" => ADMIN,
        "Check" => ADMIN,
        "Drill" => ADMIN,
        "PrepareHostBackup" => &[Admin, HostAgent],
        "ReleaseHostBackup" => &[Admin, HostAgent],
        // Re-attaching to a job only reads its progress; cancelling one changes what it does.
        "Watch" => READERS,
        "Cancel" => ADMIN,
        "Reload" => ADMIN,
        "Pull" => ADMIN,
        "Acknowledge" => ADMIN,
    }
    "strata.v1.Host" {
        "ListVms" => READERS,
        "Start" => ADMIN, "Stop" => ADMIN, "Suspend" => ADMIN, "Resume" => ADMIN,
        "Backup" => ADMIN,
        "ListBackups" => READERS,
        "ListFiles" => READERS,
        "History" => READERS,
        "Restore" => ADMIN,
        "Drill" => ADMIN,
        "Watch" => READERS,
        "Cancel" => ADMIN,
        "Reload" => ADMIN,
    }
};

/// The roles allowed to call `method` (a path like `/strata.v1.Dns/UpsertRecord`); `None` when not in the table.
pub fn allowed_roles(method: &str) -> Option<&'static [Role]> {
    TABLE.iter().find(|r| r.method == method).map(|r| r.roles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_no_duplicates_and_denies_unknown() {
        let mut seen = std::collections::HashSet::new();
        for r in TABLE {
            assert!(seen.insert(r.method), "duplicate rule for {}", r.method);
            assert!(!r.roles.is_empty(), "{} allows nobody: remove it instead", r.method);
        }
        assert!(allowed_roles("/strata.v1.Dns/DropEverything").is_none());
        assert_eq!(allowed_roles("/strata.v1.Dns/UpsertRecord"), Some(&[Admin, ServicesAgent][..]));
    }
}
