//! Encoding and decoding typed records in the Confluent wire format.
//!
//! * [`Record`] ties a Rust type to its `.avsc` file, its Kafka key and its default topic.
//! * [`Registry`] talks to a Confluent-compatible schema registry through
//!   `schema_registry_converter` (register under `<topic>-value`, fetch by id; both cached).
//! * [`Encoder`] frames records with the id the registry gave the schema; it serialises straight
//!   from the Rust value to Avro binary (no intermediate `Value`) into a caller-owned buffer.
//! * [`Decoder`] reads any writer schema the registry knows: when the writer schema is the
//!   record's own (same Parsing Canonical Form) it deserialises directly; otherwise it resolves
//!   writer -> reader schema per the Avro rules (new optional fields take their defaults).

use std::collections::HashMap;
use std::io::Cursor;
use std::marker::PhantomData;
use std::sync::{Arc, LazyLock, RwLock};

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::records::*;
use crate::{Error, Result, wire};

/// A compiled schema: parsed once per record type for the life of the process.
pub struct CompiledSchema {
    schema: &'static Schema,
    canonical: String,
    writer: GenericDatumWriter<'static>,
    reader: GenericDatumReader<'static>,
}

impl std::fmt::Debug for CompiledSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledSchema")
            .field("canonical", &self.canonical)
            .finish_non_exhaustive()
    }
}

impl CompiledSchema {
    /// Parses an `.avsc` text. Panics if it does not parse: the schemas are compiled into the
    /// binary and covered by tests, so a failure here is a build defect, not an input error.
    fn parse(json: &str) -> Self {
        #[allow(clippy::expect_used)]
        let schema: &'static Schema = Box::leak(Box::new(
            Schema::parse_str(json).expect("bundled .avsc parses"),
        ));
        #[allow(clippy::expect_used)]
        let writer = GenericDatumWriter::builder(schema)
            .human_readable(false)
            .build()
            .expect("writer for bundled schema");
        #[allow(clippy::expect_used)]
        let reader = GenericDatumReader::builder(schema)
            .human_readable(false)
            .build()
            .expect("reader for bundled schema");
        Self {
            canonical: schema.canonical_form(),
            schema,
            writer,
            reader,
        }
    }

    /// The parsed schema.
    pub fn schema(&self) -> &'static Schema {
        self.schema
    }

    /// The schema's Parsing Canonical Form.
    pub fn canonical_form(&self) -> &str {
        &self.canonical
    }
}

/// A record type with an Avro schema in `schemas/avro/`.
pub trait Record: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Full Avro name, e.g. `io.fleetstream.TelemetryReading`.
    const FULL_NAME: &'static str;
    /// The `.avsc` text (source of truth).
    const SCHEMA_JSON: &'static str;
    /// The default topic carrying this record.
    const DEFAULT_TOPIC: &'static str;

    /// The Kafka key of this record.
    fn key(&self) -> &str;
    /// The record's `event_id` (for de-duplication).
    fn event_id(&self) -> &str;
    /// The compiled schema, parsed once.
    fn compiled() -> &'static CompiledSchema;
}

macro_rules! record {
    ($ty:ident, $topic:literal, key = $key:ident) => {
        impl Record for $ty {
            const FULL_NAME: &'static str = concat!("io.fleetstream.", stringify!($ty));
            const SCHEMA_JSON: &'static str =
                include_str!(concat!("../avro/", stringify!($ty), ".avsc"));
            const DEFAULT_TOPIC: &'static str = $topic;

            fn key(&self) -> &str {
                &self.$key
            }
            fn event_id(&self) -> &str {
                &self.event_id
            }
            fn compiled() -> &'static CompiledSchema {
                static COMPILED: LazyLock<CompiledSchema> =
                    LazyLock::new(|| CompiledSchema::parse(<$ty as Record>::SCHEMA_JSON));
                &COMPILED
            }
        }
    };
}

record!(TelemetryReading, "fleet.telemetry", key = vehicle_id);
record!(EmergencyEvent, "fleet.emergencies", key = vehicle_id);
record!(Anomaly, "fleet.anomalies", key = vehicle_id);
record!(WindowAggregate, "fleet.telemetry-windows", key = vehicle_id);
record!(Notification, "fleet.notifications", key = recipient);
record!(DeviceCommand, "fleet.commands", key = vehicle_id);
record!(DeliveryEvent, "fleet.deliveries", key = delivery_id);
record!(DeadLetter, "fleet.dlq", key = event_id);
record!(VehicleProfile, "fleet.vehicle-profiles", key = vehicle_id);

/// Every record's full name and schema text, for tools that register or list them all.
pub fn all_schemas() -> [(&'static str, &'static str, &'static str); 9] {
    fn entry<T: Record>() -> (&'static str, &'static str, &'static str) {
        (T::FULL_NAME, T::DEFAULT_TOPIC, T::SCHEMA_JSON)
    }
    [
        entry::<TelemetryReading>(),
        entry::<EmergencyEvent>(),
        entry::<Anomaly>(),
        entry::<WindowAggregate>(),
        entry::<Notification>(),
        entry::<DeviceCommand>(),
        entry::<DeliveryEvent>(),
        entry::<DeadLetter>(),
        entry::<VehicleProfile>(),
    ]
}

/// Serialises `record` as Avro binary (no header) and appends it to `buf`.
pub fn write_datum<T: Record>(record: &T, buf: &mut Vec<u8>) -> Result<()> {
    T::compiled().writer.write_ser(buf, record)?;
    Ok(())
}

/// Deserialises an Avro body written with `T`'s own schema.
pub fn read_datum<T: Record>(body: &[u8]) -> Result<T> {
    let mut cursor = Cursor::new(body);
    let value: T = T::compiled().reader.read_deser(&mut cursor)?;
    if (cursor.position() as usize) != body.len() {
        return Err(Error::Avro(format!(
            "{} trailing bytes after the record",
            body.len() - cursor.position() as usize
        )));
    }
    Ok(value)
}

/// Reads a body written with `writer` and resolves it to `T`'s schema (Avro schema resolution).
fn read_resolved<T: Record>(reader: &GenericDatumReader<'static>, body: &[u8]) -> Result<T> {
    let mut cursor = Cursor::new(body);
    let value = reader.read_value(&mut cursor)?;
    Ok(apache_avro::from_value::<T>(&value)?)
}

/// A client of a Confluent-compatible schema registry (subject naming: TopicNameStrategy).
#[derive(Clone)]
pub struct Registry {
    encoder: Arc<AvroEncoder>,
    decoder: Arc<AvroDecoder>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A client for the registry at `url` (e.g. `http://127.0.0.1:8081`).
    pub fn new(url: &str) -> Result<Self> {
        let settings = SrSettings::new_builder(url.trim_end_matches('/').to_owned())
            .no_proxy()
            .set_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Self {
            encoder: Arc::new(AvroEncoder::new(settings.clone())),
            decoder: Arc::new(AvroDecoder::new(settings)),
        })
    }

    /// Registers `T`'s schema under `<topic>-value` (idempotent) and returns its global id.
    pub async fn register<T: Record>(&self, topic: &str) -> Result<u32> {
        let supplied = SuppliedSchema::new(
            Some(T::FULL_NAME.to_owned()),
            SchemaType::Avro,
            T::SCHEMA_JSON.to_owned(),
        );
        let strategy =
            SubjectNameStrategy::TopicNameStrategyWithSchema(topic.to_owned(), false, supplied);
        let subject = format!("{topic}-value");
        let schema = self.encoder.get_schema_and_id(&subject, strategy).await?;
        Ok(schema.id)
    }

    /// The writer schema registered under `id` (cached after the first call).
    pub async fn schema_by_id(&self, id: u32) -> Result<Schema> {
        let schema = self.decoder.get_schema(id).await?;
        Ok(schema.parsed.clone())
    }
}

/// Encodes `T` for one topic with the schema id the registry assigned.
#[derive(Debug, Clone, Copy)]
pub struct Encoder<T> {
    schema_id: u32,
    _record: PhantomData<fn(&T)>,
}

impl<T: Record> Encoder<T> {
    /// Registers `T`'s schema for `topic` and returns an encoder for it.
    pub async fn register(registry: &Registry, topic: &str) -> Result<Self> {
        Ok(Self::with_schema_id(registry.register::<T>(topic).await?))
    }

    /// An encoder for a schema id obtained elsewhere.
    pub fn with_schema_id(schema_id: u32) -> Self {
        Self {
            schema_id,
            _record: PhantomData,
        }
    }

    /// The schema id written into every header.
    pub fn schema_id(&self) -> u32 {
        self.schema_id
    }

    /// Clears `buf` and writes the framed record into it (no allocation once `buf` has grown).
    pub fn encode_into(&self, record: &T, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        wire::write_header(self.schema_id, buf);
        write_datum(record, buf)
    }

    /// The framed record in a new buffer.
    pub fn encode(&self, record: &T) -> Result<Vec<u8>> {
        let mut buf = Vec::with_capacity(128);
        self.encode_into(record, &mut buf)?;
        Ok(buf)
    }
}

#[derive(Clone, Copy)]
enum Plan {
    /// Writer schema is `T`'s own: deserialise directly.
    Direct,
    /// Writer schema differs: resolve to `T`'s schema.
    Resolve(&'static GenericDatumReader<'static>),
}

/// Decodes framed payloads of any registered writer schema into `T`.
pub struct Decoder<T> {
    registry: Option<Registry>,
    plans: RwLock<HashMap<u32, Plan>>,
    _record: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Decoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl<T: Record> Decoder<T> {
    /// A decoder that looks unknown schema ids up in `registry`.
    pub fn new(registry: Registry) -> Self {
        Self {
            registry: Some(registry),
            plans: RwLock::new(HashMap::new()),
            _record: PhantomData,
        }
    }

    /// A decoder without a registry that accepts only `known_ids`, all written with `T`'s own
    /// schema (tests and offline tools).
    pub fn offline(known_ids: &[u32]) -> Self {
        Self {
            registry: None,
            plans: RwLock::new(known_ids.iter().map(|id| (*id, Plan::Direct)).collect()),
            _record: PhantomData,
        }
    }

    /// Decodes one framed payload.
    ///
    /// Errors: [`Error::Framing`] / [`Error::Avro`] are properties of the input (poison);
    /// [`Error::Registry`] with `retriable` set is transient.
    pub async fn decode(&self, bytes: &[u8]) -> Result<T> {
        let (id, body) = wire::split(bytes)?;
        let plan = self.plans.read().ok().and_then(|p| p.get(&id).copied());
        let plan = match plan {
            Some(plan) => plan,
            None => self.plan_for(id).await?,
        };
        match plan {
            Plan::Direct => read_datum(body),
            Plan::Resolve(reader) => read_resolved(reader, body),
        }
    }

    async fn plan_for(&self, id: u32) -> Result<Plan> {
        let Some(registry) = &self.registry else {
            return Err(Error::Registry {
                message: format!("unknown schema id {id} and no registry configured"),
                retriable: false,
            });
        };
        let writer = registry.schema_by_id(id).await?;
        let plan = if writer.canonical_form() == T::compiled().canonical_form() {
            Plan::Direct
        } else {
            // One reader per distinct writer schema seen, kept for the life of the process
            // (bounded by the number of schema versions in the registry).
            let writer: &'static Schema = Box::leak(Box::new(writer));
            let reader = GenericDatumReader::builder(writer)
                .reader_schema(T::compiled().schema())
                .human_readable(false)
                .build()?;
            Plan::Resolve(Box::leak(Box::new(reader)))
        };
        if let Ok(mut plans) = self.plans.write() {
            plans.insert(id, plan);
        }
        Ok(plan)
    }
}
