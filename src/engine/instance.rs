//! An instance's id: the name of the process that ran a sync, recorded with each run in
//! the run history ([`EngineConfig::instance`](super::EngineConfig::instance)), and the
//! holder of leases among several instances on one PostgreSQL store (`cluster`, with the
//! `postgres` and `webhook` features). Available with every store.

/// Whether `id` can name an instance: 1 to 200 characters, none of them a control
/// character.
pub fn is_valid_instance_id(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= 200 && !id.chars().any(char::is_control)
}

/// The host name and the process id (`host-1234`), unique on one machine and across
/// machines with distinct host names.
pub fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_string());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_checked_and_the_default_one_is_valid() {
        assert!(is_valid_instance_id("web-1"));
        assert!(is_valid_instance_id(&"é".repeat(200)));
        assert!(!is_valid_instance_id(""));
        assert!(!is_valid_instance_id(&"a".repeat(201)));
        assert!(!is_valid_instance_id("a\nb"));
        let id = default_instance_id();
        assert!(is_valid_instance_id(&id), "{id:?}");
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id:?}");
    }
}
