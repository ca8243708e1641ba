//! The opening handshake (RFC 6455 §4): the server reads an upgrade request and writes the 101
//! answer or an error page; the client writes its request and checks the answer. HTTP heads are
//! parsed with `httparse`; this file owns what a WebSocket handshake requires of them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use super::config::{Config, is_token_byte};
use super::deflate::{self, DeflateParams};
use super::error::HandshakeError;
use super::event::Request;
use super::transmit::Transmit;
use super::url::Url;

/// The GUID of RFC 6455 §1.3, appended to the key before hashing.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// How many headers a head may carry; more is answered 431 like an over-long head.
const MAX_HEADERS: usize = 64;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (§4.2.2): base64 of SHA-1 of key + GUID.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    STANDARD.encode(sha.digest().bytes())
}

/// A complete request head.
pub(crate) enum Parsed {
    /// A valid WebSocket upgrade.
    Upgrade(ServerOffer),
    /// A plain GET (only with `Config::plain_http`).
    Plain(Request),
}

/// What the server needs after parsing a valid request.
pub(crate) struct ServerOffer {
    pub request: Request,
    pub key: String,
    pub deflate: Option<(DeflateParams, String)>,
}

/// The length of a complete head, `None` while it is incomplete, and the size limit checked
/// either way: before the blank line arrives too, so a peer cannot make us buffer past it.
fn head_length(
    parsed: httparse::Result<usize>,
    buffered: usize,
    config: &Config,
) -> Result<Option<usize>, HandshakeError> {
    let limit = config.limits.max_handshake_len;
    match parsed {
        Ok(httparse::Status::Complete(n)) if n <= limit => Ok(Some(n)),
        Ok(httparse::Status::Complete(_)) => Err(HandshakeError::TooLarge),
        Ok(httparse::Status::Partial) if buffered > limit => Err(HandshakeError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HandshakeError::TooLarge),
        Err(e) => Err(HandshakeError::Malformed(e.to_string())),
    }
}

/// Parses the request head at the start of `buf`. `Ok(None)`: incomplete, read more.
/// On success also returns the head's length; bytes after it belong to the frame stream.
pub(crate) fn parse_request(
    buf: &[u8],
    config: &Config,
) -> Result<Option<(Parsed, usize)>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(head_len) = head_length(req.parse(buf), buf.len(), config)? else {
        return Ok(None);
    };
    if req.method != Some("GET") {
        return Err(HandshakeError::Method);
    }
    let http_11 = req.version == Some(1);
    let mut request = Request {
        target: req.path.unwrap_or("/").to_string(),
        ..Request::default()
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HandshakeError::Malformed(format!("{} is not utf-8", h.name)))?;
        request
            .headers
            .push((h.name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let all = |name: &str| -> Vec<&str> {
        request
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    };
    request.host = request
        .header("host")
        .ok_or(HandshakeError::Header("host"))?
        .to_string();
    if !all("upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("websocket"))
    {
        if config.plain_http {
            // Not an upgrade: a page or an asset, for the application to answer.
            return Ok(Some((Parsed::Plain(request), head_len)));
        }
        return Err(HandshakeError::Header("upgrade"));
    }
    if !http_11 {
        return Err(HandshakeError::Malformed("websocket needs HTTP/1.1".into()));
    }
    if !all("connection")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("upgrade"))
    {
        return Err(HandshakeError::Header("connection"));
    }
    if request.header("sec-websocket-version") != Some("13") {
        return Err(HandshakeError::Version);
    }
    let key = request
        .header("sec-websocket-key")
        .filter(|k| STANDARD.decode(k).is_ok_and(|raw| raw.len() == 16))
        .ok_or(HandshakeError::Header("sec-websocket-key"))?
        .to_string();
    request.origin = request.header("origin").map(str::to_string);
    request.offered_protocols = all("sec-websocket-protocol")
        .into_iter()
        .map(str::to_string)
        .collect();
    request.protocol = config
        .protocols
        .iter()
        .find(|p| request.offered_protocols.contains(p))
        .cloned();
    let extensions = all("sec-websocket-extensions").join(",");
    let deflate = config
        .deflate
        .as_ref()
        .and_then(|d| deflate::negotiate(&extensions, d));
    Ok(Some((
        Parsed::Upgrade(ServerOffer {
            request,
            key,
            deflate,
        }),
        head_len,
    )))
}

/// The 101 answer.
pub(crate) fn accept_response(offer: &ServerOffer) -> Bytes {
    let mut s = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        accept_key(&offer.key)
    );
    if let Some(p) = &offer.request.protocol {
        s.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if let Some((_, answer)) = &offer.deflate {
        s.push_str(&format!("Sec-WebSocket-Extensions: {answer}\r\n"));
    }
    s.push_str("\r\n");
    Bytes::from(s)
}

/// A plain HTTP answer; the connection closes after it.
pub(crate) fn http_response(status: u16, content_type: &str, body: Bytes) -> Transmit {
    let content_type: String = content_type.chars().filter(|c| !c.is_control()).collect();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    );
    let mut all = Vec::with_capacity(head.len() + body.len());
    all.extend_from_slice(head.as_bytes());
    all.extend_from_slice(&body);
    Transmit::from(all)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// An error answer with a plain-text body saying what was wrong: what a server writes to a
/// connection it refuses before any handshake (503 past its connection limit).
pub fn error_response(status: u16, body: &str) -> Transmit {
    let reason = reason_phrase(status);
    let extra = match status {
        405 => "Allow: GET\r\n",
        426 => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        _ => "",
    };
    // The body is ours or the application's; keep it on one line so it cannot break the head.
    let body: String = body.chars().filter(|c| !c.is_control()).collect();
    Transmit::from(Bytes::from(format!(
        "HTTP/1.1 {status} {reason}\r\n{extra}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        body.len() + 1
    )))
}

/// The client's request. Header names and values the user gave that could break the head are
/// dropped rather than sent.
pub(crate) fn client_request(
    url: &Url,
    key: &str,
    config: &Config,
    extra_headers: &[(String, String)],
) -> Bytes {
    let mut s = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        url.target,
        url.authority()
    );
    if !config.protocols.is_empty() {
        s.push_str(&format!(
            "Sec-WebSocket-Protocol: {}\r\n",
            config.protocols.join(", ")
        ));
    }
    if let Some(d) = &config.deflate {
        s.push_str(&format!(
            "Sec-WebSocket-Extensions: {}\r\n",
            deflate::offer(d)
        ));
    }
    for (name, value) in extra_headers {
        let name_ok = !name.is_empty() && name.bytes().all(is_token_byte);
        let value_ok = !value.bytes().any(|b| b == b'\r' || b == b'\n');
        if name_ok && value_ok {
            s.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    s.push_str("\r\n");
    Bytes::from(s)
}

/// What the client learns from a valid 101 answer.
pub(crate) struct ServerAnswer {
    pub protocol: Option<String>,
    pub deflate: Option<DeflateParams>,
    /// The head's length; bytes after it are frames.
    pub head_len: usize,
}

/// Parses the server's answer at the start of `buf`. `Ok(None)`: incomplete.
pub(crate) fn parse_response(
    buf: &[u8],
    key: &str,
    config: &Config,
) -> Result<Option<ServerAnswer>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let Some(head_len) = head_length(resp.parse(buf), buf.len(), config)? else {
        return Ok(None);
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(HandshakeError::Status(code));
    }
    let header = |name: &str| -> Vec<&str> {
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    };
    if !header("upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("websocket"))
    {
        return Err(HandshakeError::Header("upgrade"));
    }
    if !header("connection")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("upgrade"))
    {
        return Err(HandshakeError::Header("connection"));
    }
    if header("sec-websocket-accept").first().copied() != Some(accept_key(key).as_str()) {
        return Err(HandshakeError::AcceptKey);
    }
    let protocol = match header("sec-websocket-protocol").as_slice() {
        [] => None,
        [p] if config.protocols.iter().any(|o| o == p) => Some(p.to_string()),
        _ => return Err(HandshakeError::Unrequested("subprotocol")),
    };
    let extensions = header("sec-websocket-extensions").join(",");
    let deflate = match (&config.deflate, extensions.is_empty()) {
        (_, true) => None,
        (Some(d), false) => Some(deflate::accept_answer(&extensions, d)?),
        (None, false) => return Err(HandshakeError::Unrequested("extension")),
    };
    Ok(Some(ServerAnswer {
        protocol,
        deflate,
        head_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
