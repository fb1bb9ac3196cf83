//! Configuration: defaults < TOML file < environment, validated at start.
//!
//! Every binary's config is a [`Config<A>`]: the sections every binary shares (`kafka`,
//! `registry`, `http`, `runner`) plus the binary's own section `app`. Each field can be set
//!
//! * in a TOML file given with `--config FILE` (`[kafka]`, `brokers = "..."`),
//! * by the generic environment variable `FLEET__<SECTION>__<FIELD>` (`FLEET__KAFKA__BROKERS`),
//! * and, for the addresses shared by the whole stack, by the short names of ARCHITECTURE.md
//!   (`FLEET_KAFKA_BROKERS`, `FLEET_SCHEMA_REGISTRY_URL`, ...), which win over the generic form.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default). Durations are
//! written like `"10s"`, `"250ms"`. Raw librdkafka settings go in `[kafka.options]`.
//!
//! `--help` lists every key with its environment variable, default and documentation; the
//! text comes from the same doc comments that document the structs (see [`config_section!`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// One documented configuration key.
#[derive(Debug, Clone)]
pub struct FieldDoc {
    /// Dotted key, e.g. `kafka.brokers`.
    pub key: String,
    /// Short environment variable, if the key has one.
    pub env: Option<&'static str>,
    /// Default value, rendered as TOML-ish text.
    pub default: String,
    /// The field's doc comment.
    pub doc: &'static str,
}

/// A config section that can describe its keys.
pub trait Section: Serialize + DeserializeOwned + Default + Clone + std::fmt::Debug {
    /// Documentation of every key, with `prefix` (e.g. `kafka`) prepended.
    fn docs(prefix: &str) -> Vec<FieldDoc>;
    /// Checks values that serde cannot (ranges, URLs, non-empty lists).
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

/// Declares a config section: a serde struct with `deny_unknown_fields` and defaults, whose
/// field doc comments also feed `--help`.
///
/// ```
/// fleet_runtime::config_section! {
///     /// My binary's settings.
///     pub struct MyConfig {
///         /// Topic to read.
///         pub input_topic: String = "fleet.telemetry".to_owned(),
///         /// Where the state lives.
///         pub state_url: String = "sqlite://fleet.db".to_owned(), env = "FLEET_STATE_URL",
///     }
/// }
/// use fleet_runtime::config::Section;
/// let docs = MyConfig::docs("app");
/// assert_eq!(docs[1].key, "app.state_url");
/// assert_eq!(docs[1].env, Some("FLEET_STATE_URL"));
/// assert_eq!(MyConfig::default().input_topic, "fleet.telemetry");
/// ```
#[macro_export]
macro_rules! config_section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[serde($($sattr:tt)*)])?
                pub $field:ident : $ty:ty = $default:expr $(, env = $env:literal)?
            ),* $(,)?
        }
        $(validate($this:ident) $validate:block)?
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[doc = $doc])*
                $(#[serde($($sattr)*)])?
                pub $field: $ty,
            )*
        }

        impl ::std::default::Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::config::Section for $name {
            fn docs(prefix: &str) -> ::std::vec::Vec<$crate::config::FieldDoc> {
                let defaults = <$name as ::std::default::Default>::default();
                let rendered = $crate::config::render_defaults(&defaults);
                ::std::vec![$(
                    $crate::config::FieldDoc {
                        key: ::std::format!("{}.{}", prefix, stringify!($field)),
                        env: $crate::config_section!(@env $($env)?),
                        default: rendered
                            .get(stringify!($field))
                            .cloned()
                            .unwrap_or_default(),
                        doc: ::std::concat!($($doc, "\n"),*),
                    }
                ),*]
            }
            $(
                fn validate(&self) -> $crate::Result<()> {
                    let $this = self;
                    $validate
                }
            )?
        }
    };
    (@env $env:literal) => { ::std::option::Option::Some($env) };
    (@env) => { ::std::option::Option::None };
}

/// Renders each top-level field of `value` as text, for `--help`.
pub fn render_defaults<T: Serialize>(value: &T) -> BTreeMap<String, String> {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .map(|(k, v)| {
                let text = match &v {
                    serde_json::Value::String(s) => format!("{s:?}"),
                    serde_json::Value::Null => "(unset)".to_owned(),
                    other => other.to_string(),
                };
                (k, text)
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

config_section! {
    /// Kafka connection and client settings.
    pub struct KafkaConfig {
        /// Bootstrap brokers, comma separated.
        pub brokers: String = "127.0.0.1:9092".to_owned(), env = "FLEET_KAFKA_BROKERS",
        /// Consumer group id; empty means the binary's default (its own name).
        pub group_id: String = String::new(),
        /// Create the topics this binary is configured to use when they are missing (partition
        /// counts and configs of the matching `kafka::fleet_topics` entry). When off, start-up
        /// fails naming any missing topic and the key that names it.
        pub create_topics: bool = true,
        /// Partitions for topics created at start (fleet.telemetry always gets at least 12).
        pub default_partitions: i32 = 6,
        /// Replication factor for topics created at start; 0: the cluster's size, up to 3.
        pub replication_factor: i32 = 0,
        /// `min.insync.replicas` of topics created at start; 0: one less than the replication
        /// factor, at least 1 (2 on a cluster of three or more).
        pub min_insync_replicas: i32 = 0,
        /// Where a new consumer group starts: earliest or latest.
        pub auto_offset_reset: String = "earliest".to_owned(),
        /// Consumer group session timeout: how long a crashed member holds its partitions.
        #[serde(with = "humantime_serde")]
        pub session_timeout: Duration = Duration::from_secs(10),
        /// Longest pause between polls before the member is considered dead; also how long a
        /// rebalance waits for members to rejoin.
        #[serde(with = "humantime_serde")]
        pub max_poll_interval: Duration = Duration::from_secs(300),
        /// Longest time the broker holds a fetch that found nothing new (consumers): the
        /// latency floor of a quiet partition. The emergency fast lane lowers it.
        #[serde(with = "humantime_serde")]
        pub fetch_wait: Duration = Duration::from_millis(100),
        /// Interval of librdkafka statistics (consumer lag metrics); "0s" disables them.
        #[serde(with = "humantime_serde")]
        pub statistics_interval: Duration = Duration::from_secs(5),
        /// Raw librdkafka settings applied last (e.g. `"security.protocol" = "SSL"`).
        pub options: BTreeMap<String, String> = BTreeMap::new(),
    }
    validate(this) {
        if this.brokers.trim().is_empty() {
            return Err(Error::Config("kafka.brokers is empty".into()));
        }
        if !["earliest", "latest"].contains(&this.auto_offset_reset.as_str()) {
            return Err(Error::Config(format!(
                "kafka.auto_offset_reset must be earliest or latest, not {:?}",
                this.auto_offset_reset
            )));
        }
        if this.default_partitions < 1 {
            return Err(Error::Config("kafka.default_partitions must be >= 1".into()));
        }
        if this.replication_factor < 0 || this.min_insync_replicas < 0 {
            return Err(Error::Config(
                "kafka.replication_factor and kafka.min_insync_replicas must be >= 0 (0: from the cluster size)".into(),
            ));
        }
        if this.replication_factor > 0 && this.min_insync_replicas > this.replication_factor {
            return Err(Error::Config(format!(
                "kafka.min_insync_replicas ({}) exceeds kafka.replication_factor ({}): no write could succeed",
                this.min_insync_replicas, this.replication_factor
            )));
        }
        Ok(())
    }
}

config_section! {
    /// Schema registry client settings.
    pub struct RegistryConfig {
        /// Base URL of the Confluent-compatible schema registry.
        pub url: String = "http://127.0.0.1:8081".to_owned(), env = "FLEET_SCHEMA_REGISTRY_URL",
    }
    validate(this) {
        if !(this.url.starts_with("http://") || this.url.starts_with("https://")) {
            return Err(Error::Config(format!(
                "registry.url must start with http:// or https://, got {:?}",
                this.url
            )));
        }
        Ok(())
    }
}

config_section! {
    /// The metrics and health HTTP server.
    pub struct HttpConfig {
        /// Listen address for /metrics, /health/live and /health/ready; empty disables it.
        pub listen: String = "127.0.0.1:0".to_owned(), env = "FLEET_HTTP_LISTEN",
        /// Limits of every HTTP server of the binary (metrics, API, ingest): open connections
        /// at once; further clients wait in the listen backlog.
        pub max_connections: usize = 10_000,
        /// Open connections at once from one IP address; more are closed at once.
        pub max_connections_per_ip: usize = 1_000,
        /// Time a client has to send a request's headers (also the idle keep-alive limit).
        #[serde(with = "humantime_serde")]
        pub header_timeout: Duration = Duration::from_secs(10),
        /// Time from a request's headers to its response's headers (body upload included);
        /// then `408`. Streams (SSE) run on once their headers are out.
        #[serde(with = "humantime_serde")]
        pub request_timeout: Duration = Duration::from_secs(30),
    }
    validate(c) {
        if c.max_connections == 0 || c.max_connections_per_ip == 0 {
            return Err(Error::Config("http.max_connections and http.max_connections_per_ip must be positive".into()));
        }
        if c.header_timeout.is_zero() || c.request_timeout.is_zero() {
            return Err(Error::Config("http.header_timeout and http.request_timeout must be positive".into()));
        }
        Ok(())
    }
}

config_section! {
    /// The run loop.
    pub struct RunnerConfig {
        /// Inputs whose outputs may be awaiting broker acknowledgement at once.
        pub max_in_flight: usize = 10_000,
        /// First retry delay after a transient error.
        #[serde(with = "humantime_serde")]
        pub retry_initial: Duration = Duration::from_millis(100),
        /// Cap of the retry delay.
        #[serde(with = "humantime_serde")]
        pub retry_max: Duration = Duration::from_secs(10),
        /// Period of the processor's timer (watermarks, flushes).
        #[serde(with = "humantime_serde")]
        pub tick_interval: Duration = Duration::from_secs(1),
        /// Not ready when outputs have been in flight without progress for this long.
        #[serde(with = "humantime_serde")]
        pub stall_timeout: Duration = Duration::from_secs(60),
        /// Time allowed on shutdown to drain in-flight outputs before giving up.
        #[serde(with = "humantime_serde")]
        pub drain_timeout: Duration = Duration::from_secs(30),
        /// Dead-letter topic.
        pub dlq_topic: String = "fleet.dlq".to_owned(),
        /// Processors on the state runtime ([`crate::task`]): `at_least_once` (outputs, state
        /// checkpoint and offsets committed one after the other: a crash repeats the inputs
        /// since the last commit) or `exactly_once` (all three in one Kafka transaction).
        pub processing_guarantee: String = "at_least_once".to_owned(), env = "FLEET_PROCESSING_GUARANTEE",
        /// State runtime: how often the open batch (outputs, state changes, offsets) is
        /// committed. Outputs of an exactly-once processor become visible to `read_committed`
        /// readers at the commit: this is their added latency.
        #[serde(with = "humantime_serde")]
        pub commit_interval: Duration = Duration::from_millis(100),
        /// State runtime: a batch is committed early once it holds this many inputs (bounds
        /// the memory of a batch and the work an abort repeats). Larger batches amortise the
        /// commit: 10,000 gave 0.68 of the throughput of 100,000 with `exactly_once`.
        pub max_batch: usize = 100_000,
        /// This instance's name within its group, unique among the instances that run at the
        /// same time; with `exactly_once`, the transactional id is `<group>-<instance_id>`, so
        /// a restarted instance with the same name aborts what its previous life left open.
        /// Empty: the host name.
        pub instance_id: String = String::new(), env = "FLEET_INSTANCE_ID",
        /// `exactly_once`: how long the broker keeps a transaction of a vanished instance open
        /// (it blocks `read_committed` readers of the outputs meanwhile) before aborting it.
        #[serde(with = "humantime_serde")]
        pub transaction_timeout: Duration = Duration::from_secs(10),
    }
    validate(this) {
        if !["at_least_once", "exactly_once"].contains(&this.processing_guarantee.as_str()) {
            return Err(Error::Config(format!(
                "runner.processing_guarantee must be at_least_once or exactly_once, not {:?}",
                this.processing_guarantee
            )));
        }
        if this.max_batch == 0 {
            return Err(Error::Config("runner.max_batch must be >= 1".into()));
        }
        if this.commit_interval.is_zero() {
            return Err(Error::Config("runner.commit_interval must be > 0".into()));
        }
        if this.transaction_timeout < Duration::from_secs(1) {
            return Err(Error::Config("runner.transaction_timeout must be >= 1s".into()));
        }
        if this.max_in_flight == 0 {
            return Err(Error::Config("runner.max_in_flight must be >= 1".into()));
        }
        if this.retry_initial.is_zero() || this.retry_max < this.retry_initial {
            return Err(Error::Config(
                "runner.retry_initial must be > 0 and <= runner.retry_max".into(),
            ));
        }
        Ok(())
    }
}

impl RunnerConfig {
    /// Whether `processing_guarantee` asks for exactly once (validated: otherwise at least
    /// once).
    pub fn exactly_once(&self) -> bool {
        self.processing_guarantee == "exactly_once"
    }
}

/// A binary's whole configuration: shared sections plus its own `app` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config<A> {
    /// Kafka.
    pub kafka: KafkaConfig,
    /// Schema registry.
    pub registry: RegistryConfig,
    /// Metrics and health server.
    pub http: HttpConfig,
    /// Run loop.
    pub runner: RunnerConfig,
    /// The binary's own settings.
    pub app: A,
}

/// A topic named by a binary's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfiguredTopic {
    /// The dotted key that names it (`app.windows_topic`, `app.topics[2]`).
    pub key: String,
    /// The configured name.
    pub name: String,
    /// The key's default name, for a single-topic key (`fleet.telemetry-windows`).
    pub default: Option<String>,
}

impl<A: Section> Config<A> {
    /// Every topic this binary is configured to use: each string of the `app` section whose
    /// key ends in `_topic`, each string of a list whose key ends in `topics`, and
    /// `runner.dlq_topic`. Empty names (a feature switched off) are left out. This is what
    /// start-up provisions, so a renamed topic (a prefix per environment) is created under
    /// the configured name, never the default one.
    pub fn topics(&self) -> Vec<ConfiguredTopic> {
        let mut out = Vec::new();
        let app = serde_json::to_value(&self.app).unwrap_or_default();
        let defaults = serde_json::to_value(A::default()).unwrap_or_default();
        if let serde_json::Value::Object(map) = app {
            for (k, v) in map {
                match v {
                    serde_json::Value::String(name) if k.ends_with("_topic") => {
                        let default = defaults.get(&k).and_then(|d| d.as_str()).map(str::to_owned);
                        out.push(ConfiguredTopic {
                            key: format!("app.{k}"),
                            name,
                            default,
                        });
                    }
                    serde_json::Value::Array(list) if k.ends_with("topics") => {
                        for (i, item) in list.into_iter().enumerate() {
                            if let serde_json::Value::String(name) = item {
                                out.push(ConfiguredTopic {
                                    key: format!("app.{k}[{i}]"),
                                    name,
                                    default: None,
                                });
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        out.push(ConfiguredTopic {
            key: "runner.dlq_topic".into(),
            name: self.runner.dlq_topic.clone(),
            default: Some(RunnerConfig::default().dlq_topic),
        });
        out.retain(|t| !t.name.trim().is_empty());
        out
    }

    /// Every key of every section.
    pub fn docs() -> Vec<FieldDoc> {
        let mut all = KafkaConfig::docs("kafka");
        all.extend(RegistryConfig::docs("registry"));
        all.extend(HttpConfig::docs("http"));
        all.extend(RunnerConfig::docs("runner"));
        all.extend(A::docs("app"));
        all
    }

    /// The configuration reference printed by `--help`.
    pub fn help() -> String {
        let mut out = String::from(
            "CONFIGURATION (defaults < --config FILE (TOML) < FLEET__SECTION__KEY < short env names):\n",
        );
        for d in Self::docs() {
            let _ = write!(out, "\n  {} = {}", d.key, d.default);
            let generic = format!("FLEET__{}", d.key.replace('.', "__").to_ascii_uppercase());
            match d.env {
                Some(env) => {
                    let _ = write!(out, "    [env: {env}, {generic}]");
                }
                None => {
                    let _ = write!(out, "    [env: {generic}]");
                }
            }
            for line in d.doc.lines() {
                let _ = write!(out, "\n      {}", line.trim());
            }
        }
        out.push('\n');
        out
    }

    /// Loads defaults < `file` < environment, then validates.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        Self::load_from(file, Env::raw())
    }

    fn load_from(file: Option<&Path>, env: Env) -> Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Self::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(Error::Config(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let generic = env
            .clone()
            .filter(|k| k.as_str().starts_with("FLEET__"))
            .map(|k| {
                k.as_str()
                    .trim_start_matches("FLEET__")
                    .replace("__", ".")
                    .to_ascii_lowercase()
                    .into()
            })
            .lowercase(false)
            .split("."); // keys are already dotted
        figment = figment.merge(generic);
        let aliases: Vec<(&'static str, String)> = Self::docs()
            .into_iter()
            .filter_map(|d| d.env.map(|e| (e, d.key)))
            .collect();
        let names: Vec<&'static str> = aliases.iter().map(|(e, _)| *e).collect();
        let short = env
            .filter(move |k| names.iter().any(|n| k.as_str() == *n))
            .map(move |k| {
                aliases
                    .iter()
                    .find(|(e, _)| k.as_str() == *e)
                    .map(|(_, key)| key.clone())
                    .unwrap_or_default()
                    .into()
            })
            .lowercase(false)
            .split(".");
        figment = figment.merge(short);
        let config: Self = figment
            .extract()
            .map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Validates every section.
    pub fn validate(&self) -> Result<()> {
        self.kafka.validate()?;
        self.registry.validate()?;
        self.http.validate()?;
        self.runner.validate()?;
        self.app.validate()
    }

    /// The effective configuration as TOML-like JSON (for `--print-config`).
    pub fn to_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The command line every binary accepts.
#[derive(Debug, clap::Parser)]
pub struct Cli {
    /// TOML config file (sections [kafka], [registry], [http], [runner], [app]).
    #[arg(long, short = 'c', env = "FLEET_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl Cli {
    /// Parses the command line for a binary whose config is `Config<A>`; `--help` lists every
    /// configuration key from the doc comments.
    pub fn parse_for<A: Section>(name: &'static str, about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Self::command()
            .name(name)
            .about(about)
            .after_long_help(Config::<A>::help())
            .after_help("Use --help for every configuration key.");
        let matches = cmd.get_matches();
        match Self::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        }
    }
}

/// What every binary does first: parse the command line (`--help` lists every key), set up
/// logging, load and validate the configuration. `None` when `--print-config` printed it.
pub fn from_command_line<A: Section>(
    name: &'static str,
    about: &'static str,
) -> Result<Option<Config<A>>> {
    let cli = Cli::parse_for::<A>(name, about);
    crate::shutdown::init_logging();
    let config = Config::<A>::load(cli.config.as_deref())?;
    if cli.print_config {
        println!("{}", config.to_pretty());
        return Ok(None);
    }
    Ok(Some(config))
}

#[cfg(test)]
#[allow(unreachable_pub, clippy::result_large_err)]
mod tests {
    use super::*;

    config_section! {
        /// Test section.
        pub struct AppSection {
            /// Input topic.
            pub input: String = "in".to_owned(),
            /// State URL.
            pub state_url: String = "sqlite://x.db".to_owned(), env = "FLEET_STATE_URL",
            /// A duration.
            #[serde(with = "humantime_serde")]
            pub window: Duration = Duration::from_secs(60),
        }
        validate(this) {
            if this.input.is_empty() {
                return Err(Error::Config("app.input is empty".into()));
            }
            Ok(())
        }
    }

    config_section! {
        /// A section naming topics.
        pub struct TopicsSection {
            /// Profiles.
            pub profiles_topic: String = "fleet.vehicle-profiles".to_owned(),
            /// Output.
            pub windows_topic: String = "fleet.telemetry-windows".to_owned(),
            /// Switched off.
            pub extra_topic: String = String::new(),
            /// Several.
            pub topics: Vec<String> = vec!["a".into(), "b".into()],
            /// Not a Kafka topic.
            pub topic_prefix: String = "vehicle".to_owned(),
        }
    }

    #[test]
    fn topics_are_the_configured_names_with_their_keys() {
        let mut c = Config::<TopicsSection>::default();
        c.app.profiles_topic = "prod.profiles".into();
        c.app.topics = vec!["prod.fleet.telemetry".into()];
        c.runner.dlq_topic = "prod.fleet.dlq".into();
        let mut got: Vec<(String, String, Option<String>)> = c
            .topics()
            .into_iter()
            .map(|t| (t.key, t.name, t.default))
            .collect();
        got.sort();
        let s = |x: &str| x.to_owned();
        assert_eq!(
            got,
            vec![
                (
                    s("app.profiles_topic"),
                    s("prod.profiles"),
                    Some(s("fleet.vehicle-profiles"))
                ),
                (s("app.topics[0]"), s("prod.fleet.telemetry"), None),
                (
                    s("app.windows_topic"),
                    s("fleet.telemetry-windows"),
                    Some(s("fleet.telemetry-windows"))
                ),
                (
                    s("runner.dlq_topic"),
                    s("prod.fleet.dlq"),
                    Some(s("fleet.dlq"))
                ),
            ]
        );
        let spec = |key: &str| {
            let t = c.topics().into_iter().find(|t| t.key == key).expect("key");
            crate::kafka::spec_for(&t, 3)
        };
        // A renamed profiles topic stays a compacted table; a prefixed telemetry topic keeps
        // its 12 partitions.
        let profiles = spec("app.profiles_topic");
        assert!(
            profiles
                .configs
                .iter()
                .any(|(k, v)| *k == "cleanup.policy" && v == "compact")
        );
        assert_eq!(profiles.name, "prod.profiles");
        assert_eq!(spec("app.topics[0]").partitions, 12);
        assert_eq!(spec("app.windows_topic").partitions, 3);
        assert_eq!(spec("runner.dlq_topic").name, "prod.fleet.dlq");
    }

    #[test]
    fn defaults_validate_and_document_every_key() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            let c = Config::<AppSection>::load_from(None, Env::raw()).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
            assert_eq!(c.app.window, Duration::from_secs(60));
            Ok(())
        });
        let help = Config::<AppSection>::help();
        for key in [
            "kafka.brokers",
            "registry.url",
            "runner.max_in_flight",
            "app.state_url",
        ] {
            assert!(help.contains(key), "{key} documented");
        }
        assert!(help.contains("FLEET_KAFKA_BROKERS"));
        assert!(help.contains("FLEET__APP__WINDOW"));
        assert!(help.contains("Input topic."));
    }

    #[test]
    fn file_overrides_defaults_and_unknown_keys_fail() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            file_cases();
            Ok(())
        });
    }

    fn file_cases() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[kafka]\nbrokers = \"b1:9092,b2:9092\"\n[kafka.options]\n\"linger.ms\" = \"7\"\n[app]\ninput = \"x\"\nwindow = \"90s\"\n",
        )
        .expect("write");
        let c = Config::<AppSection>::load_from(Some(&path), Env::raw()).expect("load");
        assert_eq!(c.kafka.brokers, "b1:9092,b2:9092");
        assert_eq!(
            c.kafka.options.get("linger.ms").map(String::as_str),
            Some("7")
        );
        assert_eq!(c.app.input, "x");
        assert_eq!(c.app.window, Duration::from_secs(90));

        std::fs::write(&path, "[kafka]\nbrokerz = \"typo\"\n").expect("write");
        let err = Config::<AppSection>::load_from(Some(&path), Env::raw()).expect_err("typo");
        assert!(err.to_string().contains("brokerz"), "{err}");

        std::fs::write(&path, "[app]\ninput = \"\"\n").expect("write");
        assert!(Config::<AppSection>::load_from(Some(&path), Env::raw()).is_err());
        std::fs::write(&path, "[registry]\nurl = \"localhost:8081\"\n").expect("write");
        assert!(Config::<AppSection>::load_from(Some(&path), Env::raw()).is_err());
        assert!(
            Config::<AppSection>::load_from(Some(&dir.path().join("missing.toml")), Env::raw())
                .is_err()
        );
    }

    #[test]
    fn environment_overrides_file_and_short_names_win() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "c.toml",
                "[kafka]\nbrokers = \"file:9092\"\n[app]\ninput = \"file\"\n",
            )?;
            jail.set_env("FLEET__APP__INPUT", "generic");
            jail.set_env("FLEET__RUNNER__MAX_IN_FLIGHT", "5");
            jail.set_env("FLEET__KAFKA__BROKERS", "generic:9092");
            jail.set_env("FLEET_KAFKA_BROKERS", "short:9092");
            jail.set_env("FLEET_STATE_URL", "sqlite:///tmp/s.db");
            jail.set_env("FLEET__RUNNER__TICK_INTERVAL", "250ms");
            let c = Config::<AppSection>::load_from(Some(Path::new("c.toml")), Env::raw())
                .map_err(|e| e.to_string())?;
            assert_eq!(c.app.input, "generic");
            assert_eq!(c.runner.max_in_flight, 5);
            assert_eq!(c.kafka.brokers, "short:9092");
            assert_eq!(c.app.state_url, "sqlite:///tmp/s.db");
            assert_eq!(c.runner.tick_interval, Duration::from_millis(250));
            Ok(())
        });
    }
}
