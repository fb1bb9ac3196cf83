//! `fleetctl lake`: list, query (SQL through Apache DataFusion) and compact the data lake.
//!
//! ```text
//! fleetctl lake ls [--topic fleet.telemetry] [--date 2026-11-23]
//! fleetctl lake query "SELECT vehicle_id, max(speed_kmh) FROM telemetry
//!                      WHERE date = '2026-11-23' AND hour = '07' GROUP BY 1" [--format table|csv|json]
//! fleetctl lake compact --topic fleet.telemetry [--date 2026-11-23] [--target-mb 128]
//! ```
//!
//! The lake is `--lake` / `FLEET_LAKE_URL` (a directory or `s3://bucket/prefix`, S3 endpoint
//! and keys from `FLEET_S3_*`). Every topic directory is a table named after the topic without
//! `fleet.` and with `-`/`.` as `_` (`fleet.telemetry-windows` -> `telemetry_windows`); the Hive
//! directories add the string columns `date` (and `hour`), and a filter on them prunes whole
//! directories. Files written with an older schema read as null in columns added since.

use std::sync::Arc;

use anyhow::Context;
use arrow::datatypes::DataType;
use clap::{Args, Subcommand, ValueEnum};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use fleet_lake::Lake;
use fleet_lake::catalog;
use fleet_lake::layout::Granularity;
use fleet_lake::writer::FileLimits;

#[derive(Debug, Args)]
pub(crate) struct LakeArgs {
    /// The lake: a directory or s3://bucket/prefix.
    #[arg(long, env = "FLEET_LAKE_URL", default_value = ".fleet/lake")]
    lake: String,
    /// Time partitioning the sink was configured with.
    #[arg(long, value_enum, default_value_t = Gran::Hour)]
    granularity: Gran,
    #[command(subcommand)]
    command: LakeCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Gran {
    Hour,
    Day,
}

impl From<Gran> for Granularity {
    fn from(g: Gran) -> Self {
        match g {
            Gran::Hour => Granularity::Hour,
            Gran::Day => Granularity::Day,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
enum LakeCommand {
    /// Lists time partitions with files, rows and bytes.
    Ls {
        /// Only this topic (repeatable).
        #[arg(long)]
        topic: Vec<String>,
        /// Only partitions of this date (YYYY-MM-DD).
        #[arg(long)]
        date: Option<String>,
    },
    /// Runs SQL over the lake (one table per topic).
    Query {
        /// The SQL.
        sql: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Merges a topic's small files into files of about --target-mb.
    Compact {
        /// The topic.
        #[arg(long)]
        topic: String,
        /// Only partitions of this date (YYYY-MM-DD).
        #[arg(long)]
        date: Option<String>,
        /// Target file size in MiB.
        #[arg(long, default_value_t = 128)]
        target_mb: u64,
    },
}

/// Table name of a topic.
pub(crate) fn table_name(topic: &str) -> String {
    topic
        .strip_prefix("fleet.")
        .unwrap_or(topic)
        .replace(['-', '.'], "_")
}

pub(crate) async fn run(args: LakeArgs) -> anyhow::Result<()> {
    let lake = Lake::open(&args.lake).context("opening the lake")?;
    let granularity: Granularity = args.granularity.into();
    match args.command {
        LakeCommand::Ls { topic, date } => {
            let prefix = date.map(|d| format!("date={d}"));
            let parts = catalog::list(&lake, &topic, prefix.as_deref()).await?;
            println!(
                "{:<28} {:<26} {:>6} {:>12} {:>12}",
                "topic", "partition", "files", "rows", "bytes"
            );
            let (mut files, mut rows, mut bytes) = (0, 0, 0);
            for p in &parts {
                println!(
                    "{:<28} {:<26} {:>6} {:>12} {:>12}",
                    p.topic,
                    p.dir,
                    p.files.len(),
                    p.rows,
                    p.bytes()
                );
                files += p.files.len();
                rows += p.rows;
                bytes += p.bytes();
            }
            println!(
                "{:<28} {:<26} {files:>6} {rows:>12} {bytes:>12}",
                "total",
                format!("{} partitions", parts.len())
            );
        }
        LakeCommand::Query { sql, format } => {
            let ctx = session(&lake, granularity).await?;
            let df = ctx.sql(&sql).await.context("planning the query")?;
            let batches = df.collect().await.context("running the query")?;
            print_batches(&batches, format)?;
        }
        LakeCommand::Compact {
            topic,
            date,
            target_mb,
        } => {
            let prefix = date.map(|d| format!("date={d}"));
            let limits = FileLimits {
                granularity,
                ..FileLimits::default()
            };
            let stats =
                catalog::compact(&lake, &topic, prefix.as_deref(), target_mb << 20, &limits)
                    .await?;
            println!(
                "compacted {} file(s) into {} ({} rows); {} interrupted compaction(s) finished",
                stats.inputs, stats.outputs, stats.rows, stats.recovered
            );
        }
    }
    Ok(())
}

/// A DataFusion session with one listing table per topic in the lake.
pub(crate) async fn session(
    lake: &Lake,
    granularity: Granularity,
) -> anyhow::Result<SessionContext> {
    let ctx = SessionContext::new();
    let (store, root) = lake.store();
    let base = match lake.local_root() {
        // The default local store of DataFusion takes absolute paths.
        Some(dir) => url::Url::from_directory_path(dir)
            .map_err(|()| anyhow::anyhow!("lake directory {dir:?} is not absolute"))?
            .to_string(),
        None => {
            let u = url::Url::parse(lake.url())?;
            let bucket = format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default());
            ctx.register_object_store(&url::Url::parse(&bucket)?, store.clone());
            let prefix = root.as_ref();
            if prefix.is_empty() {
                format!("{bucket}/")
            } else {
                format!("{bucket}/{prefix}/")
            }
        }
    };
    let part_cols: Vec<(String, DataType)> = granularity
        .columns()
        .iter()
        .map(|c| ((*c).to_owned(), DataType::Utf8))
        .collect();
    for topic in catalog::topics(lake).await? {
        let url = ListingTableUrl::parse(format!("{base}{topic}/"))?;
        let opts = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(part_cols.clone());
        let schema = match opts.infer_schema(&ctx.state(), &url).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(topic, error = %e, "skipping a topic without readable files");
                continue;
            }
        };
        let cfg = ListingTableConfig::new(url)
            .with_listing_options(opts)
            .with_schema(schema);
        ctx.register_table(table_name(&topic), Arc::new(ListingTable::try_new(cfg)?))?;
    }
    Ok(ctx)
}

fn print_batches(
    batches: &[arrow::record_batch::RecordBatch],
    format: Format,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    match format {
        Format::Table => println!("{}", arrow::util::pretty::pretty_format_batches(batches)?),
        Format::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(stdout.lock());
            for b in batches {
                w.write(b)?;
            }
        }
        Format::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(stdout.lock());
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}
