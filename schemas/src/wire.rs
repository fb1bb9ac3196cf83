//! The Confluent wire format: magic byte `0`, the schema id as a 4-byte big-endian integer, then
//! the Avro binary body. Pure functions, no registry.

use crate::{Error, Result};

/// Length of the Confluent header (magic byte + schema id).
pub const HEADER_LEN: usize = 5;
/// The Confluent magic byte.
pub const MAGIC: u8 = 0;

/// Splits a framed payload into its schema id and Avro body.
///
/// ```
/// let (id, body) = fleet_schemas::wire::split(&[0, 0, 0, 0, 7, 42]).unwrap();
/// assert_eq!((id, body), (7, &[42u8][..]));
/// assert!(fleet_schemas::wire::split(b"{\"json\":1}").is_err());
/// ```
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8])> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Framing(format!(
            "{} bytes, shorter than the 5-byte header",
            bytes.len()
        )));
    }
    if bytes[0] != MAGIC {
        return Err(Error::Framing(format!(
            "magic byte is {:#04x}, expected 0x00",
            bytes[0]
        )));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Appends the header for `schema_id` to `buf`.
pub fn write_header(schema_id: u32, buf: &mut Vec<u8>) {
    buf.push(MAGIC);
    buf.extend_from_slice(&schema_id.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let mut buf = Vec::new();
        write_header(0x0102_0304, &mut buf);
        buf.push(9);
        assert_eq!(buf, [0, 1, 2, 3, 4, 9]);
        assert_eq!(split(&buf).expect("framed"), (0x0102_0304, &[9u8][..]));
    }

    #[test]
    fn rejects_short_and_wrong_magic() {
        assert!(matches!(split(&[0, 0, 0]), Err(Error::Framing(_))));
        assert!(matches!(split(&[1, 0, 0, 0, 1]), Err(Error::Framing(_))));
        assert_eq!(
            split(&[0, 0, 0, 0, 1]).expect("empty body ok").1,
            &[] as &[u8]
        );
    }
}
