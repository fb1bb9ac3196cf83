//! A minimal SMTP client (RFC 5321) for the EMAIL channel: one connection per message,
//! `EHLO`, `MAIL FROM`, `RCPT TO`, `DATA` (dot-stuffed, CRLF), `QUIT`.
//!
//! Plain TCP without authentication: meant for a local relay (postfix, an MTA sidecar, a
//! provider's SMTP relay reachable on a private network) that handles TLS and onward delivery.
//! Replies 4xx and connection errors are transient (retried by the caller); 5xx are permanent.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmtpError {
    /// Worth retrying: 4xx reply, connection or timeout.
    #[error("transient: {0}")]
    Transient(String),
    /// Not worth retrying: 5xx reply or a malformed exchange.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// One e-mail.
#[derive(Debug, Clone)]
pub struct Mail<'a> {
    /// Envelope and header sender.
    pub from: &'a str,
    /// Envelope and header recipient.
    pub to: &'a str,
    /// Subject (UTF-8; encoded per RFC 2047 when not ASCII).
    pub subject: &'a str,
    /// Plain-text body (UTF-8).
    pub body: &'a str,
    /// Unique id, used as the `Message-ID` (receivers can de-duplicate re-sent messages).
    pub id: &'a str,
}

/// Sends `mail` through the relay at `addr` (`host:port`) within `timeout`.
pub async fn send(addr: &str, mail: &Mail<'_>, timeout: Duration) -> Result<(), SmtpError> {
    match tokio::time::timeout(timeout, exchange(addr, mail)).await {
        Ok(r) => r,
        Err(_) => Err(SmtpError::Transient(format!(
            "no answer from {addr} within {timeout:?}"
        ))),
    }
}

/// An envelope address as given, refused (permanently) when it could break out of its
/// command or header: control characters (CR, LF, ...), angle brackets, or nothing at all.
fn checked_address(a: &str) -> Result<&str, SmtpError> {
    if a.is_empty() || a.chars().any(|c| c.is_control() || c == '<' || c == '>') {
        return Err(SmtpError::Permanent(format!(
            "refusing the address {a:?}: empty, or control characters or angle brackets"
        )));
    }
    Ok(a)
}

async fn exchange(addr: &str, mail: &Mail<'_>) -> Result<(), SmtpError> {
    checked_address(mail.from)?;
    checked_address(mail.to)?;
    checked_address(mail.id)?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| SmtpError::Transient(format!("connecting to {addr}: {e}")))?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    expect(&mut read, "greeting").await?;
    for (cmd, what) in [
        ("EHLO fleetstream\r\n".to_owned(), "EHLO"),
        (format!("MAIL FROM:<{}>\r\n", mail.from), "MAIL FROM"),
        (format!("RCPT TO:<{}>\r\n", mail.to), "RCPT TO"),
        ("DATA\r\n".to_owned(), "DATA"),
    ] {
        send_line(&mut write, &cmd).await?;
        expect(&mut read, what).await?;
    }
    send_line(&mut write, &message(mail)).await?;
    expect(&mut read, "end of data").await?;
    // The message is accepted; a failing QUIT changes nothing.
    let _ = write.write_all(b"QUIT\r\n").await;
    Ok(())
}

async fn send_line(w: &mut tokio::net::tcp::OwnedWriteHalf, s: &str) -> Result<(), SmtpError> {
    w.write_all(s.as_bytes())
        .await
        .map_err(|e| SmtpError::Transient(format!("writing: {e}")))
}

/// Reads one (possibly multi-line) reply; `Ok` for 2xx and 3xx.
async fn expect(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    what: &str,
) -> Result<(), SmtpError> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = r
            .read_line(&mut line)
            .await
            .map_err(|e| SmtpError::Transient(format!("reading the {what} reply: {e}")))?;
        if n == 0 {
            return Err(SmtpError::Transient(format!(
                "connection closed before the {what} reply"
            )));
        }
        // "250-..." continues, "250 ..." (or "250") ends the reply.
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            break;
        }
    }
    let reply = line.trim_end();
    match reply.as_bytes().first() {
        Some(b'2' | b'3') => Ok(()),
        Some(b'4') => Err(SmtpError::Transient(format!("{what}: {reply}"))),
        _ => Err(SmtpError::Permanent(format!("{what}: {reply}"))),
    }
}

/// Headers and dot-stuffed body, terminated by `CRLF.CRLF`.
fn message(m: &Mail<'_>) -> String {
    let subject = if m.subject.is_ascii() {
        m.subject.replace(['\r', '\n'], " ")
    } else {
        format!("=?UTF-8?B?{}?=", base64(m.subject.as_bytes()))
    };
    let mut s = format!(
        "From: <{}>\r\nTo: <{}>\r\nSubject: {subject}\r\nMessage-ID: <{}@fleetstream>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n",
        m.from, m.to, m.id
    );
    // Every line ending the text may carry (CRLF, bare LF, bare CR) becomes one CRLF: a bare CR
    // passed through could end the DATA early at a lenient server (SMTP smuggling).
    let body = m.body.replace("\r\n", "\n").replace('\r', "\n");
    for line in body.split('\n') {
        if line.starts_with('.') {
            s.push('.');
        }
        s.push_str(line);
        s.push_str("\r\n");
    }
    if body.ends_with('\n') {
        // The text's own final line break is already the CRLF before the terminator.
        s.truncate(s.len() - 2);
    }
    s.push_str(".\r\n");
    s
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn message_is_dot_stuffed_and_encodes_utf8_subjects() {
        let m = Mail {
            from: "a@x",
            to: "b@y",
            subject: "cargo 9.5 °C",
            body: "line one\n.starts with a dot\n..two",
            id: "id-1",
        };
        let s = message(&m);
        assert!(
            s.contains("Subject: =?UTF-8?B?Y2FyZ28gOS41IMKwQw==?=\r\n"),
            "{s}"
        );
        assert!(
            s.contains("\r\n\r\nline one\r\n..starts with a dot\r\n...two\r\n.\r\n"),
            "{s}"
        );
        assert!(s.contains("Message-ID: <id-1@fleetstream>"));
        let plain = message(&Mail {
            subject: "a\r\nBcc: evil@z",
            ..m
        });
        assert!(
            plain.contains("Subject: a  Bcc: evil@z\r\n"),
            "no header injection: {plain}"
        );
    }

    /// SMTP smuggling: a bare CR (or LF) in text a device or customer controls must never
    /// reach the wire as anything but part of a CRLF, and no line may end the DATA early.
    #[test]
    fn bare_line_endings_in_the_body_become_crlf_and_cannot_end_the_data() {
        let m = Mail {
            from: "a@x",
            to: "b@y",
            subject: "s",
            body: "x\r.\r\nMAIL FROM:<evil@z>\r\ny\n.\rz\r\n",
            id: "id-2",
        };
        let s = message(&m);
        let data = &s[s.find("\r\n\r\n").unwrap() + 4..];
        for (i, b) in data.bytes().enumerate() {
            if b == b'\r' {
                assert_eq!(
                    data.as_bytes().get(i + 1),
                    Some(&b'\n'),
                    "bare CR at {i}: {data:?}"
                );
            }
            if b == b'\n' {
                assert!(
                    i > 0 && data.as_bytes()[i - 1] == b'\r',
                    "bare LF at {i}: {data:?}"
                );
            }
        }
        assert_eq!(
            data.matches("\r\n.\r\n").count(),
            1,
            "only the terminator is a lone dot line: {data:?}"
        );
        assert!(data.ends_with("\r\n.\r\n"), "{data:?}");
        assert_eq!(
            data,
            "x\r\n..\r\nMAIL FROM:<evil@z>\r\ny\r\n..\r\nz\r\n.\r\n"
        );
    }

    #[test]
    fn envelope_addresses_cannot_inject_commands() {
        assert!(checked_address("ops@example.com").is_ok());
        for bad in [
            "a@x\r\nRCPT TO:<evil@z>",
            "a@x>",
            "<a@x",
            "",
            "a\n@x",
            "a\r@x",
        ] {
            assert!(
                matches!(checked_address(bad), Err(SmtpError::Permanent(_))),
                "{bad:?} refused"
            );
        }
    }
}
