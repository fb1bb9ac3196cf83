//! Avro binary -> Arrow columns, straight from the bytes (pure: no IO).
//!
//! A writer schema is compiled once into a [`Plan`] (a tree of decode steps) and an Arrow schema.
//! [`Rows`] then appends one Avro datum at a time into growable column buffers and turns them
//! into a [`RecordBatch`] on demand. There is no intermediate `avro::Value` per record: the hot
//! path is varint reads and `Vec` pushes.
//!
//! Mapping (Avro -> Arrow):
//!
//! | Avro | Arrow |
//! |---|---|
//! | `boolean`, `int`, `long`, `float`, `double` | `Boolean`, `Int32`, `Int64`, `Float32`, `Float64` |
//! | `string`, `enum`, `uuid` | `Utf8` (enums as their symbol) |
//! | `bytes`, `fixed` | `Binary`, `FixedSizeBinary` |
//! | `timestamp-millis` / `-micros` | `Timestamp(ms / us, "UTC")` |
//! | `local-timestamp-millis` / `-micros` | `Timestamp(ms / us)` (no zone) |
//! | `date`, `time-millis`, `time-micros` | `Date32`, `Time32(ms)`, `Time64(us)` |
//! | `record` | `Struct` (nested) |
//! | `array`, `map` | `List`, `Map<Utf8, _>` |
//! | `["null", T]` / `[T, "null"]` | `T`, nullable |
//!
//! Other unions, `decimal` and `duration` are refused when the plan is compiled (the sink
//! dead-letters records of such a schema with the reason).
//!
//! A datum that does not decode (truncated, bad union index, invalid UTF-8, trailing bytes)
//! leaves the buffers exactly as they were: every column is truncated back to the row count.

use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema::{Name, RecordSchema, UuidSchema};
use arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, FixedSizeBinaryArray, Int32Array, Int64Array, ListArray,
    MapArray, NullArray, PrimitiveArray, StringArray, StructArray,
};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Field, FieldRef, Fields, Float32Type, Float64Type,
    Int32Type, Int64Type, Schema as ArrowSchema, SchemaRef, Time32MillisecondType,
    Time64MicrosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

/// Column added to every row: the Kafka partition the record came from.
pub const PARTITION_COLUMN: &str = "_kafka_partition";
/// Column added to every row: the record's Kafka offset.
pub const OFFSET_COLUMN: &str = "_kafka_offset";

/// Why a schema or a datum could not be converted.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AvroError {
    /// The writer schema uses a construct without an Arrow mapping here.
    #[error("unsupported schema: {0}")]
    Unsupported(String),
    /// The datum is not a valid encoding of the writer schema.
    #[error("malformed datum: {0}")]
    Malformed(&'static str),
}

type Result<T, E = AvroError> = std::result::Result<T, E>;

/// One decode step, mirroring the writer schema.
#[derive(Debug, Clone)]
enum Node {
    Null,
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    Enum(Arc<[String]>),
    Fixed(usize),
    Record(Vec<Node>),
    Array(Box<Node>),
    Map(Box<Node>),
    /// `["null", T]` (null_index 0) or `[T, "null"]` (null_index 1).
    Nullable(u8, Box<Node>),
}

/// A compiled writer schema: how to decode it and the Arrow schema it produces.
#[derive(Debug, Clone)]
pub struct Plan {
    fields: Vec<Node>,
    schema: SchemaRef,
    /// Index of the event-time field (a top-level `long`), if the record has one.
    event_time: Option<usize>,
}

impl Plan {
    /// Compiles a writer schema (a top-level record). `event_time_field` names the top-level
    /// `long`/timestamp field used to place rows in time partitions.
    pub fn compile(schema: &Schema, event_time_field: &str) -> Result<Self> {
        let Schema::Record(rec) = schema else {
            return Err(AvroError::Unsupported(
                "top-level schema is not a record".into(),
            ));
        };
        let mut names = HashMap::new();
        collect_names(schema, &mut names);
        let mut nodes = Vec::with_capacity(rec.fields.len());
        let mut fields = Vec::with_capacity(rec.fields.len() + 2);
        let mut event_time = None;
        for (i, f) in rec.fields.iter().enumerate() {
            let (node, field) = compile_field(&f.name, &f.schema, &names, 0)?;
            if f.name == event_time_field && matches!(node, Node::Long) {
                event_time = Some(i);
            }
            nodes.push(node);
            fields.push(field);
        }
        fields.push(Field::new(PARTITION_COLUMN, DataType::Int32, false));
        fields.push(Field::new(OFFSET_COLUMN, DataType::Int64, false));
        let mut metadata = HashMap::new();
        metadata.insert("avro.schema".to_owned(), schema.canonical_form());
        Ok(Self {
            fields: nodes,
            schema: Arc::new(ArrowSchema::new_with_metadata(fields, metadata)),
            event_time,
        })
    }

    /// The Arrow schema of the batches (record fields, then the Kafka coordinates).
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Whether the record has the event-time field.
    pub fn has_event_time(&self) -> bool {
        self.event_time.is_some()
    }

    /// Reads the event time (ms) out of a datum without decoding the rest.
    pub fn event_time(&self, datum: &[u8]) -> Result<Option<i64>> {
        let Some(idx) = self.event_time else {
            return Ok(None);
        };
        let mut buf = datum;
        for node in &self.fields[..idx] {
            skip(node, &mut buf)?;
        }
        read_long(&mut buf).map(Some)
    }

    /// Empty column buffers for this plan.
    pub fn rows(self: &Arc<Self>) -> Rows {
        let cols = self
            .fields
            .iter()
            .zip(self.schema.fields().iter())
            .map(|(n, f)| Col::new(n, f.data_type()))
            .collect();
        Rows {
            plan: self.clone(),
            cols,
            partitions: Vec::new(),
            offsets: Vec::new(),
        }
    }
}

fn collect_names(schema: &Schema, names: &mut HashMap<Name, Schema>) {
    match schema {
        Schema::Record(r) => {
            names.insert(r.name.clone(), schema.clone());
            for f in &r.fields {
                collect_names(&f.schema, names);
            }
        }
        Schema::Enum(e) => {
            names.insert(e.name.clone(), schema.clone());
        }
        Schema::Fixed(f) => {
            names.insert(f.name.clone(), schema.clone());
        }
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        _ => {}
    }
}

fn utc() -> Option<Arc<str>> {
    Some(Arc::from("UTC"))
}

fn compile_field(
    name: &str,
    schema: &Schema,
    names: &HashMap<Name, Schema>,
    depth: usize,
) -> Result<(Node, Field)> {
    if depth > 32 {
        return Err(AvroError::Unsupported(format!(
            "{name}: nesting deeper than 32 (recursive type?)"
        )));
    }
    let (node, ty) = match schema {
        Schema::Null => (Node::Null, DataType::Null),
        Schema::Boolean => (Node::Bool, DataType::Boolean),
        Schema::Int => (Node::Int, DataType::Int32),
        Schema::Long => (Node::Long, DataType::Int64),
        Schema::Float => (Node::Float, DataType::Float32),
        Schema::Double => (Node::Double, DataType::Float64),
        Schema::Bytes => (Node::Bytes, DataType::Binary),
        Schema::String | Schema::Uuid(UuidSchema::String) => (Node::Str, DataType::Utf8),
        Schema::Uuid(UuidSchema::Fixed(_)) => (Node::Fixed(16), DataType::FixedSizeBinary(16)),
        Schema::Uuid(UuidSchema::Bytes) => (Node::Bytes, DataType::Binary),
        Schema::Date => (Node::Int, DataType::Date32),
        Schema::TimeMillis => (Node::Int, DataType::Time32(TimeUnit::Millisecond)),
        Schema::TimeMicros => (Node::Long, DataType::Time64(TimeUnit::Microsecond)),
        Schema::TimestampMillis => (
            Node::Long,
            DataType::Timestamp(TimeUnit::Millisecond, utc()),
        ),
        Schema::TimestampMicros => (
            Node::Long,
            DataType::Timestamp(TimeUnit::Microsecond, utc()),
        ),
        Schema::LocalTimestampMillis => {
            (Node::Long, DataType::Timestamp(TimeUnit::Millisecond, None))
        }
        Schema::LocalTimestampMicros => {
            (Node::Long, DataType::Timestamp(TimeUnit::Microsecond, None))
        }
        Schema::Enum(e) => (Node::Enum(e.symbols.clone().into()), DataType::Utf8),
        Schema::Fixed(f) => {
            let size = i32::try_from(f.size)
                .map_err(|_| AvroError::Unsupported(format!("{name}: fixed size too large")))?;
            (Node::Fixed(f.size), DataType::FixedSizeBinary(size))
        }
        Schema::Record(RecordSchema { fields, .. }) => {
            let mut nodes = Vec::with_capacity(fields.len());
            let mut arrow_fields = Vec::with_capacity(fields.len());
            for f in fields {
                let (n, af) = compile_field(&f.name, &f.schema, names, depth + 1)?;
                nodes.push(n);
                arrow_fields.push(af);
            }
            (
                Node::Record(nodes),
                DataType::Struct(Fields::from(arrow_fields)),
            )
        }
        Schema::Array(a) => {
            let (n, f) = compile_field("item", &a.items, names, depth + 1)?;
            (Node::Array(Box::new(n)), DataType::List(Arc::new(f)))
        }
        Schema::Map(m) => {
            let (n, vf) = compile_field("value", &m.types, names, depth + 1)?;
            let entries = Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![
                    Field::new("key", DataType::Utf8, false),
                    vf,
                ])),
                false,
            );
            (
                Node::Map(Box::new(n)),
                DataType::Map(Arc::new(entries), false),
            )
        }
        Schema::Union(u) => {
            let v = u.variants();
            let null_index = match v {
                [Schema::Null, other] if !matches!(other, Schema::Null) => Some((0u8, other)),
                [other, Schema::Null] if !matches!(other, Schema::Null) => Some((1u8, other)),
                _ => None,
            };
            let Some((idx, inner)) = null_index else {
                return Err(AvroError::Unsupported(format!(
                    "{name}: only unions of null and one type map to Arrow"
                )));
            };
            let (n, f) = compile_field(name, inner, names, depth + 1)?;
            return Ok((Node::Nullable(idx, Box::new(n)), f.with_nullable(true)));
        }
        Schema::Ref { name: r } => {
            let target = names
                .get(r)
                .ok_or_else(|| AvroError::Unsupported(format!("{name}: unknown type {r:?}")))?;
            return compile_field(name, target, names, depth + 1);
        }
        other => {
            return Err(AvroError::Unsupported(format!(
                "{name}: type {:?} has no Arrow mapping here",
                apache_avro::schema::SchemaKind::from(other)
            )));
        }
    };
    let nullable = matches!(node, Node::Null);
    Ok((node, Field::new(name, ty, nullable)))
}

// ---- reading the Avro binary encoding ----

#[inline]
fn read_long(buf: &mut &[u8]) -> Result<i64> {
    let mut value: u64 = 0;
    let mut shift = 0u32;
    loop {
        let (&b, rest) = buf
            .split_first()
            .ok_or(AvroError::Malformed("truncated varint"))?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 63 {
            return Err(AvroError::Malformed("varint longer than 10 bytes"));
        }
    }
    Ok(((value >> 1) as i64) ^ -((value & 1) as i64))
}

#[inline]
fn read_int(buf: &mut &[u8]) -> Result<i32> {
    i32::try_from(read_long(buf)?).map_err(|_| AvroError::Malformed("int out of range"))
}

#[inline]
fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if buf.len() < n {
        return Err(AvroError::Malformed("truncated value"));
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

#[inline]
fn read_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = read_long(buf)?;
    let len = usize::try_from(len).map_err(|_| AvroError::Malformed("negative length"))?;
    take(buf, len)
}

/// Block count of an array/map block; a negative count is followed by the block's byte size.
#[inline]
fn read_block_len(buf: &mut &[u8]) -> Result<usize> {
    let n = read_long(buf)?;
    if n < 0 {
        read_long(buf)?;
    }
    usize::try_from(n.unsigned_abs()).map_err(|_| AvroError::Malformed("block too long"))
}

fn skip(node: &Node, buf: &mut &[u8]) -> Result<()> {
    match node {
        Node::Null => {}
        Node::Bool => {
            take(buf, 1)?;
        }
        Node::Int | Node::Long | Node::Enum(_) => {
            read_long(buf)?;
        }
        Node::Float => {
            take(buf, 4)?;
        }
        Node::Double => {
            take(buf, 8)?;
        }
        Node::Bytes | Node::Str => {
            read_bytes(buf)?;
        }
        Node::Fixed(n) => {
            take(buf, *n)?;
        }
        Node::Record(fields) => {
            for f in fields {
                skip(f, buf)?;
            }
        }
        Node::Array(item) => loop {
            let n = read_block_len(buf)?;
            if n == 0 {
                break;
            }
            for _ in 0..n {
                skip(item, buf)?;
            }
        },
        Node::Map(value) => loop {
            let n = read_block_len(buf)?;
            if n == 0 {
                break;
            }
            for _ in 0..n {
                read_bytes(buf)?;
                skip(value, buf)?;
            }
        },
        Node::Nullable(null_index, inner) => {
            let idx = read_long(buf)?;
            if idx != i64::from(*null_index) {
                if idx != i64::from(1 - *null_index) {
                    return Err(AvroError::Malformed("union index out of range"));
                }
                skip(inner, buf)?;
            }
        }
    }
    Ok(())
}

// ---- column buffers ----

#[derive(Debug)]
enum Col {
    Null(usize),
    Bool(Vec<bool>, Vec<bool>),
    I32(Vec<i32>, Vec<bool>, DataType),
    I64(Vec<i64>, Vec<bool>, DataType),
    F32(Vec<f32>, Vec<bool>),
    F64(Vec<f64>, Vec<bool>),
    /// offsets, data, validity, utf8
    Bytes(Vec<i32>, Vec<u8>, Vec<bool>, bool),
    Fixed(usize, Vec<u8>, Vec<bool>),
    Struct(Fields, Vec<Col>, Vec<bool>),
    List(FieldRef, Vec<i32>, Box<Col>, Vec<bool>),
    /// entries field, offsets, keys, values, validity
    Map(FieldRef, Vec<i32>, Box<Col>, Box<Col>, Vec<bool>),
}

impl Col {
    fn new(node: &Node, ty: &DataType) -> Self {
        match (node, ty) {
            (Node::Nullable(_, inner), _) => Col::new(inner, ty),
            (Node::Null, _) => Col::Null(0),
            (Node::Bool, _) => Col::Bool(Vec::new(), Vec::new()),
            (Node::Int, t) => Col::I32(Vec::new(), Vec::new(), t.clone()),
            (Node::Long, t) => Col::I64(Vec::new(), Vec::new(), t.clone()),
            (Node::Float, _) => Col::F32(Vec::new(), Vec::new()),
            (Node::Double, _) => Col::F64(Vec::new(), Vec::new()),
            (Node::Bytes, _) => Col::Bytes(vec![0], Vec::new(), Vec::new(), false),
            (Node::Str | Node::Enum(_), _) => Col::Bytes(vec![0], Vec::new(), Vec::new(), true),
            (Node::Fixed(n), _) => Col::Fixed(*n, Vec::new(), Vec::new()),
            (Node::Record(nodes), DataType::Struct(fields)) => Col::Struct(
                fields.clone(),
                nodes
                    .iter()
                    .zip(fields.iter())
                    .map(|(n, f)| Col::new(n, f.data_type()))
                    .collect(),
                Vec::new(),
            ),
            (Node::Array(item), DataType::List(f)) => Col::List(
                f.clone(),
                vec![0],
                Box::new(Col::new(item, f.data_type())),
                Vec::new(),
            ),
            (Node::Map(value), DataType::Map(entries, _)) => {
                let DataType::Struct(kv) = entries.data_type() else {
                    unreachable!("map entries are a struct by construction")
                };
                Col::Map(
                    entries.clone(),
                    vec![0],
                    Box::new(Col::Bytes(vec![0], Vec::new(), Vec::new(), true)),
                    Box::new(Col::new(value, kv[1].data_type())),
                    Vec::new(),
                )
            }
            _ => unreachable!("node and data type are compiled together"),
        }
    }

    fn len(&self) -> usize {
        match self {
            Col::Null(n) => *n,
            Col::Bool(_, v)
            | Col::I32(_, v, _)
            | Col::I64(_, v, _)
            | Col::F32(_, v)
            | Col::F64(_, v)
            | Col::Bytes(_, _, v, _)
            | Col::Fixed(_, _, v)
            | Col::Struct(_, _, v)
            | Col::List(_, _, _, v)
            | Col::Map(_, _, _, _, v) => v.len(),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Col::Null(n) => *n = (*n).min(len),
            Col::Bool(x, v) => {
                x.truncate(len);
                v.truncate(len);
            }
            Col::I32(x, v, _) => {
                x.truncate(len);
                v.truncate(len);
            }
            Col::I64(x, v, _) => {
                x.truncate(len);
                v.truncate(len);
            }
            Col::F32(x, v) => {
                x.truncate(len);
                v.truncate(len);
            }
            Col::F64(x, v) => {
                x.truncate(len);
                v.truncate(len);
            }
            Col::Bytes(o, d, v, _) => {
                o.truncate(len + 1);
                d.truncate(o[len] as usize);
                v.truncate(len);
            }
            Col::Fixed(n, d, v) => {
                d.truncate(len * *n);
                v.truncate(len);
            }
            Col::Struct(_, children, v) => {
                children.iter_mut().for_each(|c| c.truncate(len));
                v.truncate(len);
            }
            Col::List(_, o, child, v) => {
                o.truncate(len + 1);
                child.truncate(o[len] as usize);
                v.truncate(len);
            }
            Col::Map(_, o, k, val, v) => {
                o.truncate(len + 1);
                k.truncate(o[len] as usize);
                val.truncate(o[len] as usize);
                v.truncate(len);
            }
        }
    }

    fn push_null(&mut self) {
        match self {
            Col::Null(n) => *n += 1,
            Col::Bool(x, v) => {
                x.push(false);
                v.push(false);
            }
            Col::I32(x, v, _) => {
                x.push(0);
                v.push(false);
            }
            Col::I64(x, v, _) => {
                x.push(0);
                v.push(false);
            }
            Col::F32(x, v) => {
                x.push(0.0);
                v.push(false);
            }
            Col::F64(x, v) => {
                x.push(0.0);
                v.push(false);
            }
            Col::Bytes(o, d, v, _) => {
                o.push(d.len() as i32);
                v.push(false);
            }
            Col::Fixed(n, d, v) => {
                d.resize(d.len() + *n, 0);
                v.push(false);
            }
            Col::Struct(_, children, v) => {
                children.iter_mut().for_each(Col::push_null);
                v.push(false);
            }
            Col::List(_, o, _, v) | Col::Map(_, o, _, _, v) => {
                let last = *o.last().unwrap_or(&0);
                o.push(last);
                v.push(false);
            }
        }
    }

    /// Decodes one value of `node` into this column.
    fn read(&mut self, node: &Node, buf: &mut &[u8]) -> Result<()> {
        match (node, self) {
            (Node::Nullable(null_index, inner), col) => {
                let idx = read_long(buf)?;
                if idx == i64::from(*null_index) {
                    col.push_null();
                } else if idx == i64::from(1 - *null_index) {
                    col.read(inner, buf)?;
                } else {
                    return Err(AvroError::Malformed("union index out of range"));
                }
            }
            (Node::Null, Col::Null(n)) => *n += 1,
            (Node::Bool, Col::Bool(x, v)) => {
                let b = take(buf, 1)?[0];
                if b > 1 {
                    return Err(AvroError::Malformed("boolean byte not 0 or 1"));
                }
                x.push(b == 1);
                v.push(true);
            }
            (Node::Int, Col::I32(x, v, _)) => {
                x.push(read_int(buf)?);
                v.push(true);
            }
            (Node::Long, Col::I64(x, v, _)) => {
                x.push(read_long(buf)?);
                v.push(true);
            }
            (Node::Float, Col::F32(x, v)) => {
                let b = take(buf, 4)?;
                x.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                v.push(true);
            }
            (Node::Double, Col::F64(x, v)) => {
                let b = take(buf, 8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                x.push(f64::from_le_bytes(a));
                v.push(true);
            }
            (Node::Bytes | Node::Str, Col::Bytes(o, d, v, utf8)) => {
                let b = read_bytes(buf)?;
                if *utf8 && std::str::from_utf8(b).is_err() {
                    return Err(AvroError::Malformed("string is not UTF-8"));
                }
                d.extend_from_slice(b);
                o.push(offset_i32(d.len())?);
                v.push(true);
            }
            (Node::Enum(symbols), Col::Bytes(o, d, v, _)) => {
                let i = read_long(buf)?;
                let s = usize::try_from(i)
                    .ok()
                    .and_then(|i| symbols.get(i))
                    .ok_or(AvroError::Malformed("enum index out of range"))?;
                d.extend_from_slice(s.as_bytes());
                o.push(offset_i32(d.len())?);
                v.push(true);
            }
            (Node::Fixed(n), Col::Fixed(_, d, v)) => {
                d.extend_from_slice(take(buf, *n)?);
                v.push(true);
            }
            (Node::Record(nodes), Col::Struct(_, children, v)) => {
                for (n, c) in nodes.iter().zip(children.iter_mut()) {
                    c.read(n, buf)?;
                }
                v.push(true);
            }
            (Node::Array(item), Col::List(_, o, child, v)) => {
                loop {
                    let n = read_block_len(buf)?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        child.read(item, buf)?;
                    }
                }
                o.push(offset_i32(child.len())?);
                v.push(true);
            }
            (Node::Map(value), Col::Map(_, o, keys, vals, v)) => {
                loop {
                    let n = read_block_len(buf)?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        keys.read(&Node::Str, buf)?;
                        vals.read(value, buf)?;
                    }
                }
                o.push(offset_i32(keys.len())?);
                v.push(true);
            }
            _ => unreachable!("node and column are built together"),
        }
        Ok(())
    }

    /// Moves the buffered values out into an Arrow array (the column is empty afterwards).
    fn finish(&mut self) -> ArrayRef {
        fn nulls(v: &mut Vec<bool>) -> Option<NullBuffer> {
            let v = std::mem::take(v);
            if v.iter().all(|b| *b) {
                None
            } else {
                Some(NullBuffer::new(BooleanBuffer::from(v)))
            }
        }
        fn prim<T: ArrowPrimitiveType>(
            x: &mut Vec<T::Native>,
            v: &mut Vec<bool>,
            ty: &DataType,
        ) -> ArrayRef {
            let cap = x.capacity();
            let values = std::mem::replace(x, Vec::with_capacity(cap));
            Arc::new(
                PrimitiveArray::<T>::new(ScalarBuffer::from(values), nulls(v))
                    .with_data_type(ty.clone()),
            )
        }
        fn offsets(o: &mut Vec<i32>) -> OffsetBuffer<i32> {
            let taken = std::mem::replace(o, vec![0]);
            OffsetBuffer::new(ScalarBuffer::from(taken))
        }
        match self {
            Col::Null(n) => Arc::new(NullArray::new(std::mem::take(n))),
            Col::Bool(x, v) => {
                let values = BooleanBuffer::from(std::mem::take(x));
                Arc::new(BooleanArray::new(values, nulls(v)))
            }
            Col::I32(x, v, ty) => match ty {
                DataType::Date32 => prim::<Date32Type>(x, v, ty),
                DataType::Time32(_) => prim::<Time32MillisecondType>(x, v, ty),
                _ => prim::<Int32Type>(x, v, ty),
            },
            Col::I64(x, v, ty) => match ty {
                DataType::Timestamp(TimeUnit::Millisecond, _) => {
                    prim::<TimestampMillisecondType>(x, v, ty)
                }
                DataType::Timestamp(_, _) => prim::<TimestampMicrosecondType>(x, v, ty),
                DataType::Time64(_) => prim::<Time64MicrosecondType>(x, v, ty),
                _ => prim::<Int64Type>(x, v, ty),
            },
            Col::F32(x, v) => prim::<Float32Type>(x, v, &DataType::Float32),
            Col::F64(x, v) => prim::<Float64Type>(x, v, &DataType::Float64),
            Col::Bytes(o, d, v, utf8) => {
                let offs = offsets(o);
                let cap = d.capacity();
                let data = Buffer::from_vec(std::mem::replace(d, Vec::with_capacity(cap)));
                let n = nulls(v);
                if *utf8 {
                    // Every value was checked to be UTF-8 when it was appended.
                    Arc::new(
                        StringArray::try_new(offs, data, n)
                            .expect("values were validated as UTF-8 on append"),
                    )
                } else {
                    Arc::new(BinaryArray::new(offs, data, n))
                }
            }
            Col::Fixed(size, d, v) => {
                let n = nulls(v);
                let data = Buffer::from_vec(std::mem::take(d));
                Arc::new(FixedSizeBinaryArray::new(*size as i32, data, n))
            }
            Col::Struct(fields, children, v) => {
                let arrays: Vec<ArrayRef> = children.iter_mut().map(Col::finish).collect();
                let n = nulls(v);
                if fields.is_empty() {
                    Arc::new(StructArray::new_empty_fields(
                        n.as_ref().map_or(0, NullBuffer::len),
                        n,
                    ))
                } else {
                    Arc::new(StructArray::new(fields.clone(), arrays, n))
                }
            }
            Col::List(f, o, child, v) => {
                let offs = offsets(o);
                let values = child.finish();
                Arc::new(ListArray::new(f.clone(), offs, values, nulls(v)))
            }
            Col::Map(entries, o, keys, vals, v) => {
                let offs = offsets(o);
                let DataType::Struct(kv) = entries.data_type() else {
                    unreachable!("map entries are a struct by construction")
                };
                let entries_arr =
                    StructArray::new(kv.clone(), vec![keys.finish(), vals.finish()], None);
                Arc::new(MapArray::new(
                    entries.clone(),
                    offs,
                    entries_arr,
                    nulls(v),
                    false,
                ))
            }
        }
    }
}

#[inline]
fn offset_i32(n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| AvroError::Malformed("column larger than 2 GiB"))
}

/// Growable columns for the rows of one output file.
#[derive(Debug)]
pub struct Rows {
    plan: Arc<Plan>,
    cols: Vec<Col>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
}

impl Rows {
    /// Rows buffered.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// No rows buffered.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The plan these rows follow.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Appends one Avro datum (without the wire header). On error nothing is appended.
    pub fn append(&mut self, datum: &[u8], partition: i32, offset: i64) -> Result<()> {
        let row = self.offsets.len();
        let mut buf = datum;
        let mut result = Ok(());
        for (node, col) in self.plan.fields.iter().zip(self.cols.iter_mut()) {
            if let Err(e) = col.read(node, &mut buf) {
                result = Err(e);
                break;
            }
        }
        if result.is_ok() && !buf.is_empty() {
            result = Err(AvroError::Malformed("trailing bytes after the record"));
        }
        if result.is_err() {
            self.cols.iter_mut().for_each(|c| c.truncate(row));
            return result;
        }
        self.partitions.push(partition);
        self.offsets.push(offset);
        Ok(())
    }

    /// Moves the buffered rows into a record batch; the buffers are empty afterwards.
    pub fn finish(&mut self) -> RecordBatch {
        let rows = self.offsets.len();
        let mut arrays: Vec<ArrayRef> = self.cols.iter_mut().map(Col::finish).collect();
        arrays.push(Arc::new(Int32Array::from(std::mem::take(
            &mut self.partitions,
        ))));
        arrays.push(Arc::new(Int64Array::from(std::mem::take(
            &mut self.offsets,
        ))));
        RecordBatch::try_new_with_options(
            self.plan.schema.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .expect("columns are built to the plan's schema")
    }
}

#[cfg(test)]
mod tests;
