//! Splitting a request body into its records without parsing them twice.
//!
//! A body is one JSON object or a JSON array of them. [`split`] finds the top-level elements
//! of an array by scanning brackets and strings (no allocation besides the slice list, no
//! value tree), so that each element's exact bytes go to [`fleet_ingest::parse`] (which parses
//! and validates it) and, when rejected, to the dead-letter topic unchanged.

/// Why a body could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Nothing but whitespace.
    #[error("the body is empty")]
    Empty,
    /// `[]`.
    #[error("the batch is empty")]
    EmptyBatch,
    /// Brackets or strings not closed, an empty element, or text after the array.
    #[error("malformed JSON array: {0}")]
    Malformed(&'static str),
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// The records of `body`: its top-level array elements, or the body itself when it is not
/// an array. Elements are trimmed of surrounding whitespace; their syntax is left to the
/// record parser.
pub fn split(body: &[u8]) -> Result<Vec<&[u8]>, SplitError> {
    let body = trim(body);
    let Some((&b'[', inner)) = body.split_first() else {
        return if body.is_empty() {
            Err(SplitError::Empty)
        } else {
            Ok(vec![body])
        };
    };
    let mut out = Vec::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let mut start = 0;
    for (i, &b) in inner.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' if depth > 0 => depth -= 1,
            b',' if depth == 0 => {
                let el = trim(&inner[start..i]);
                if el.is_empty() {
                    return Err(SplitError::Malformed("empty element"));
                }
                out.push(el);
                start = i + 1;
            }
            b']' => {
                let el = trim(&inner[start..i]);
                if el.is_empty() {
                    if !out.is_empty() {
                        return Err(SplitError::Malformed("trailing comma"));
                    }
                } else {
                    out.push(el);
                }
                if !trim(&inner[i + 1..]).is_empty() {
                    return Err(SplitError::Malformed("text after the array"));
                }
                return if out.is_empty() {
                    Err(SplitError::EmptyBatch)
                } else {
                    Ok(out)
                };
            }
            b'}' => return Err(SplitError::Malformed("unbalanced }")),
            _ => {}
        }
    }
    Err(SplitError::Malformed("array not closed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(body: &str) -> Result<Vec<&str>, SplitError> {
        split(body.as_bytes()).map(|v| {
            v.into_iter()
                .map(|e| std::str::from_utf8(e).unwrap())
                .collect()
        })
    }

    #[test]
    fn a_single_object_is_one_record() {
        assert_eq!(strs("  {\"a\":1}\n").unwrap(), ["{\"a\":1}"]);
        // Not validated here: the record parser rejects it with the right reason.
        assert_eq!(strs("nonsense").unwrap(), ["nonsense"]);
    }

    #[test]
    fn arrays_split_at_top_level_commas_only() {
        let body = r#"[ {"a":[1,2,{"b":"x,y"}]} , {"c":"]}\",["}, {"d":{}} ]"#;
        assert_eq!(
            strs(body).unwrap(),
            [
                r#"{"a":[1,2,{"b":"x,y"}]}"#,
                r#"{"c":"]}\",["}"#,
                r#"{"d":{}}"#
            ]
        );
        assert_eq!(
            strs(r#"[{"e":"\\"},{"f":1}]"#).unwrap(),
            [r#"{"e":"\\"}"#, r#"{"f":1}"#]
        );
        // Non-object elements are records too (rejected later as invalid JSON objects).
        assert_eq!(strs("[1, \"x\", null]").unwrap(), ["1", "\"x\"", "null"]);
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert_eq!(strs(""), Err(SplitError::Empty));
        assert_eq!(strs("  \n"), Err(SplitError::Empty));
        assert_eq!(strs("[]"), Err(SplitError::EmptyBatch));
        assert_eq!(strs("[ ]"), Err(SplitError::EmptyBatch));
        for bad in [
            "[{}",
            "[{},",
            "[{},]",
            "[,{}]",
            "[{}, ,{}]",
            "[{}] x",
            "[{\"a\":\"]\"}",
            "[}]",
            "[\"unterminated]",
        ] {
            assert!(
                matches!(strs(bad), Err(SplitError::Malformed(_))),
                "{bad}: {:?}",
                strs(bad)
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"[]{},\"\\ a1:";
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let body: Vec<u8> = (0..len)
                .map(|i| alphabet[((seed >> (i % 8 * 8)) as usize + i) % alphabet.len()])
                .collect();
            if let Ok(parts) = split(&body) {
                assert!(parts.iter().all(|p| !p.is_empty()));
            }
        }
    }
}
