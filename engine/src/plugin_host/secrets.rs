//! Where plugin secrets come from. The host hands a value to a plugin only when the
//! plugin's manifest grants the name; the value never reaches logs, the journal or
//! error messages (the host scrubs it from anything the plugin writes back).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Secret values by plugin and name. `Debug` never prints values.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<(String, String), String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.values.keys().map(|(p, n)| format!("{p}.{n}")))
            .finish()
    }
}

/// The environment variable that holds `plugin`'s secret `name`:
/// `CASEWORK_SECRET__<PLUGIN>__<NAME>`, upper-cased, other characters as `_`.
///
/// ```
/// use casework::plugin_host::secrets::env_var_name;
/// assert_eq!(
///     env_var_name("payments", "stripe_secret_key"),
///     "CASEWORK_SECRET__PAYMENTS__STRIPE_SECRET_KEY"
/// );
/// assert_eq!(env_var_name("identity", "totp_seed/cus-1"), "CASEWORK_SECRET__IDENTITY__TOTP_SEED_CUS_1");
/// ```
pub fn env_var_name(plugin: &str, name: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("CASEWORK_SECRET__{}__{}", clean(plugin), clean(name))
}

impl Secrets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets one value (tests and embedders).
    pub fn insert(&mut self, plugin: &str, name: &str, value: impl Into<String>) {
        self.values
            .insert((plugin.to_string(), name.to_string()), value.into());
    }

    /// Reads a secrets file: one TOML table per plugin, string values.
    ///
    /// ```toml
    /// [payments]
    /// stripe_secret_key = "sk_live_..."
    ///
    /// [identity]
    /// "totp_seed/cus_123" = "JBSWY3DPEHPK3PXP"
    /// ```
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secrets file {}: {e}", path.display()))?;
        let table: BTreeMap<String, BTreeMap<String, String>> = toml::from_str(&text)
            .map_err(|e| {
                // toml's message quotes the offending line, which may hold a secret.
                let at = e
                    .span()
                    .map(|s| {
                        let line = text[..s.start].matches('\n').count() + 1;
                        format!(" at line {line}")
                    })
                    .unwrap_or_default();
                format!(
                    "secrets file {} is not valid{at}: expected one table per plugin holding string values",
                    path.display()
                )
            })?;
        let mut secrets = Secrets::new();
        for (plugin, names) in table {
            for (name, value) in names {
                secrets.insert(&plugin, &name, value);
            }
        }
        Ok(secrets)
    }

    /// The value for `plugin`'s `name`: the environment wins over the file, so an
    /// operator can rotate one secret without editing the file.
    pub fn get(&self, plugin: &str, name: &str) -> Option<String> {
        std::env::var(env_var_name(plugin, name)).ok().or_else(|| {
            self.values
                .get(&(plugin.to_string(), name.to_string()))
                .cloned()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_are_found_and_debug_hides_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(
            &path,
            "[payments]\nstripe_secret_key = \"sk_test_51abc\"\n[identity]\n\"totp_seed/cus_1\" = \"JBSW\"\n",
        )
        .unwrap();
        let secrets = Secrets::from_file(&path).unwrap();
        assert_eq!(
            secrets.get("payments", "stripe_secret_key").as_deref(),
            Some("sk_test_51abc")
        );
        assert_eq!(
            secrets.get("identity", "totp_seed/cus_1").as_deref(),
            Some("JBSW")
        );
        assert_eq!(secrets.get("payments", "other"), None);
        let debug = format!("{secrets:?}");
        assert!(debug.contains("payments.stripe_secret_key"));
        assert!(!debug.contains("sk_test_51abc"));
    }

    #[test]
    fn a_broken_file_is_reported_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.toml");
        std::fs::write(&path, "[payments]\nstripe_secret_key = sk_live_oops\n").unwrap();
        let err = Secrets::from_file(&path).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("sk_live_oops"), "{err}");
    }
}
