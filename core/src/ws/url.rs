//! `ws://` and `wss://` URLs, parsed just far enough to open a connection.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A WebSocket URL: scheme, host, port and request target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Url {
    /// `wss` (TLS) rather than `ws`.
    pub secure: bool,
    /// The host name or address, without brackets for IPv6.
    pub host: String,
    /// The port, defaulted from the scheme (80 or 443).
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub target: String,
}

impl Url {
    /// Parses `ws://host[:port][/path][?query]` or the `wss://` form. `http` and `https` are
    /// taken as `ws` and `wss`. A fragment is dropped (RFC 6455 §3).
    ///
    /// # Errors
    /// [`UrlError`] when the scheme is not one of those, the host is empty, the port is not a
    /// number, or the URL holds a space or a control character (which would end up in the
    /// request line and the `Host` header).
    pub fn parse(input: &str) -> Result<Url, UrlError> {
        if input.bytes().any(is_forbidden_byte) {
            return Err(UrlError::InvalidCharacter);
        }
        let (scheme, rest) = input.split_once("://").ok_or(UrlError::Scheme)?;
        let secure = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            _ => return Err(UrlError::Scheme),
        };
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        let default_port = if secure { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or(UrlError::Host)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| UrlError::Port)?,
                None if after.is_empty() => default_port,
                None => return Err(UrlError::Host),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| UrlError::Port)?),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(UrlError::Host);
        }
        let url = Url {
            secure,
            host,
            port,
            target,
        };
        url.validate()?;
        Ok(url)
    }

    /// Checks a URL built field by field (or read from a log) as [`Url::parse`] checks its
    /// input: a non-empty host, a target starting with `/`, and no space or control character
    /// in either, since both are written into the request head verbatim.
    ///
    /// # Errors
    /// [`UrlError::Host`] or [`UrlError::InvalidCharacter`].
    pub fn validate(&self) -> Result<(), UrlError> {
        if self.host.is_empty() || !self.target.starts_with('/') {
            return Err(UrlError::Host);
        }
        if self
            .host
            .bytes()
            .chain(self.target.bytes())
            .any(is_forbidden_byte)
        {
            return Err(UrlError::InvalidCharacter);
        }
        Ok(())
    }

    /// The value of the `Host` header: the host, and the port unless it is the scheme's default.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.secure { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.authority(), self.target)
    }
}

/// Bytes that may not appear in a request line or a header value unescaped: space and the
/// controls (RFC 9112 §3.2 and §5.5; RFC 3986 has no place for them in a URI).
fn is_forbidden_byte(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

/// Why a URL could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlError {
    /// The scheme is missing or not ws, wss, http or https.
    Scheme,
    /// The host is empty or badly bracketed.
    Host,
    /// The port is not a number from 0 to 65535.
    Port,
    /// A space or a control character (CR and LF among them): sent as is, it would split the
    /// request line or inject headers.
    InvalidCharacter,
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlError::Scheme => "url scheme must be ws, wss, http or https",
            UrlError::Host => "url has no valid host",
            UrlError::Port => "url port is not a number from 0 to 65535",
            UrlError::InvalidCharacter => {
                "url contains a space or control character; percent-encode it"
            }
        })
    }
}

impl std::error::Error for UrlError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let u = Url::parse("ws://127.0.0.1:9001/runCase?case=1&agent=spool").unwrap();
        assert_eq!(
            (u.secure, u.host.as_str(), u.port),
            (false, "127.0.0.1", 9001)
        );
        assert_eq!(u.target, "/runCase?case=1&agent=spool");
        let u = Url::parse("wss://example.com").unwrap();
        assert_eq!(
            (u.port, u.target.as_str(), u.authority()),
            (443, "/", "example.com".into())
        );
        let u = Url::parse("ws://[::1]:80?x#frag").unwrap();
        assert_eq!((u.host.as_str(), u.target.as_str()), ("::1", "/?x"));
        assert_eq!(u.to_string(), "ws://[::1]/?x");
        assert_eq!(Url::parse("ftp://x"), Err(UrlError::Scheme));
        assert_eq!(Url::parse("ws://:80/"), Err(UrlError::Host));
        assert_eq!(Url::parse("ws://h:99999/"), Err(UrlError::Port));
    }

    #[test]
    fn spaces_and_control_characters_are_refused() {
        for bad in [
            "ws://h/path\r\nX-Injected: 1",
            "ws://h\r\nX-Injected: 1/",
            "ws://h/a b",
            "ws://h /",
            "ws://h/\n",
            "ws://h/\0",
            "ws://h/\x7f",
            "ws://h/\t",
            "ws://h\r:80/",
            "ws://h/?q=a b",
        ] {
            let error = Url::parse(bad).unwrap_err();
            assert_eq!(error, UrlError::InvalidCharacter, "{bad:?}");
            assert!(error.to_string().contains("control character"), "{error}");
        }
        assert!(
            Url::parse("ws://h/a%20b?q=%0D%0A").is_ok(),
            "escaped is fine"
        );
        let mut url = Url::parse("ws://h/").unwrap();
        url.target = "/x HTTP/1.1\r\nHost: evil".into();
        assert_eq!(url.validate(), Err(UrlError::InvalidCharacter));
    }
}
