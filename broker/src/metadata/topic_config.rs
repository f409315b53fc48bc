//! A topic's configuration as `key=value` settings with Kafka's names (pure): what `sluice topic
//! create --config` sends and `sluice topic describe` shows.
//!
//! | key | value | field |
//! | --- | --- | --- |
//! | `segment.bytes` | bytes | `segment_bytes` |
//! | `segment.ms` | ms, -1 for never | `segment_age_ms` |
//! | `retention.ms` | ms, -1 for forever | `retention_ms` |
//! | `retention.bytes` | bytes, -1 for no limit | `retention_bytes` |
//! | `max.message.bytes` | bytes | `message_bytes_max` |
//! | `flush.policy` | `always`, `interval`, `never` | `flush` |
//! | `flush.ms`, `flush.bytes` | the `interval` policy's window | `flush` |
//! | `min.insync.replicas` | count, 0 for the default | `min_insync_replicas` |
//! | `replica.lag.time.max.ms` | ms | `replica_lag_time_max_ms` |
//! | `unclean.leader.election.enable` | `true`, `false` | `unclean_leader_election` |
//! | `cleanup.policy` | `delete`, `compact`, `compact,delete` | `cleanup_policy` |

use super::types::{FlushSetting, TopicConfig};

/// Every key, in the order [`describe`] lists them.
pub const KEYS: [&str; 12] = [
    "cleanup.policy",
    "flush.bytes",
    "flush.ms",
    "flush.policy",
    "max.message.bytes",
    "min.insync.replicas",
    "replica.lag.time.max.ms",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
    "unclean.leader.election.enable",
];

/// The settings a running topic can change (`sluice topic alter-config`): those its logs and
/// leaders read anew whenever the metadata changes. The others shape segments and write
/// buffers as a log opens.
pub const ALTERABLE: [&str; 5] = [
    "min.insync.replicas",
    "replica.lag.time.max.ms",
    "retention.bytes",
    "retention.ms",
    "unclean.leader.election.enable",
];

/// `base` with `overrides` applied in order; an unknown key or a bad value is an error naming
/// it. (Range checks are `validate_topic_config`'s, done by the controller.)
pub fn with_overrides(
    base: &TopicConfig,
    overrides: &[(String, String)],
) -> Result<TopicConfig, String> {
    let mut config = base.clone();
    // The interval window survives a switch of policy and back.
    let (mut interval_ms, mut bytes) = match base.flush {
        FlushSetting::Interval { interval_ms, bytes } => (interval_ms, bytes),
        _ => (5, 4 << 20),
    };
    let mut policy = match base.flush {
        FlushSetting::Always => "always",
        FlushSetting::Interval { .. } => "interval",
        FlushSetting::Never => "never",
    };
    for (key, value) in overrides {
        let value = value.trim();
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{key}={value}: not a non-negative integer"))
        };
        // -1 (or any negative) means "none".
        let optional = || -> Result<Option<u64>, String> {
            match value.parse::<i64>() {
                Ok(n) if n < 0 => Ok(None),
                Ok(n) => Ok(Some(n as u64)),
                Err(_) => Err(format!("{key}={value}: not an integer (-1 for none)")),
            }
        };
        match key.trim() {
            "segment.bytes" => config.segment_bytes = number()?,
            "segment.ms" => config.segment_age_ms = optional()?,
            "retention.ms" => config.retention_ms = optional()?,
            "retention.bytes" => config.retention_bytes = optional()?,
            "max.message.bytes" => config.message_bytes_max = number()?,
            "min.insync.replicas" => {
                config.min_insync_replicas =
                    u32::try_from(number()?).map_err(|_| format!("{key}={value}: too large"))?
            }
            "replica.lag.time.max.ms" => config.replica_lag_time_max_ms = number()?,
            "cleanup.policy" => {
                config.cleanup_policy =
                    crate::storage::CleanupPolicy::from_name(value).ok_or_else(|| {
                        format!("{key}={value}: not delete, compact or compact,delete")
                    })?
            }
            "unclean.leader.election.enable" => {
                config.unclean_leader_election = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("{key}={value}: not true or false")),
                }
            }
            "flush.policy" => {
                policy = match value {
                    "always" => "always",
                    "interval" => "interval",
                    "never" => "never",
                    _ => return Err(format!("{key}={value}: not always, interval or never")),
                }
            }
            "flush.ms" => {
                interval_ms = number()?;
                if interval_ms == 0 {
                    return Err(format!("{key}={value}: must be at least 1"));
                }
            }
            "flush.bytes" => {
                bytes = number()?;
                if bytes == 0 {
                    return Err(format!("{key}={value}: must be at least 1"));
                }
            }
            other => {
                return Err(format!(
                    "unknown config key {other:?} (known: {})",
                    KEYS.join(", ")
                ))
            }
        }
    }
    config.flush = match policy {
        "always" => FlushSetting::Always,
        "never" => FlushSetting::Never,
        _ => FlushSetting::Interval { interval_ms, bytes },
    };
    Ok(config)
}

/// Every setting of `config`, by key (sorted); the inverse of [`with_overrides`].
pub fn describe(config: &TopicConfig) -> Vec<(String, String)> {
    let optional = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    let (policy, interval_ms, bytes) = match config.flush {
        FlushSetting::Always => ("always", None, None),
        FlushSetting::Interval { interval_ms, bytes } => {
            ("interval", Some(interval_ms), Some(bytes))
        }
        FlushSetting::Never => ("never", None, None),
    };
    let mut out = vec![
        ("cleanup.policy", config.cleanup_policy.name().to_string()),
        ("flush.policy", policy.to_string()),
        ("max.message.bytes", config.message_bytes_max.to_string()),
        (
            "min.insync.replicas",
            config.min_insync_replicas.to_string(),
        ),
        (
            "replica.lag.time.max.ms",
            config.replica_lag_time_max_ms.to_string(),
        ),
        ("retention.bytes", optional(config.retention_bytes)),
        ("retention.ms", optional(config.retention_ms)),
        ("segment.bytes", config.segment_bytes.to_string()),
        ("segment.ms", optional(config.segment_age_ms)),
        (
            "unclean.leader.election.enable",
            config.unclean_leader_election.to_string(),
        ),
    ];
    if let (Some(ms), Some(bytes)) = (interval_ms, bytes) {
        out.push(("flush.ms", ms.to_string()));
        out.push(("flush.bytes", bytes.to_string()));
    }
    out.sort();
    out.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn overrides_change_only_what_they_name_and_describe_inverts_them() {
        let base = TopicConfig::default();
        let changed = with_overrides(
            &base,
            &set(&[
                ("retention.ms", "-1"),
                ("segment.bytes", "1048576"),
                ("flush.policy", "always"),
                ("min.insync.replicas", "2"),
                ("unclean.leader.election.enable", "true"),
                ("cleanup.policy", "delete,compact"),
            ]),
        )
        .unwrap();
        assert_eq!(changed.retention_ms, None);
        assert_eq!(changed.segment_bytes, 1 << 20);
        assert_eq!(changed.flush, FlushSetting::Always);
        assert_eq!(
            changed.cleanup_policy,
            crate::storage::CleanupPolicy::CompactDelete
        );
        assert_eq!(changed.message_bytes_max, base.message_bytes_max);
        // describe → with_overrides on anything gives the same config back.
        let again = with_overrides(&TopicConfig::default(), &describe(&changed)).unwrap();
        assert_eq!(again, changed);
        let again = with_overrides(&base, &describe(&base)).unwrap();
        assert_eq!(again, base);
    }

    #[test]
    fn bad_keys_and_values_name_themselves() {
        let base = TopicConfig::default();
        let error = with_overrides(&base, &set(&[("retention.hours", "1")])).unwrap_err();
        assert!(error.contains("retention.hours"), "{error}");
        let error = with_overrides(&base, &set(&[("segment.bytes", "big")])).unwrap_err();
        assert!(error.contains("segment.bytes=big"), "{error}");
        let error = with_overrides(&base, &set(&[("flush.policy", "sometimes")])).unwrap_err();
        assert!(error.contains("flush.policy"), "{error}");
        let error = with_overrides(&base, &set(&[("flush.ms", "0")])).unwrap_err();
        assert!(error.contains("flush.ms"), "{error}");
    }
}
