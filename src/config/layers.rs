//! The layered loader: defaults, then the TOML file, then the environment,
//! then flags, merged by figment, which remembers where each value came
//! from so that a mistake is named where it was made.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider, Source};

use super::catalog::{self, GivenBy, GlobalOptions, Options, Setting, SETTINGS};
use super::ConfigError;

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Environment,
    Flag,
}

impl Origin {
    /// How `sms-credit config` says it: `default`, `file: PATH`,
    /// `environment` or `flag`.
    pub fn describe(&self) -> String {
        match self {
            Origin::Default => "default".to_string(),
            Origin::File(path) => format!("file: {}", path.display()),
            Origin::Environment => "environment".to_string(),
            Origin::Flag => "flag".to_string(),
        }
    }

    /// The name a mistake in this value is reported under: the variable,
    /// the flag (with its variable), or the key and the file.
    fn name_of(&self, setting: &Setting) -> String {
        match self {
            Origin::Default | Origin::Environment => setting.variable(),
            Origin::File(path) => format!("{} in the config file {}", setting.key, path.display()),
            Origin::Flag => format!("{} ({})", setting.flag(), setting.variable()),
        }
    }

    fn from_metadata(metadata: &Metadata) -> Origin {
        match metadata.name.as_ref() {
            "file" => match &metadata.source {
                Some(Source::File(path)) => Origin::File(path.clone()),
                _ => Origin::File(PathBuf::new()),
            },
            "environment" => Origin::Environment,
            "flag" => Origin::Flag,
            _ => Origin::Default,
        }
    }
}

/// One layer of values, as a figment provider.
struct Layer {
    origin: Origin,
    values: BTreeMap<&'static str, String>,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let metadata = match &self.origin {
            Origin::Default => Metadata::named("default"),
            Origin::File(path) => Metadata::named("file").source(Source::File(path.clone())),
            Origin::Environment => Metadata::named("environment"),
            Origin::Flag => Metadata::named("flag"),
        };
        metadata.interpolater(|_: &Profile, keys: &[&str]| keys.join("."))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict: Dict = self
            .values
            .iter()
            .map(|(key, value)| (key.to_string(), Value::from(value.clone())))
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

/// One setting's effective value and where it came from.
#[derive(Clone, Debug)]
pub struct Effective {
    pub setting: &'static Setting,
    pub value: Option<String>,
    pub origin: Origin,
}

/// Every setting's effective value, before it is checked.
pub struct Values {
    values: BTreeMap<&'static str, Effective>,
    /// The keys the checks have read, so that a test can prove none is
    /// forgotten.
    read: RefCell<BTreeSet<&'static str>>,
}

impl fmt::Debug for Values {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_list()
            .entries(self.values.values().map(|effective| {
                (
                    effective.setting.key,
                    shown_value(effective),
                    effective.origin.describe(),
                )
            }))
            .finish()
    }
}

impl Values {
    /// Loads the layers: defaults, the config file named by `global`,
    /// then what clap found in the environment and on the command line.
    pub fn load(global: &GlobalOptions, options: &Options) -> Result<Values, ConfigError> {
        let given = || global.given.iter().chain(&options.given);
        let by = |wanted: GivenBy| Layer {
            origin: match wanted {
                GivenBy::Environment => Origin::Environment,
                GivenBy::Flag => Origin::Flag,
            },
            values: given()
                .filter(|given| given.by == wanted)
                .map(|given| (given.setting.key, given.value.clone()))
                .collect(),
        };
        let file = match &global.config {
            Some(path) => Some(read_file(path)?),
            None => None,
        };
        Values::merge(file, by(GivenBy::Environment), by(GivenBy::Flag))
    }

    /// Every setting at its default (nothing configured).
    pub fn defaults() -> Values {
        Values::layered(&[]).unwrap_or_else(|_| unreachable!("defaults merge"))
    }

    /// The defaults with `values` as if set in the environment (for tests
    /// of the checks).
    pub fn with_environment(values: &[(&'static str, &str)]) -> Values {
        Values::layered(values).unwrap_or_else(|_| unreachable!("known keys merge"))
    }

    fn layered(values: &[(&'static str, &str)]) -> Result<Values, ConfigError> {
        let environment = Layer {
            origin: Origin::Environment,
            values: values
                .iter()
                .map(|(key, value)| (*key, value.to_string()))
                .collect(),
        };
        let flags = Layer {
            origin: Origin::Flag,
            values: BTreeMap::new(),
        };
        Values::merge(None, environment, flags)
    }

    fn merge(file: Option<Layer>, environment: Layer, flags: Layer) -> Result<Values, ConfigError> {
        let defaults = Layer {
            origin: Origin::Default,
            values: SETTINGS
                .iter()
                .filter_map(|setting| Some((setting.key, setting.default?.to_string())))
                .collect(),
        };
        let mut figment = Figment::from(defaults);
        if let Some(file) = file {
            figment = figment.merge(file);
        }
        let figment = figment.merge(environment).merge(flags);
        let merged: BTreeMap<String, String> =
            figment.extract().map_err(|error| ConfigError::File {
                path: "(merged settings)".to_string(),
                reason: error.to_string(),
            })?;
        let values = SETTINGS
            .iter()
            .map(|setting| {
                let value = merged.get(setting.key).cloned();
                let origin = figment
                    .find_metadata(setting.key)
                    .map_or(Origin::Default, Origin::from_metadata);
                (
                    setting.key,
                    Effective {
                        setting,
                        value,
                        origin,
                    },
                )
            })
            .collect();
        Ok(Values {
            values,
            read: RefCell::new(BTreeSet::new()),
        })
    }

    fn effective(&self, key: &'static str) -> Result<&Effective, ConfigError> {
        self.read.borrow_mut().insert(key);
        self.values.get(key).ok_or_else(|| ConfigError::Invalid {
            setting: key.to_string(),
            reason: "is not a setting of this release".to_string(),
        })
    }

    /// The setting's value checked by `check`, or `None` when it is unset;
    /// a refusal names the setting where it was set.
    pub fn optional<T>(
        &self,
        key: &'static str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let effective = self.effective(key)?;
        let Some(text) = &effective.value else {
            return Ok(None);
        };
        check(text)
            .map(Some)
            .map_err(|reason| ConfigError::Invalid {
                setting: effective.origin.name_of(effective.setting),
                reason,
            })
    }

    /// The name a setting is given by, where it was set: its variable, its
    /// flag, or its key in the config file.
    pub fn name(&self, key: &'static str) -> String {
        match self.values.get(key) {
            Some(effective) => effective.origin.name_of(effective.setting),
            None => key.to_string(),
        }
    }

    /// The name of `missing`, a setting required by `present`, in the
    /// place `present` was set: an operator who set Stripe's key in the
    /// config file is told the file's key for the webhook secret, not a
    /// variable.
    pub fn name_beside(&self, missing: &'static str, present: &'static str) -> String {
        let (Some(missing), Some(present)) = (catalog::setting(missing), self.values.get(present))
        else {
            return missing.to_string();
        };
        match &present.origin {
            Origin::File(path) => format!("{} in the config file {}", missing.key, path.display()),
            Origin::Flag => format!("{} ({})", missing.flag(), missing.variable()),
            Origin::Default | Origin::Environment => missing.variable(),
        }
    }

    /// The value of a setting that has a default, checked by `check`.
    pub fn required<T>(
        &self,
        key: &'static str,
        check: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.optional(key, check)?
            .ok_or_else(|| ConfigError::Invalid {
                setting: catalog::setting(key).map_or(key.to_string(), Setting::variable),
                reason: "is not set".to_string(),
            })
    }

    /// Every setting with its value (secrets and passwords hidden) and
    /// where it came from, in the catalog's order.
    pub fn view(&self) -> Vec<(&'static Setting, Option<String>, String)> {
        SETTINGS
            .iter()
            .filter_map(|setting| self.values.get(setting.key))
            .map(|effective| {
                (
                    effective.setting,
                    shown_value(effective),
                    effective.origin.describe(),
                )
            })
            .collect()
    }

    /// The keys the checks have read so far.
    pub fn keys_read(&self) -> BTreeSet<&'static str> {
        self.read.borrow().clone()
    }
}

/// A value as it may be shown: secrets as `***`, a database URL without
/// its password.
fn shown_value(effective: &Effective) -> Option<String> {
    let value = effective.value.as_ref()?;
    if effective.setting.secret {
        return Some("***".to_string());
    }
    if effective.setting.key == "database" {
        return Some(
            sms_credit_actors::adapters::DatabaseLocation::parse(value).map_or_else(
                |_| "(not a database location)".to_string(),
                |location| location.to_string(),
            ),
        );
    }
    Some(value.clone())
}

/// The config file as a layer: every key a setting's, every value a
/// string, a whole number or a boolean (never a fraction: amounts of money
/// are written "2.00").
fn read_file(path: &Path) -> Result<Layer, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|error| file_error(error.to_string()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|error| file_error(error.to_string()))?;
    let mut values = BTreeMap::new();
    for (key, value) in table {
        let setting = catalog::setting(&key).ok_or_else(|| {
            file_error(format!(
                "unknown key '{key}' (the keys are the long flags with '_' for '-'; `sms-credit config` lists them)"
            ))
        })?;
        let text = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            toml::Value::Float(_) => return Err(ConfigError::Invalid {
                setting: Origin::File(path.to_path_buf()).name_of(setting),
                reason:
                    "is a fraction: write amounts as strings (\"2.00\") and counts as whole numbers"
                        .to_string(),
            }),
            other => {
                return Err(ConfigError::Invalid {
                    setting: Origin::File(path.to_path_buf()).name_of(setting),
                    reason: format!(
                        "is a {}, not a string, a whole number or a boolean",
                        other.type_str()
                    ),
                })
            }
        };
        values.insert(setting.key, text);
    }
    Ok(Layer {
        origin: Origin::File(path.to_path_buf()),
        values,
    })
}
