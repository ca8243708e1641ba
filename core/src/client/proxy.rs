//! HTTP `CONNECT` proxies (RFC 9110 §9.3.6): the request, reading the answer, and which proxy
//! the environment names for a URL.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use super::error::ProxyError;
use crate::ws::Url;

/// An HTTP proxy that tunnels with `CONNECT`, and the Basic credentials to give it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    /// The proxy's host.
    pub host: String,
    /// The proxy's port.
    pub port: u16,
    /// The user name for `Proxy-Authorization: Basic`, if any.
    #[serde(default)]
    pub username: Option<String>,
    /// The password that goes with it.
    #[serde(default)]
    pub password: Option<String>,
}

impl Proxy {
    /// Parses `http://[user[:password]@]host[:port][/]` (the scheme may be left out; the port
    /// defaults to 80, or 443 for `https`, which is the port only: the tunnel is asked for in
    /// plain HTTP). User and password are percent-decoded.
    ///
    /// # Errors
    /// A short text saying what is wrong.
    pub fn parse(input: &str) -> Result<Proxy, String> {
        let input = input.trim();
        let (scheme, rest) = match input.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("http".to_string(), input),
        };
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(format!("{input}: a proxy URL is http://host:port")),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(percent_decode(user)), Some(percent_decode(pass))),
                None => (Some(percent_decode(u)), None),
            },
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("unclosed [ in the proxy host")?;
            match after.strip_prefix(':') {
                Some(p) => (host, p.parse().map_err(|_| "bad proxy port")?),
                None => (host, default_port),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| "bad proxy port")?),
                None => (hostport, default_port),
            }
        };
        if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("{input}: no proxy host"));
        }
        Ok(Proxy {
            host: host.to_string(),
            port,
            username,
            password,
        })
    }

    /// The `CONNECT` request for a tunnel to `url`'s host and port.
    pub(crate) fn connect_request(&self, url: &Url) -> Vec<u8> {
        let host = if url.host.contains(':') {
            format!("[{}]", url.host)
        } else {
            url.host.clone()
        };
        let target = format!("{host}:{}", url.port);
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(user) = &self.username {
            let pair = format!("{user}:{}", self.password.as_deref().unwrap_or(""));
            head.push_str("Proxy-Authorization: Basic ");
            head.push_str(&STANDARD.encode(pair));
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// Reads the proxy's answer from the bytes so far: `Ok(None)` until its head is complete, then
/// the length of the head (what follows belongs to the tunnel).
pub(crate) fn parse_answer(buf: &[u8], max_len: usize) -> Result<Option<usize>, ProxyError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = response.code.unwrap_or(0);
            if (200..300).contains(&status) {
                Ok(Some(len))
            } else {
                Err(ProxyError::from_status(status))
            }
        }
        Ok(httparse::Status::Partial) if buf.len() > max_len => Err(ProxyError::Malformed),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(ProxyError::Malformed),
    }
}

/// The proxy the environment names for `url`, curl's way: `https_proxy` for `wss://`,
/// `http_proxy` for `ws://` (the caller passes the variables' values, lowercase names first,
/// then uppercase), unless `no_proxy` names the host: a comma-separated list of host names,
/// domain suffixes (`example.com` and `.example.com` both match `a.example.com`), addresses,
/// optionally with `:port`, or `*` for every host.
///
/// # Errors
/// The text of [`Proxy::parse`] when the variable holds no proxy URL.
pub fn proxy_from_env(
    url: &Url,
    https_proxy: Option<&str>,
    http_proxy: Option<&str>,
    no_proxy: Option<&str>,
) -> Result<Option<Proxy>, String> {
    let chosen = if url.secure { https_proxy } else { http_proxy };
    let Some(value) = chosen.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if no_proxy.is_some_and(|list| is_excluded(url, list)) {
        return Ok(None);
    }
    Proxy::parse(value).map(Some)
}

fn is_excluded(url: &Url, list: &str) -> bool {
    let host = url.host.trim_end_matches('.').to_ascii_lowercase();
    list.split([',', ' ']).map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry.to_ascii_lowercase();
        let (name, port) = match entry.rsplit_once(':') {
            Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n, p.parse::<u16>().ok()),
            _ => (entry.as_str(), None),
        };
        if port.is_some_and(|p| p != url.port) {
            return false;
        }
        let name = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_start_matches("*.")
            .trim_start_matches('.')
            .trim_end_matches('.');
        !name.is_empty()
            && (host == name
                || host
                    .strip_suffix(name)
                    .is_some_and(|prefix| prefix.ends_with('.')))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                // Both digits were just checked.
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn parses_proxy_urls_with_credentials() {
        let p = Proxy::parse("http://al%40ice:s3cr%3At@proxy.local:3128/").unwrap();
        assert_eq!(p.host, "proxy.local");
        assert_eq!(p.port, 3128);
        assert_eq!(p.username.as_deref(), Some("al@ice"));
        assert_eq!(p.password.as_deref(), Some("s3cr:t"));
        let p = Proxy::parse("127.0.0.1:8080").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.username),
            ("127.0.0.1", 8080, None)
        );
        assert_eq!(Proxy::parse("http://[::1]").unwrap().port, 80);
        assert!(Proxy::parse("socks5://h:1").is_err());
        assert!(Proxy::parse("http://:80").is_err());
    }

    #[test]
    fn connect_request_carries_basic_credentials() {
        let p = Proxy::parse("http://aladdin:opensesame@p:1").unwrap();
        let req = String::from_utf8(p.connect_request(&url("wss://example.com/chat"))).unwrap();
        assert_eq!(
            req,
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
             Proxy-Authorization: Basic YWxhZGRpbjpvcGVuc2VzYW1l\r\n\r\n"
        );
    }

    #[test]
    fn answers_map_to_typed_errors() {
        assert_eq!(
            parse_answer(b"HTTP/1.1 200 OK\r\n\r\nxy", 8192),
            Ok(Some(19))
        );
        assert_eq!(parse_answer(b"HTTP/1.1 200 Connection", 8192), Ok(None));
        for (status, error) in [
            (407, ProxyError::AuthRequired),
            (403, ProxyError::Forbidden),
            (502, ProxyError::BadGateway),
            (500, ProxyError::Status(500)),
        ] {
            let answer = format!("HTTP/1.1 {status} No\r\n\r\n");
            assert_eq!(parse_answer(answer.as_bytes(), 8192), Err(error));
        }
        assert_eq!(
            parse_answer(b"SSH-2.0\r\n\r\n", 8192),
            Err(ProxyError::Malformed)
        );
        assert_eq!(
            parse_answer(&[b'H'; 300][..], 256),
            Err(ProxyError::Malformed)
        );
    }

    #[test]
    fn environment_picks_by_scheme_and_honours_no_proxy() {
        let env = |u: &str, no: Option<&str>| {
            proxy_from_env(&url(u), Some("http://s:1"), Some("http://p:2"), no)
                .unwrap()
                .map(|p| p.port)
        };
        assert_eq!(env("wss://a.example.com/", None), Some(1));
        assert_eq!(env("ws://a.example.com/", None), Some(2));
        assert_eq!(env("ws://a.example.com/", Some("example.com")), None);
        assert_eq!(env("ws://a.example.com/", Some(".example.com")), None);
        assert_eq!(env("ws://notexample.com/", Some("example.com")), Some(2));
        assert_eq!(env("ws://localhost:4000/", Some("localhost:5000")), Some(2));
        assert_eq!(env("ws://localhost:4000/", Some("x, localhost:4000")), None);
        assert_eq!(env("ws://127.0.0.1/", Some("*")), None);
        assert_eq!(env("ws://[::1]:9/", Some("[::1]")), None);
    }
}
