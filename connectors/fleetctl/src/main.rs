//! `fleetctl`: operator commands.
//!
//! * `fleetctl profiles load FILE`: publish vehicle profiles (below).
//! * `fleetctl lake ls|query|compact`: the Parquet data lake (see [`lake`]).
//!
//! `fleetctl profiles load FILE` publishes vehicle profiles (thresholds, planned route,
//! geofences, contacts) to `fleet.vehicle-profiles`, keyed by vehicle id; the processors read
//! that topic as a table, so the last profile published for a vehicle is the one in force.
//! FILE is a JSON array (or JSON lines) of objects with the fields of the `VehicleProfile`
//! Avro record; `event_id` and `updated_at` are filled in when absent. Every profile is
//! validated with the anomaly processor's own rules first: if one is invalid, nothing is
//! published and the command exits non-zero. It exits 0 only once the broker acknowledged
//! every record.
//!
//! ```text
//! fleetctl profiles load profiles.json
//! [{"vehicle_id": "VEH-TEST-001", "cargo_temp_min_c": 2, "cargo_temp_max_c": 8,
//!   "speed_limit_kmh": 80, "route": [{"lat": 4.711, "lon": -74.072}, {"lat": 6.244, "lon": -75.581}],
//!   "geofences": [{"id": "depot", "lat": 4.711, "lon": -74.072, "radius_m": 400, "planned_stop": true}],
//!   "contacts": [{"role": "OWNER", "channel": "WEBHOOK", "address": "https://acme.example/hook"}]}]
//! ```

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod lake;
mod profiles;

#[derive(Debug, Parser)]
#[command(name = "fleetctl", about = "fleetstream operator commands")]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long, env = "FLEET_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Schema registry URL.
    #[arg(
        long,
        env = "FLEET_SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Vehicle profiles.
    Profiles {
        #[command(subcommand)]
        command: ProfilesCommand,
    },
    /// The Parquet data lake written by lake-sink.
    Lake(lake::LakeArgs),
}

#[derive(Debug, Subcommand)]
enum ProfilesCommand {
    /// Validates and publishes the profiles in FILE (JSON array or JSON lines).
    Load {
        /// The file.
        file: PathBuf,
        /// Topic of the profiles table.
        #[arg(long, default_value = "fleet.vehicle-profiles")]
        topic: String,
        /// Validate only; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Profiles {
            command:
                ProfilesCommand::Load {
                    file,
                    topic,
                    dry_run,
                },
        } => profiles::load(cli.brokers, &cli.registry, &file, &topic, dry_run).await,
        Command::Lake(args) => lake::run(args).await,
    }
}
